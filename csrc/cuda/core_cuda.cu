// The CUDA spectral pass: Grams by cuBLAS (strided-batched GEMM over the slices of each input), eigenvalues only by
// cuSOLVER (cusolverDnXsyevBatched over same-size Grams, per-Gram Xsyevd otherwise), then the Hill metrics, unit
// means and LR factors in small kernels that call the same tb_math.h functions as the CPU core.
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core_cuda.h"
#include "libs.h"
#include "plan.h"

namespace tb {
namespace cuda {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(std::string(what) + ": cuBLAS status " + std::to_string(s));
}
void check(cusolverStatus_t s, const char* what) {
  if (s != CUSOLVER_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + ": cuSOLVER status " + std::to_string(s));
}

// Stream-ordered device scratch: freed on the stream when it goes out of scope, so no host synchronisation.
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes) check(cudaMallocAsync(&ptr_, bytes, stream), "cudaMallocAsync");
  }
  ~Scratch() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T = char>
  T* get() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

// One cuBLAS and one cuSOLVER handle per (host thread, device), created on first use: creating them costs far
// more than a spectral pass of a small model. They live until the process exits.
struct Handles {
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cusolverDnParams_t params = nullptr;
};

Handles& handles_for(const Api& api, cudaStream_t stream) {
  thread_local std::map<int, Handles> cache;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  Handles& h = cache[device];
  if (!h.blas) {
    check(api.blas_create(&h.blas), "cublasCreate");
    check(api.dn_create(&h.solver), "cusolverDnCreate");
    check(api.dn_create_params(&h.params), "cusolverDnCreateParams");
  }
  check(api.blas_set_stream(h.blas, stream), "cublasSetStream");
  check(api.dn_set_stream(h.solver, stream), "cusolverDnSetStream");
  return h;
}

struct Types {
  cudaDataType a, w;
  cublasComputeType_t compute;
  int64_t elem, real;
  bool complex;
};

Types types_of(Scalar s) {
  switch (s) {
    case Scalar::kF32: return {CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, 4, 4, false};
    case Scalar::kF64: return {CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F, 8, 8, false};
    case Scalar::kC64: return {CUDA_C_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, 8, 4, true};
    case Scalar::kC128: return {CUDA_C_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F, 16, 8, true};
  }
  throw std::invalid_argument("unknown scalar type");
}

template <class T>
__global__ void clamp_copy(const T* __restrict__ src, T* __restrict__ dst, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const T v = src[i];
    dst[i] = v < T(0) ? T(0) : v;  // NaN passes through: the Hill pass reports it as non-finite
  }
}

void launch_clamp_copy(const void* src, void* dst, int64_t count, int64_t real_bytes, cudaStream_t stream) {
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((count + threads - 1) / threads, 1024));
  if (real_bytes == 4)
    clamp_copy<float><<<blocks, threads, 0, stream>>>(static_cast<const float*>(src), static_cast<float*>(dst), count);
  else
    clamp_copy<double><<<blocks, threads, 0, stream>>>(static_cast<const double*>(src), static_cast<double*>(dst),
                                                       count);
  check(cudaGetLastError(), "clamp_copy launch");
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

