// Eigenvalues of the Gram matrices of many weight matrices in one call (CPU).
// For every matrix (or stack of slices) the Gram of its smaller side is formed with SYRK/HERK and its eigenvalues
// (only) are computed by LAPACK; workers take matrices largest first, each with single-threaded BLAS, because on a
// few cores several matrices at once beat one matrix with threaded BLAS and do not collapse when a core is busy.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tb {

enum class Scalar { kF32, kF64, kC64, kC128 };

enum class Solver {
  kDivideConquer,  // ?syevd / ?heevd, all eigenvalues
  kTwoStage,       // ?syevd_2stage: dense -> band (BLAS-3) -> tridiagonal, all eigenvalues
};

struct MatrixInput {
  const void* data = nullptr;  // row-major (slices, rows, cols), contiguous
  Scalar scalar = Scalar::kF32;
  int64_t slices = 1, rows = 0, cols = 0;
  int64_t top = 0;  // > 0: only the largest `top` eigenvalues (MRRR index range); requires slices == 1
};

// Number of eigenvalues written for `in`: slices * min(rows, cols), or `top`.
int64_t eig_count(const MatrixInput& in);

// True when the output of `in` is float32 (float32 and complex64 inputs), else float64.
bool single_precision(const MatrixInput& in);

// Throws std::invalid_argument naming the input index when a shape, scalar type or `top` is unusable.
void validate(const MatrixInput& in, std::size_t index);

// outputs[k] points to eig_count(inputs[k]) floats or doubles (see single_precision). Each is written ascending,
// pooled over slices; round-off negatives are clamped to 0; a non-finite Gram gives all-NaN eigenvalues (the
// caller reports the layer) instead of a LAPACK call on garbage. Thread-safe; holds no state between calls.
void gram_eigvalsh(const std::vector<MatrixInput>& inputs, const std::vector<void*>& outputs, int num_threads,
                   Solver solver);

}  // namespace tb
