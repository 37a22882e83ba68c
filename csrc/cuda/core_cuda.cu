// The CUDA spectral pass: Grams by cuBLAS (strided-batched GEMM over the slices of each input), a screen of every
// Gram on the device, eigenvalues only by cuSOLVER (cusolverDnXsyevBatched over same-size Grams, per-Gram Xsyevd
// otherwise), the solver's per-Gram info carried into the copy-out, then the Hill metrics, unit means and LR factors
// in small kernels that call the same tb_math.h functions as the CPU core. No host synchronisation in the core.
#include <cuda_runtime.h>

#include <cfloat>
#include <stdexcept>
#include <string>
#include <vector>

#include "../failpoints.h"
#include "../unit_factors.h"
#include "core_cuda.h"
#include "device_checks.h"
#include "handle_cache.h"
#include "libs.h"
#include "plan.h"

namespace tb {
namespace cuda {
namespace {

// The CUDA runtime's, cuBLAS's and cuSOLVER's own "out of memory" statuses, as plan.h names them for the CPU tests.
static_assert(cuda_plan::kRuntimeMemoryAllocation == cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation");
static_assert(cuda_plan::kCublasAllocFailed == CUBLAS_STATUS_ALLOC_FAILED, "CUBLAS_STATUS_ALLOC_FAILED");
static_assert(cuda_plan::kCusolverAllocFailed == CUSOLVER_STATUS_ALLOC_FAILED, "CUSOLVER_STATUS_ALLOC_FAILED");

// Throws DeviceAllocError for an allocation failure (the caller retries with smaller groups), else runtime_error.
[[noreturn]] void fail(cuda_plan::Library lib, int status, const std::string& message) {
  if (cuda_plan::is_alloc_failure(lib, status)) throw DeviceAllocError(message + " (out of device memory)");
  throw std::runtime_error(message);
}
void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // a failed runtime call is also the thread's last error: clear it, or a later launch check
                       // (cudaGetLastError) would report it again
  fail(cuda_plan::Library::kRuntime, e, std::string(what) + ": " + cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail(cuda_plan::Library::kCublas, s, std::string(what) + ": cuBLAS status " + std::to_string(s));
}
void check(cusolverStatus_t s, const char* what) {
  if (s != CUSOLVER_STATUS_SUCCESS)
    fail(cuda_plan::Library::kCusolver, s, std::string(what) + ": cuSOLVER status " + std::to_string(s));
}

// ---- handles: one cuBLAS + one cuSOLVER handle per (host thread, device), handle_cache.h's lifetime rules --------
// Creating them costs far more than a spectral pass of a small model, so they are kept.
struct Handles {
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cusolverDnParams_t params = nullptr;
};

void destroy(const Api& api, Handles* h) {
  if (h->params) api.dn_destroy_params(h->params);
  if (h->solver) api.dn_destroy(h->solver);
  if (h->blas) api.blas_destroy(h->blas);
  *h = Handles{};
}

// All three or none: a failure after the first leaves nothing half-made behind.
Handles create_handles(const Api& api) {
  Handles h;
  try {
    cublasHandle_t blas = nullptr;
    check(api.blas_create(&blas), "cublasCreate");
    h.blas = blas;
    cusolverDnHandle_t solver = nullptr;
    check(api.dn_create(&solver), "cusolverDnCreate");
    h.solver = solver;
    cusolverDnParams_t params = nullptr;
    check(api.dn_create_params(&params), "cusolverDnCreateParams");
    h.params = params;
  } catch (...) {
    destroy(api, &h);
    throw;
  }
  return h;
}

// A thread's handles when it ends: on their own device, the caller's device restored.
struct DestroyOnDevice {
  static void destroy(int device, Handles& h) noexcept {
    const Api* api = loaded_api();
    if (!api) return;
    int current = -1;
    const bool known = cudaGetDevice(&current) == cudaSuccess;
    if (cudaSetDevice(device) == cudaSuccess) cuda::destroy(*api, &h);
    if (known) cudaSetDevice(current);
  }
};
using HandleCache = cuda_handles::PerThread<Handles, DestroyOnDevice>;

const Handles& handles_for(const Api& api, cudaStream_t stream) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const Handles& h = HandleCache::mine().get(device, [&api] { return create_handles(api); });
  check(api.blas_set_stream(h.blas, stream), "cublasSetStream");
  check(api.dn_set_stream(h.solver, stream), "cusolverDnSetStream");
  return h;
}

// ---- types --------------------------------------------------------------------------------------------------
struct Types {
  cudaDataType a, w;
  cublasComputeType_t compute;
  int64_t elem, real;
  bool complex;
  double real_max;  // the largest finite value of the precision
};

Types types_of(Scalar s) {
  switch (s) {
    case Scalar::kF32: return {CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, 4, 4, false, FLT_MAX};
    case Scalar::kF64: return {CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F, 8, 8, false, DBL_MAX};
    case Scalar::kC64: return {CUDA_C_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, 8, 4, true, FLT_MAX};
    case Scalar::kC128: return {CUDA_C_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F, 16, 8, true, DBL_MAX};
  }
  throw std::invalid_argument("unknown scalar type");
}

int blocks_for(int64_t items, int threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((items + threads - 1) / threads, 1024)));
}

// ---- kernels around the solver -------------------------------------------------------------------------------
// unusable[b] = whether Gram b must not reach cuSOLVER (tb::cuda_checks::gram_unusable), one thread per Gram.
template <class R>
__global__ void screen_kernel(const R* grams, int64_t n, int64_t batch, bool complex, double real_max,
                              int* unusable) {
  const int64_t scalars = n * n * (complex ? 2 : 1);
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < batch; b += int64_t(gridDim.x) * blockDim.x)
    unusable[b] = cuda_checks::gram_unusable(grams + b * scalars, n, complex, real_max) ? 1 : 0;
}

