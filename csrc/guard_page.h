// Testing only: a buffer whose last byte is followed by an inaccessible page, so that a write past its end faults
// at once (SIGSEGV) instead of silently corrupting the heap. `_core._gram_eigvalsh_guarded` writes every output
// of gram_eigvalsh into one, which makes an overflow of an output (a LAPACK routine writing more than it holds)
// a crash a test sees.
#pragma once

#if defined(__unix__) || defined(__APPLE__)
#define TB_HAVE_GUARD_PAGE 1

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <stdexcept>
#include <string>

namespace tb {

class GuardedBuffer {
 public:
  explicit GuardedBuffer(std::size_t bytes) {
    const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t usable = (bytes + page - 1) / page * page;
    mapped_bytes_ = usable + page;
    void* base = mmap(nullptr, mapped_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw std::runtime_error("mmap of " + std::to_string(mapped_bytes_) + " bytes failed");
    base_ = static_cast<char*>(base);
    if (mprotect(base_ + usable, page, PROT_NONE) != 0) {
      munmap(base_, mapped_bytes_);
      throw std::runtime_error("mprotect of the guard page failed");
    }
    data_ = base_ + usable - bytes;  // `bytes` is a whole number of elements: the end stays aligned to them
  }
  ~GuardedBuffer() { munmap(base_, mapped_bytes_); }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  void* data() const { return data_; }

 private:
  char* base_ = nullptr;
  char* data_ = nullptr;
  std::size_t mapped_bytes_ = 0;
};

}  // namespace tb

#endif
