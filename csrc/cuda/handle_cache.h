// The lifetime of the CUDA core's cuBLAS/cuSOLVER handles, in plain C++ (no CUDA headers) so the CPU module runs
// the same code with stand-in handles in tests (`_core._cuda_handle_twin_*`, tests/test_cuda_build.py).
//
// One set per (host thread, device): a handle must not be shared by threads that set different streams on it.
// - Created on first use, by whichever thread asks. Nothing depends on which thread imported the module (under
//   `lag >= 1` the first import may happen on the background worker).
// - Destroyed by the thread that owns them when it ends (a `lag >= 1` worker at close()): no leak, however many
//   workers come and go.
// - Never destroyed once the interpreter is finalising (`process_exiting`, set by the atexit hook every module
//   registers at import, which runs before the exiting thread's thread_local destructors): the CUDA runtime and the
//   libraries may already be going away then; the process exit reclaims the handles.
#pragma once

#include <atomic>
#include <map>
#include <utility>

namespace tb {
namespace cuda_handles {

inline std::atomic<bool>& exiting_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}
inline void mark_process_exiting() { exiting_flag().store(true); }
inline bool process_exiting() { return exiting_flag().load(); }

// The calling thread's handles, by device. Destroy: `static void destroy(int device, H& handles) noexcept`.
template <class H, class Destroy>
class PerThread {
 public:
  PerThread(const PerThread&) = delete;
  PerThread& operator=(const PerThread&) = delete;

  // The calling thread's cache (constructed on its first call in that thread).
  static PerThread& mine() {
    thread_local PerThread cache;
    return cache;
  }

  // The handles for `device`, made by `create()` on first use (nothing is kept when it throws).
  template <class Create>
  H& get(int device, Create&& create) {
    auto it = handles_.find(device);
    if (it == handles_.end()) it = handles_.emplace(device, std::forward<Create>(create)()).first;
    return it->second;
  }

 private:
  PerThread() = default;
  ~PerThread() {
    if (process_exiting()) return;
    for (auto& entry : handles_) Destroy::destroy(entry.first, entry.second);
  }

  std::map<int, H> handles_;
};

}  // namespace cuda_handles
}  // namespace tb
