// The CUDA spectral pass behind `tempbalance._core_cuda`, in plain C++ types: device memory and the stream arrive
// as integers (torch's data_ptr() and current_stream().cuda_stream), so the module never links libtorch.
// Everything is enqueued on the caller's stream; nothing synchronises with the host.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../tb_math.h"

namespace tb {
namespace cuda {

enum class Scalar { kF32 = 0, kF64 = 1, kC64 = 2, kC128 = 3 };

struct DeviceMatrix {
  uintptr_t data = 0;  // row-major (slices, rows, cols), contiguous, on the current device
  int64_t slices = 1, rows = 0, cols = 0;
  uintptr_t out = 0;   // slices * min(rows, cols) reals of the input's precision
};

// Pooled Gram eigenvalues of every matrix (all of one scalar type), per slice ascending (slices are not merged:
// the caller sorts a multi-slice result), round-off negatives clamped to 0. Requires load_api() to have succeeded.
void gram_eigvalsh(const std::vector<DeviceMatrix>& mats, Scalar scalar, uintptr_t stream);

// Hill metrics of every spectrum (eigs: float64, ascending, spectrum j at [offsets[j], offsets[j+1])), then the
// mean alpha per unit and the LR factor per unit, in two kernels on `stream` (tb::packed_hill_row and
// tb::packed_unit_lr, which `_core.hill_lr_packed` runs on the CPU). Device pointers: offsets int64[n+1],
// unit_index int64[n], zero_tols / zero_rtols float64[n] or 0 (the value in `hill` for all), metrics
// float64[n, kHillColumns], unit_alpha float64[n_units], factors float64[n_units]. n_units == 0: metrics only.
void hill_lr(uintptr_t eigs, uintptr_t offsets, int64_t n, uintptr_t unit_index, int64_t n_units,
             const HillParams& hill, uintptr_t zero_tols, uintptr_t zero_rtols, const MappingParams& mapping,
             uintptr_t metrics, uintptr_t unit_alpha, uintptr_t factors, uintptr_t stream);

// cudaGetDeviceCount, or a negative number with `why` set (no driver, driver too old, ...).
int device_count(std::string* why);

}  // namespace cuda
}  // namespace tb
