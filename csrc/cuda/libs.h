// cuSOLVER and cuBLAS, loaded at run time with dlopen. Why not link them: the user's torch already carries one
// (CUDA 12 or 13 wheels, different sonames), and one copy per process is what works; a link-time dependency would
// tie the wheel to one CUDA release and could load a second copy. The function pointers are typed with decltype of
// the real prototypes from the headers, so a prototype change is a compile error, not a crash.
#pragma once

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <string>
#include <vector>

namespace tb {
namespace cuda {

struct Api {
  decltype(&cublasCreate_v2) cublasCreate = nullptr;
  decltype(&cublasDestroy_v2) cublasDestroy = nullptr;
  decltype(&cublasSetStream_v2) cublasSetStream = nullptr;
  decltype(&cublasGemmStridedBatchedEx) cublasGemmStridedBatchedEx = nullptr;
  decltype(&cusolverDnCreate) cusolverDnCreate = nullptr;
  decltype(&cusolverDnDestroy) cusolverDnDestroy = nullptr;
  decltype(&cusolverDnSetStream) cusolverDnSetStream = nullptr;
  decltype(&cusolverDnCreateParams) cusolverDnCreateParams = nullptr;
  decltype(&cusolverDnDestroyParams) cusolverDnDestroyParams = nullptr;
  decltype(&cusolverDnXsyevd_bufferSize) cusolverDnXsyevd_bufferSize = nullptr;
  decltype(&cusolverDnXsyevd) cusolverDnXsyevd = nullptr;
  // Optional: cuSOLVER >= 11.7.1 (CUDA 12.6.2). Missing -> per-Gram Xsyevd.
  decltype(&cusolverDnXsyevBatched_bufferSize) cusolverDnXsyevBatched_bufferSize = nullptr;
  decltype(&cusolverDnXsyevBatched) cusolverDnXsyevBatched = nullptr;
  std::string cusolver_path, cublas_path;
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