// Zeroes the Grams the screen rejected: cuSOLVER gets a harmless matrix; its eigenvalues are replaced by NaN.
template <class R>
__global__ void blank_kernel(R* grams, int64_t scalars_per_gram, int64_t batch, const int* unusable) {
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    if (!unusable[b]) continue;
    R* g = grams + b * scalars_per_gram;
    for (int64_t k = threadIdx.x; k < scalars_per_gram; k += blockDim.x) g[k] = R(0);
  }
}

// Copies one chunk's eigenvalues out: NaN where the Gram failed (screen or info != 0), else clamped at 0.
template <class R>
__global__ void finish_kernel(const R* __restrict__ w, R* __restrict__ out, int64_t count, int64_t n,
                              const int* info, const int* unusable) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t g = i / n;
    out[i] = cuda_checks::finished_eigenvalue(w[i], info[g] != 0 || unusable[g] != 0);
  }
}

template <class R>
void launch_screen(void* grams, int64_t n, int64_t batch, const Types& t, int* unusable, cudaStream_t stream) {
  const int threads = 128;
  screen_kernel<R><<<blocks_for(batch, threads), threads, 0, stream>>>(static_cast<const R*>(grams), n, batch,
                                                                         t.complex, t.real_max, unusable);
  check(cudaGetLastError(), "screen_kernel launch");
  const int64_t scalars = n * n * (t.complex ? 2 : 1);
  blank_kernel<R><<<static_cast<int>(std::min<int64_t>(batch, 1024)), 256, 0, stream>>>(static_cast<R*>(grams),
                                                                                         scalars, batch, unusable);
  check(cudaGetLastError(), "blank_kernel launch");
}

template <class R>
void launch_finish(const void* w, void* out, int64_t count, int64_t n, const int* info, const int* unusable,
                   cudaStream_t stream) {
  const int threads = 256;
  finish_kernel<R><<<blocks_for(count, threads), threads, 0, stream>>>(static_cast<const R*>(w), static_cast<R*>(out),
                                                                       count, n, info, unusable);
  check(cudaGetLastError(), "finish_kernel launch");
}

