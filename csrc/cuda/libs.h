// cuSOLVER and cuBLAS, loaded at run time with dlopen. Why not link them: the user's torch already carries one
// (CUDA 12 or 13 wheels, different sonames), and one copy per process is what works; a link-time dependency would
// tie the wheel to one CUDA release and could load a second copy. The function pointers are typed with decltype of
// the real prototypes from the headers, so a prototype change is a compile error, not a crash.
#pragma once

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tb {
namespace cuda {

// cublas_api.h overloads cublasGemmStridedBatchedEx in C++ (a legacy cudaDataType computeType wrapper), so name
// the exported one's type; the static_cast below fails to compile if the header's prototype differs.
using GemmStridedBatchedEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                                const void*, const void*, cudaDataType, int, long long int,
                                                const void*, cudaDataType, int, long long int, const void*, void*,
                                                cudaDataType, int, long long int, int, cublasComputeType_t,
                                                cublasGemmAlgo_t);
static_assert(sizeof(static_cast<GemmStridedBatchedEx>(&::cublasGemmStridedBatchedEx)) > 0,
              "cublasGemmStridedBatchedEx prototype changed");

struct Api {
  decltype(&cublasCreate_v2) blas_create = nullptr;
  decltype(&cublasDestroy_v2) blas_destroy = nullptr;
  decltype(&cublasSetStream_v2) blas_set_stream = nullptr;
  GemmStridedBatchedEx gemm_strided_batched = nullptr;
  decltype(&cusolverDnCreate) dn_create = nullptr;
  decltype(&cusolverDnDestroy) dn_destroy = nullptr;
  decltype(&cusolverDnSetStream) dn_set_stream = nullptr;
  decltype(&cusolverDnCreateParams) dn_create_params = nullptr;
  decltype(&cusolverDnDestroyParams) dn_destroy_params = nullptr;
  decltype(&cusolverDnXsyevd_bufferSize) syevd_buffer_size = nullptr;
  decltype(&cusolverDnXsyevd) syevd = nullptr;
  // Optional: cuSOLVER >= 11.7.1 (CUDA 12.6.2). Missing -> per-Gram Xsyevd.
  decltype(&cusolverDnXsyevBatched_bufferSize) syev_batched_buffer_size = nullptr;
  decltype(&cusolverDnXsyevBatched) syev_batched = nullptr;
  decltype(&cusolverGetVersion) get_version = nullptr;  // optional: without it the version counts as unknown (0)
  std::string cusolver_path, cublas_path;
  int version = 0;     // cusolverGetVersion, e.g. 11701 for 11.7.1
  int64_t max_n = 0;   // the largest Gram its Xsyevd / XsyevBatched take (0: no limit), tb::cuda_plan::solver_max_n
};

// The symbol names the module resolves (also checked by .ci/check_cuda.sh in the built binary).
const std::vector<std::string>& required_symbols();

// Loads both libraries once (thread-safe) following tb::cuda_plan::library_candidates(cuda_major, dirs).
// Throws std::runtime_error listing every path tried and the missing symbol when that fails; later calls with
// other arguments return the first result (or rethrow the first failure).
const Api& load_api(int cuda_major, const std::vector<std::string>& dirs);

// The loaded API, or nullptr before a successful load_api.
const Api* loaded_api();

}  // namespace cuda
}  // namespace tb