void solve_group(const Api& api, const Handles& h, const Types& t, const cuda_plan::Group& g, void* grams, void* w,
                 cudaStream_t stream, std::vector<std::unique_ptr<char[]>>* host_keep) {
  size_t dev_bytes = 0, host_bytes = 0;
  const cusolverEigMode_t jobz = CUSOLVER_EIG_MODE_NOVECTOR;
  const cublasFillMode_t uplo = CUBLAS_FILL_MODE_LOWER;
  if (g.batched) {
    check(api.syev_batched_buffer_size(h.solver, h.params, jobz, uplo, g.n, t.a, grams, g.n, t.w, w, t.a,
                                                 &dev_bytes, &host_bytes, g.batch),
          "cusolverDnXsyevBatched_bufferSize");
  } else {
    check(api.syevd_buffer_size(h.solver, h.params, jobz, uplo, g.n, t.a, grams, g.n, t.w, w, t.a,
                                          &dev_bytes, &host_bytes),
          "cusolverDnXsyevd_bufferSize");
  }
  Scratch work(dev_bytes, stream);
  Scratch info(sizeof(int) * g.batch, stream);
  // cuSOLVER 11.7.1.2's batched solver reads its workspace before writing it (fixed in 11.7.3): start from zeros.
  if (dev_bytes) check(cudaMemsetAsync(work.get(), 0, dev_bytes, stream), "cudaMemsetAsync");
  host_keep->emplace_back(host_bytes ? new char[host_bytes] : nullptr);
  void* host = host_keep->back().get();
  if (g.batched) {
    check(api.syev_batched(h.solver, h.params, jobz, uplo, g.n, t.a, grams, g.n, t.w, w, t.a, work.get(),
                                     dev_bytes, host, host_bytes, info.get<int>(), g.batch),
          "cusolverDnXsyevBatched");
  } else {
    for (int64_t b = 0; b < g.batch; ++b) {
      check(api.syevd(h.solver, h.params, jobz, uplo, g.n, t.a,
                                 static_cast<char*>(grams) + b * g.n * g.n * t.elem, g.n, t.w,
                                 static_cast<char*>(w) + b * g.n * t.real, t.a, work.get(), dev_bytes, host,
                                 host_bytes, info.get<int>() + b),
            "cusolverDnXsyevd");
    }
  }
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

}  // namespace

void gram_eigvalsh(const std::vector<DeviceMatrix>& mats, Scalar scalar, uintptr_t stream_handle) {
  const Api* api = loaded_api();
  if (!api) throw std::runtime_error("cuSOLVER/cuBLAS are not loaded (call load first)");
  const Types t = types_of(scalar);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  std::vector<int64_t> slices, sizes;
  for (const auto& m : mats) {
    slices.push_back(m.slices);
    sizes.push_back(std::min(m.rows, m.cols));
  }
  const auto groups = cuda_plan::plan_groups(slices, sizes, t.elem, api->syev_batched != nullptr);
  if (groups.empty()) return;
  const Handles& h = handles_for(*api, stream);
  Scratch grams(cuda_plan::gram_buffer_bytes(groups, t.elem), stream);
  Scratch w(cuda_plan::eig_buffer_bytes(groups, t.real), stream);
  std::vector<std::unique_ptr<char[]>> host_keep;
  for (const auto& g : groups) {
    for (const auto& c : g.chunks)
      gram(*api, h, t, mats[c.matrix], c.slice_begin, c.slices, grams.get() + c.position * g.n * g.n * t.elem);
    solve_group(*api, h, t, g, grams.get(), w.get(), stream, &host_keep);
    for (const auto& c : g.chunks)
      launch_clamp_copy(w.get() + c.position * g.n * t.real,
                        reinterpret_cast<char*>(mats[c.matrix].out) + c.slice_begin * g.n * t.real, c.slices * g.n,
                        t.real, stream);
  }
}

void hill_lr(uintptr_t eigs, uintptr_t offsets, int64_t n, uintptr_t unit_index, int64_t n_units,
             const HillParams& hill, uintptr_t zero_tols, uintptr_t zero_rtols, const MappingParams& mapping,
             uintptr_t metrics, uintptr_t unit_alpha, uintptr_t factors, uintptr_t stream_handle) {
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
  Scratch scratch(sizeof(double) * (n + n_units) + sizeof(int64_t) * n_units, stream);
  double* alpha = scratch.get<double>();
  double* sums = alpha + n;
  auto* counts = reinterpret_cast<int64_t*>(sums + n_units);
  unit_lr_kernel<<<1, 1, 0, stream>>>(reinterpret_cast<const double*>(metrics),
                                      reinterpret_cast<const int64_t*>(unit_index), n, n_units, mapping, alpha, sums,
                                      counts, reinterpret_cast<double*>(unit_alpha),
                                      reinterpret_cast<double*>(factors));
  check(cudaGetLastError(), "unit_lr_kernel launch");
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