// C (k x k, column-major) = the Gram of the smaller side of every slice. A row-major (rows, cols) slice is the
// column-major (cols x rows) matrix B = A^T with ld = cols. rows <= cols: A A^H = conj(B^H B); else A^H A =
// conj(B B^H). A conjugated Hermitian matrix has the same eigenvalues, so B^H B / B B^H serve directly.
void gram(const Api& api, const Handles& h, const Types& t, const DeviceMatrix& m, int64_t slice_begin,
          int64_t count, void* c) {
  const int64_t k = std::min(m.rows, m.cols);
  const int64_t inner = std::max(m.rows, m.cols);
  const cublasOperation_t herm = t.complex ? CUBLAS_OP_C : CUBLAS_OP_T;
  const bool wide = m.rows <= m.cols;
  const char* a = reinterpret_cast<const char*>(m.data) + slice_begin * m.rows * m.cols * t.elem;
  static const double one64[2] = {1.0, 0.0}, zero64[2] = {0.0, 0.0};
  static const float one32[2] = {1.0f, 0.0f}, zero32[2] = {0.0f, 0.0f};
  const bool dbl = t.real == 8;
  check(api.gemm_strided_batched(
            h.blas, wide ? herm : CUBLAS_OP_N, wide ? CUBLAS_OP_N : herm, static_cast<int>(k), static_cast<int>(k),
            static_cast<int>(inner), dbl ? static_cast<const void*>(one64) : one32, a, t.a, static_cast<int>(m.cols),
            m.rows * m.cols, a, t.a, static_cast<int>(m.cols), m.rows * m.cols,
            dbl ? static_cast<const void*>(zero64) : zero32, c, t.a, static_cast<int>(k), k * k,
            static_cast<int>(count), t.compute, CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx");
}

// The triangle of each Gram cuSOLVER reads (plan.h: upper; the Grams are stored full).
constexpr cublasFillMode_t solver_fill_mode() {
  return cuda_plan::kSolverTriangle == cuda_plan::Triangle::kUpper ? CUBLAS_FILL_MODE_UPPER : CUBLAS_FILL_MODE_LOWER;
}

// Device and host workspace bytes cuSOLVER needs for group g (the pointers are the real buffers).
void solver_workspace(const Api& api, const Handles& h, const Types& t, const cuda_plan::Group& g, void* grams,
                      void* w, size_t* dev_bytes, size_t* host_bytes) {
  const cusolverEigMode_t jobz = CUSOLVER_EIG_MODE_NOVECTOR;
  const cublasFillMode_t uplo = solver_fill_mode();
  if (g.batched) {
    check(api.syev_batched_buffer_size(h.solver, h.params, jobz, uplo, g.n, t.a, grams, g.n, t.w, w, t.a, dev_bytes,
                                       host_bytes, g.batch),
          "cusolverDnXsyevBatched_bufferSize");
  } else {
    check(api.syevd_buffer_size(h.solver, h.params, jobz, uplo, g.n, t.a, grams, g.n, t.w, w, t.a, dev_bytes,
                                host_bytes),
          "cusolverDnXsyevd_bufferSize");
  }
}

void solve_group(const Api& api, const Handles& h, const Types& t, const cuda_plan::Group& g, void* grams, void* w,
                 int* info, void* work, size_t dev_bytes, void* host, size_t host_bytes, cudaStream_t stream) {
  const cusolverEigMode_t jobz = CUSOLVER_EIG_MODE_NOVECTOR;
  const cublasFillMode_t uplo = solver_fill_mode();
  if (cuda_plan::kZeroSolverWorkspace && dev_bytes)  // plan.h: cuSOLVER 11.7.1.2 reads it before writing it
    check(cudaMemsetAsync(work, 0, dev_bytes, stream), "cudaMemsetAsync");
  if (fault::hit(fault::kSolverAlloc))  // tests: cuSOLVER cannot allocate its own memory
    check(CUSOLVER_STATUS_ALLOC_FAILED, g.batched ? "cusolverDnXsyevBatched" : "cusolverDnXsyevd");
  if (g.batched) {
    check(api.syev_batched(h.solver, h.params, jobz, uplo, g.n, t.a, grams, g.n, t.w, w, t.a, work, dev_bytes, host,
                           host_bytes, info, g.batch),
          "cusolverDnXsyevBatched");
  } else {
    for (int64_t b = 0; b < g.batch; ++b) {
      check(api.syevd(h.solver, h.params, jobz, uplo, g.n, t.a, static_cast<char*>(grams) + b * g.n * g.n * t.elem,
                      g.n, t.w, static_cast<char*>(w) + b * g.n * t.real, t.a, work, dev_bytes, host, host_bytes,
                      info + b),
            "cusolverDnXsyevd");
    }
  }
  for (int64_t b = 0; b < g.batch; ++b)  // tests: a solve that "did not converge"
    if (fault::hit(fault::kSolverInfo)) check(cudaMemsetAsync(info + b, 1, sizeof(int), stream), "cudaMemsetAsync");
}

__global__ void hill_kernel(const double* eigs, const int64_t* offsets, int64_t n, HillParams p, HillPerSpectrum per,
                            double* metrics) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j < n) packed_hill_row(eigs, offsets, j, p, per, metrics);
}

