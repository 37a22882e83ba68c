#include "libs.h"

#include <dlfcn.h>

#include <mutex>
#include <stdexcept>

#include "plan.h"

namespace tb {
namespace cuda {
namespace {

std::once_flag g_once;
Api g_api;
bool g_ok = false;
std::string g_error;

void* open_first(const std::string& lib, int cuda_major, const std::vector<std::string>& dirs, std::string* path,
                 std::string* tried) {
  for (const std::string& cand : cuda_plan::library_candidates(lib, cuda_major, dirs)) {
    const bool noload = cand.rfind("noload:", 0) == 0;
    const std::string name = noload ? cand.substr(7) : cand;
    void* h = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL | (noload ? RTLD_NOLOAD : 0));
    if (h) {
      *path = (noload ? "already loaded " : "") + name;
      return h;
    }
    if (!noload) {
      const char* err = dlerror();
      *tried += "\n  " + name + (err ? std::string(": ") + err : "");
    }
  }
  return nullptr;
}

// Loads what `lib` depends on from the same places (best effort: when one is missing, opening `lib` itself fails
// with the loader's message naming it).
void open_dependencies(const std::string& lib, int cuda_major, const std::vector<std::string>& dirs) {
  for (const std::string& dep : cuda_plan::library_dependencies(lib)) {
    std::string path, tried;
    open_first(dep, cuda_major, dirs, &path, &tried);  // the handle stays open for the process's lifetime
  }
}

template <class F>
void resolve(void* h, const char* name, F* slot, bool required) {
  *slot = reinterpret_cast<F>(dlsym(h, name));
  if (!*slot && required) throw std::runtime_error(std::string("symbol ") + name + " not found");
}

void load_once(int cuda_major, const std::vector<std::string>& dirs) {
  try {
    std::string tried;
    open_dependencies("cublas", cuda_major, dirs);
    void* blas = open_first("cublas", cuda_major, dirs, &g_api.cublas_path, &tried);
    if (!blas) throw std::runtime_error("libcublas not found; tried:" + tried);
    tried.clear();
    open_dependencies("cusolver", cuda_major, dirs);
    void* solver = open_first("cusolver", cuda_major, dirs, &g_api.cusolver_path, &tried);
    if (!solver) throw std::runtime_error("libcusolver not found; tried:" + tried);
    resolve(blas, "cublasCreate_v2", &g_api.blas_create, true);
    resolve(blas, "cublasDestroy_v2", &g_api.blas_destroy, true);
    resolve(blas, "cublasSetStream_v2", &g_api.blas_set_stream, true);
    resolve(blas, "cublasGemmStridedBatchedEx", &g_api.gemm_strided_batched, true);
    resolve(solver, "cusolverDnCreate", &g_api.dn_create, true);
    resolve(solver, "cusolverDnDestroy", &g_api.dn_destroy, true);
    resolve(solver, "cusolverDnSetStream", &g_api.dn_set_stream, true);
    resolve(solver, "cusolverDnCreateParams", &g_api.dn_create_params, true);
    resolve(solver, "cusolverDnDestroyParams", &g_api.dn_destroy_params, true);
    resolve(solver, "cusolverDnXsyevd_bufferSize", &g_api.syevd_buffer_size, true);
    resolve(solver, "cusolverDnXsyevd", &g_api.syevd, true);
    resolve(solver, "cusolverDnXsyevBatched_bufferSize", &g_api.syev_batched_buffer_size, false);
    resolve(solver, "cusolverDnXsyevBatched", &g_api.syev_batched, false);
    if (!g_api.syev_batched_buffer_size) g_api.syev_batched = nullptr;
    resolve(solver, "cusolverGetVersion", &g_api.get_version, false);
    if (!g_api.get_version || g_api.get_version(&g_api.version) != CUSOLVER_STATUS_SUCCESS) g_api.version = 0;
    g_api.max_n = cuda_plan::solver_max_n(g_api.version);
    g_ok = true;
  } catch (const std::exception& e) {
    g_error = e.what();
  }
}

}  // namespace

const std::vector<std::string>& required_symbols() {
  static const std::vector<std::string> names = {
      "cublasCreate_v2",        "cublasDestroy_v2",        "cublasSetStream_v2",
      "cublasGemmStridedBatchedEx", "cusolverDnCreate",    "cusolverDnDestroy",
      "cusolverDnSetStream",    "cusolverDnCreateParams",  "cusolverDnDestroyParams",
      "cusolverDnXsyevd_bufferSize", "cusolverDnXsyevd",   "cusolverDnXsyevBatched_bufferSize",
      "cusolverDnXsyevBatched", "cusolverGetVersion"};
  return names;
}

const Api& load_api(int cuda_major, const std::vector<std::string>& dirs) {
  std::call_once(g_once, load_once, cuda_major, dirs);
  if (!g_ok) throw std::runtime_error(g_error);
  return g_api;
}

const Api* loaded_api() { return g_ok ? &g_api : nullptr; }

}  // namespace cuda
}  // namespace tb
