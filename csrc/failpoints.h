// Fault injection for tests. Some failures cannot be provoked from inputs: LAPACK or cuSOLVER not converging
// (info > 0), cuSOLVER failing to allocate its own memory, ?syevr finding fewer eigenvalues than asked, the OS
// refusing a thread, a worker's task throwing. A test arms one named fault (`_core._arm_fault`,
// `_core_cuda._arm_fault`); it fires once, at its `skip`+1-th occurrence, and the real error path runs. Disarmed
// (always, outside tests) a check costs one relaxed atomic load. Each extension module has its
// own copy of the state.
#pragma once

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace tb {
namespace fault {

enum Kind : int {
  kNone = 0,
  kSolverInfo = 1,     // an eigensolver call reports info = 1 (no convergence)
  kEvrShortCount = 2,  // ?syevr reports one eigenvalue fewer than asked
  kThreadStart = 3,    // starting a worker thread fails (std::system_error)
  kSolverAlloc = 4,    // a cuSOLVER call reports CUSOLVER_STATUS_ALLOC_FAILED (the CUDA core only)
  kTaskThrow = 5,      // a task of run_tasks throws (std::runtime_error), on whichever thread took it
};

inline std::atomic<int>& armed() {
  static std::atomic<int> kind{kNone};
  return kind;
}

inline std::atomic<int64_t>& remaining() {
  static std::atomic<int64_t> skip{0};
  return skip;
}

inline Kind parse(const std::string& name) {
  if (name == "none") return kNone;
  if (name == "solver_info") return kSolverInfo;
  if (name == "evr_short_count") return kEvrShortCount;
  if (name == "thread_start") return kThreadStart;
  if (name == "solver_alloc") return kSolverAlloc;
  if (name == "task_throw") return kTaskThrow;
  throw std::invalid_argument("fault must be 'none', 'solver_info', 'evr_short_count', 'thread_start', "
                              "'solver_alloc' or 'task_throw', got '" + name + "'");
}

// Arms `kind` to fire at its (skip + 1)-th occurrence; kNone disarms.
inline void arm(Kind kind, int64_t skip) {
  armed().store(kNone);
  remaining().store(skip);
  armed().store(kind);
}

// arm() by name, as the extension modules expose it (`_arm_fault`); std::invalid_argument for a bad name or skip.
inline void arm_named(const std::string& name, int64_t skip) {
  if (skip < 0) throw std::invalid_argument("skip must be >= 0, got " + std::to_string(skip));
  arm(parse(name), skip);
}

// True exactly once: at the armed occurrence of `kind`.
inline bool hit(Kind kind) {
  if (armed().load(std::memory_order_relaxed) != kind) return false;
  if (remaining().fetch_sub(1) != 0) return false;
  armed().store(kNone);
  return true;
}

}  // namespace fault
}  // namespace tb