// One thread: the per-unit reductions are O(number of layers), far below a launch's cost to parallelise.
__global__ void unit_lr_kernel(const double* metrics, const int64_t* unit_index, int64_t n, int64_t n_units,
                               MappingParams p, double* alpha, double* sums, int64_t* counts, double* unit_alpha,
                               double* factors) {
  if (blockIdx.x == 0 && threadIdx.x == 0)
    packed_unit_lr(metrics, unit_index, n, n_units, p, alpha, sums, counts, unit_alpha, factors);
}

__global__ void unit_factors_kernel(const double* metrics, const int64_t* unit_index, int64_t n, int64_t n_units,
                                    int metric_column, const double* previous, MappingParams p, double* values,
                                    double* sums, int64_t* counts, double* unit_values, double* factors) {
  if (blockIdx.x == 0 && threadIdx.x == 0)
    packed_unit_factors(metrics, unit_index, n, n_units, metric_column, previous, p, values, sums, counts,
                        unit_values, factors);
}

}  // namespace

PassInfo gram_eigvalsh(const std::vector<DeviceMatrix>& mats, Scalar scalar, uintptr_t stream_handle,
                       const Allocator& alloc, int64_t max_bytes) {
  const Api* api = loaded_api();
  if (!api) throw std::runtime_error("cuSOLVER/cuBLAS are not loaded (call load first)");
  const Types t = types_of(scalar);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  std::vector<int64_t> slices, sizes;
  for (std::size_t j = 0; j < mats.size(); ++j) {
    const int64_t n = std::min(mats[j].rows, mats[j].cols);
    if (api->max_n > 0 && n > api->max_n)
      throw std::invalid_argument("matrix " + std::to_string(j) + ": a " + std::to_string(n) + " x " +
                                  std::to_string(n) + " Gram is above this cuSOLVER's limit of " +
                                  std::to_string(api->max_n));
    slices.push_back(mats[j].slices);
    sizes.push_back(n);
  }
  const auto groups = cuda_plan::plan_groups(slices, sizes, t.elem, api->syev_batched != nullptr,
                                             cuda_plan::kBatchedElementLimit, max_bytes);
  PassInfo info;
  if (groups.empty()) return info;
  // Everything is allocated before anything is enqueued: an out-of-memory leaves no work behind.
  const cuda_plan::ScratchLayout layout = cuda_plan::scratch_layout(groups, t.elem, t.real);
  char* scratch = reinterpret_cast<char*>(alloc(layout.bytes));
  char* grams = scratch + layout.grams;
  char* w = scratch + layout.eigs;
  int* solver_info = reinterpret_cast<int*>(scratch + layout.info);
  int* unusable = reinterpret_cast<int*>(scratch + layout.unusable);
  const Handles& h = handles_for(*api, stream);
  size_t dev_bytes = 0, host_bytes = 0;
  for (const auto& g : groups) {
    size_t d = 0, hb = 0;
    solver_workspace(*api, h, t, g, grams, w, &d, &hb);
    dev_bytes = std::max(dev_bytes, d);
    host_bytes = std::max(host_bytes, hb);
  }
  void* work = dev_bytes ? reinterpret_cast<void*>(alloc(static_cast<int64_t>(dev_bytes))) : nullptr;
  std::vector<char> host(host_bytes);  // cuSOLVER's host workspace, alive until every call returned

  const bool dbl = t.real == 8;
  for (const auto& g : groups) {
    for (const auto& c : g.chunks)
      gram(*api, h, t, mats[c.matrix], c.slice_begin, c.slices, grams + c.position * g.n * g.n * t.elem);
    if (dbl)
      launch_screen<double>(grams, g.n, g.batch, t, unusable, stream);
    else
      launch_screen<float>(grams, g.n, g.batch, t, unusable, stream);
    solve_group(*api, h, t, g, grams, w, solver_info, work, dev_bytes, host_bytes ? host.data() : nullptr, host_bytes,
                stream);
    for (const auto& c : g.chunks) {
      const char* src = w + c.position * g.n * t.real;
      char* dst = reinterpret_cast<char*>(mats[c.matrix].out) + c.slice_begin * g.n * t.real;
      const int* chunk_info = solver_info + c.position;
      const int* chunk_unusable = unusable + c.position;
      if (dbl)
        launch_finish<double>(src, dst, c.slices * g.n, g.n, chunk_info, chunk_unusable, stream);
      else
        launch_finish<float>(src, dst, c.slices * g.n, g.n, chunk_info, chunk_unusable, stream);
    }
    ++info.groups;
    info.batched_groups += g.batched ? 1 : 0;
  }
  info.scratch_bytes = layout.bytes;
  info.solver_bytes = static_cast<int64_t>(dev_bytes);
  info.solver_host_bytes = static_cast<int64_t>(host_bytes);
  return info;
}

