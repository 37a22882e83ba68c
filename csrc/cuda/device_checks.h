// What the CUDA core checks on the device around each cuSOLVER call, written once for the kernels and for the CPU
// module (`_core`), which runs them in tests without a GPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "../tb_math.h"

namespace tb {
namespace cuda_checks {

// Whether a Gram (n x n, column-major, `g` at its first real scalar; complex entries as (re, im) pairs) must not
// reach cuSOLVER: its trace - the squared Frobenius norm of the slice - is NaN, Inf or above `real_max`, the
// largest value of the analysis precision. The diagonal holds the squared row (or column) norms, so every NaN/Inf
// weight shows there, and a trace above real_max means eigenvalues the precision cannot hold (cuSOLVER may return
// garbage or not return at all on such input). O(n) reads: no pass over the whole Gram.
template <class R>
TB_HD bool gram_unusable(const R* g, int64_t n, bool complex, double real_max) {
  const int64_t step = (n + 1) * (complex ? 2 : 1);
  double trace = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const R* d = g + j * step;
    trace += static_cast<double>(d[0]);
    if (complex && !isfinite(static_cast<double>(d[1]))) return true;
  }
  return !(trace <= real_max);
}

// An eigenvalue as the core returns it: NaN when its Gram failed (screened out, or cuSOLVER's info != 0: the
// Hill pass then reports the layer as failed), else clamped at 0 (round-off negatives of a semi-definite Gram).
template <class R>
TB_HD R finished_eigenvalue(R v, bool failed) {
  if (failed) return static_cast<R>(NAN);
  return v < R(0) ? R(0) : v;
}

}  // namespace cuda_checks
}  // namespace tb
