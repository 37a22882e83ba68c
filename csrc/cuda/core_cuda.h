// The CUDA spectral pass behind `tempbalance._core_cuda`, in plain C++ types: device memory and the stream arrive
// as integers (torch's data_ptr() and current_stream().cuda_stream), so the module never links libtorch. Device
// scratch comes from the caller (`alloc`: Python answers with torch.empty on the device, so torch's caching
// allocator serves and counts it). Everything is enqueued on the caller's stream; the core itself never waits for
// the GPU (cuSOLVER's host-side calls are another matter: docs/CUDA.md).
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../tb_math.h"

namespace tb {
namespace cuda {

// cuBLAS, cuSOLVER or the CUDA runtime could not allocate device memory (their own allocations, not the caller's
// scratch): an out-of-memory, which smaller solve groups may avoid. Python: `_core_cuda.DeviceAllocError`, a
// MemoryError.
struct DeviceAllocError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Scalar { kF32 = 0, kF64 = 1, kC64 = 2, kC128 = 3 };

struct DeviceMatrix {
  uintptr_t data = 0;  // row-major (slices, rows, cols), contiguous, on the current device
  int64_t slices = 1, rows = 0, cols = 0;
  uintptr_t out = 0;   // slices * min(rows, cols) reals of the input's precision
};

// Device memory of at least `bytes` bytes, valid (stream-ordered) until gram_eigvalsh returns; may throw (an
// out-of-memory then reaches the caller before any work was enqueued).
using Allocator = std::function<uintptr_t(int64_t bytes)>;

// What one gram_eigvalsh call did, for diagnostics.
struct PassInfo {
  int64_t groups = 0, batched_groups = 0, scratch_bytes = 0, solver_bytes = 0, solver_host_bytes = 0;
};

// Pooled Gram eigenvalues of every matrix (all of one scalar type), per slice ascending (slices are not merged:
// the caller sorts a multi-slice result), round-off negatives clamped to 0. A slice whose Gram is unusable (NaN /
// Inf weights, a trace that overflows the precision) never reaches cuSOLVER, and a slice whose solve reports
// info != 0 is not trusted: both come back as NaN, decided on the device. Grams are batched in groups of at most
// `max_bytes` bytes; every Gram must be within the loaded cuSOLVER's size limit (Api::max_n; std::invalid_argument
// otherwise: the caller routes those to the CPU). Requires load_api() to have succeeded.
PassInfo gram_eigvalsh(const std::vector<DeviceMatrix>& mats, Scalar scalar, uintptr_t stream, const Allocator& alloc,
                       int64_t max_bytes);

// Hill metrics of every spectrum (eigs: float64, ascending, spectrum j at [offsets[j], offsets[j+1])), then the
// mean alpha per unit and the LR factor per unit, in two kernels on `stream` (tb::packed_hill_row and
// tb::packed_unit_lr, which `_core.hill_lr_packed` runs on the CPU). Device pointers: offsets int64[n+1],
// unit_index int64[n], zero_tols / zero_rtols float64[n] or 0 (the value in `hill` for all), metrics
// float64[n, kHillColumns], unit_alpha float64[n_units], factors float64[n_units], scratch 8-byte words[n +
// 2 n_units]. n_units == 0: metrics only.
void hill_lr(uintptr_t eigs, uintptr_t offsets, int64_t n, uintptr_t unit_index, int64_t n_units,
             const HillParams& hill, uintptr_t zero_tols, uintptr_t zero_rtols, const MappingParams& mapping,
             uintptr_t metrics, uintptr_t unit_alpha, uintptr_t factors, uintptr_t scratch, uintptr_t stream);

// TempBalance's factors of a pass, on the device (tb::packed_unit_factors): metrics float64[n, kHillColumns],
// unit_index int64[n], previous / unit_values / factors float64[n_units], scratch 8-byte words[n + 2 n_units].
void unit_factors(uintptr_t metrics, uintptr_t unit_index, int64_t n, int64_t n_units, int metric_column,
                  uintptr_t previous, const MappingParams& mapping, uintptr_t unit_values, uintptr_t factors,
                  uintptr_t scratch, uintptr_t stream);

// cudaGetDeviceCount, or a negative number with `why` set (no driver, driver too old, ...).
int device_count(std::string* why);

}  // namespace cuda
}  // namespace tb
