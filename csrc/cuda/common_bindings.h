// What `tempbalance._core` and `tempbalance._core_cuda` bind alike: the atexit hook of the handle lifetime rules
// (handle_cache.h) and how the CUDA core calls cuSOLVER (plan.h), so a test compares the two modules.
#pragma once

#include <pybind11/pybind11.h>

#include "handle_cache.h"
#include "plan.h"

namespace tb {

// From interpreter finalisation on, no handle of this module is destroyed (handle_cache.h). Python runs atexit
// callbacks after joining the non-daemon threads and before the exiting thread's thread_local destructors.
inline void register_handle_exit_hook() {
  pybind11::module_::import("atexit").attr("register")(
      pybind11::cpp_function([] { cuda_handles::mark_process_exiting(); }));
}

// {"triangle": the Gram triangle cuSOLVER reads, "zero_workspace": whether its workspace is zeroed first}.
inline pybind11::dict solver_settings() {
  pybind11::dict out;
  out["triangle"] = cuda_plan::triangle_name(cuda_plan::kSolverTriangle);
  out["zero_workspace"] = cuda_plan::kZeroSolverWorkspace;
  return out;
}

}  // namespace tb