void hill_lr(uintptr_t eigs, uintptr_t offsets, int64_t n, uintptr_t unit_index, int64_t n_units,
             const HillParams& hill, uintptr_t zero_tols, uintptr_t zero_rtols, const MappingParams& mapping,
             uintptr_t metrics, uintptr_t unit_alpha, uintptr_t factors, uintptr_t scratch,
             uintptr_t stream_handle) {
  if (n <= 0) return;
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  HillPerSpectrum per;  // device arrays; 0 = the scalar in `hill` for every spectrum
  per.zero_tol = reinterpret_cast<const double*>(zero_tols);
  per.zero_rtol = reinterpret_cast<const double*>(zero_rtols);
  const int threads = 128;
  hill_kernel<<<static_cast<int>((n + threads - 1) / threads), threads, 0, stream>>>(
      reinterpret_cast<const double*>(eigs), reinterpret_cast<const int64_t*>(offsets), n, hill, per,
      reinterpret_cast<double*>(metrics));
  check(cudaGetLastError(), "hill_kernel launch");
  if (n_units <= 0) return;
  double* alpha = reinterpret_cast<double*>(scratch);
  double* sums = alpha + n;
  auto* counts = reinterpret_cast<int64_t*>(sums + n_units);
  unit_lr_kernel<<<1, 1, 0, stream>>>(reinterpret_cast<const double*>(metrics),
                                      reinterpret_cast<const int64_t*>(unit_index), n, n_units, mapping, alpha, sums,
                                      counts, reinterpret_cast<double*>(unit_alpha),
                                      reinterpret_cast<double*>(factors));
  check(cudaGetLastError(), "unit_lr_kernel launch");
}

void unit_factors(uintptr_t metrics, uintptr_t unit_index, int64_t n, int64_t n_units, int metric_column,
                  uintptr_t previous, const MappingParams& mapping, uintptr_t unit_values, uintptr_t factors,
                  uintptr_t scratch, uintptr_t stream_handle) {
  if (n_units <= 0) return;
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  double* values = reinterpret_cast<double*>(scratch);
  double* sums = values + n;
  auto* counts = reinterpret_cast<int64_t*>(sums + n_units);
  unit_factors_kernel<<<1, 1, 0, stream>>>(
      reinterpret_cast<const double*>(metrics), reinterpret_cast<const int64_t*>(unit_index), n, n_units,
      metric_column, reinterpret_cast<const double*>(previous), mapping, values, sums, counts,
      reinterpret_cast<double*>(unit_values), reinterpret_cast<double*>(factors));
  check(cudaGetLastError(), "unit_factors_kernel launch");
}

int device_count(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    return -1;
  }
  return count;
}

}  // namespace cuda
}  // namespace tb
