// Compiled only into release wheels (cmake/manylinux.cmake): they link GCC 12's libstdc++ statically against glibc
// 2.28 link stubs, and that libstdc++.a refers to two symbols glibc 2.28 lacks. Hidden definitions here satisfy those
// references inside the module, so the wheel asks nothing of glibc newer than 2.28.
#include <unistd.h>  // getentropy (glibc 2.25)

extern "C" {

// glibc >= 2.32 keeps this at 1 while the process has one thread, and libstdc++ then skips atomic reference counts.
// 0 means "may be multi-threaded": always atomic, which is correct in every process (and what older glibc implies).
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;

// glibc >= 2.36; std::random_device's default source. Nothing in tempbalance uses random_device, but libstdc++.a's
// random.o is linked in through its string instantiations. Same contract: 32 random bits from the kernel.
__attribute__((visibility("hidden"))) unsigned int arc4random(void) {
  unsigned int value = 0;
  while (getentropy(&value, sizeof value) != 0) {
  }
  return value;
}

}  // extern "C"
