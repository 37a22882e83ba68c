// Host-side planning of the CUDA spectral pass, in plain C++ (no CUDA headers) so the CPU build compiles and tests
// it: which Gram matrices are solved together in one cusolverDnXsyevBatched call, how large the shared Gram buffer
// is, how cuSOLVER is called, which library statuses are allocation failures, and where the cuSOLVER/cuBLAS shared
// libraries are looked for.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

namespace tb {
namespace cuda_plan {

// A run of consecutive slices of one input matrix inside a solve group.
struct Chunk {
  int64_t matrix = 0;       // index of the input
  int64_t slice_begin = 0;  // first slice of that input in this chunk
  int64_t slices = 0;       // how many of its slices
  int64_t position = 0;     // index of the chunk's first Gram within the group's batch
};

// Grams of one size n solved together: `batch` Grams of n x n, stored back to back (lda = n).
struct Group {
  int64_t n = 0;
  int64_t batch = 0;
  bool batched = true;  // false: one cusolverDnXsyevd per Gram (routine missing or one Gram above the limit)
  std::vector<Chunk> chunks;
};

// cusolverDnXsyevBatched indexes the whole batch with 32-bit ints: n * lda * batch must stay <= INT32_MAX.
constexpr int64_t kBatchedElementLimit = INT32_MAX;

// Groups inputs (slices[k] Grams of size gram_n[k] each) by Gram size, largest size first, inputs in their given
// order within a size. A group holds at most `max_elements` Gram elements (n*n*batch) and `max_bytes` bytes
// (elem_bytes per element), so an input with many slices may be split over several groups. A size whose single
// Gram already exceeds a limit, or every size when `have_batched` is false, becomes per-Gram (batched = false)
// groups of one Gram each. Inputs with slices == 0 or gram_n == 0 are skipped.
inline std::vector<Group> plan_groups(const std::vector<int64_t>& slices, const std::vector<int64_t>& gram_n,
                                      int64_t elem_bytes, bool have_batched,
                                      int64_t max_elements = kBatchedElementLimit,
                                      int64_t max_bytes = int64_t(1) << 30) {
  std::vector<int64_t> order(slices.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return gram_n[a] > gram_n[b]; });
  std::vector<Group> groups;
  for (const int64_t k : order) {
    const int64_t n = gram_n[k], s = slices[k];
    if (n <= 0 || s <= 0) continue;
    const int64_t per_gram = n * n;
    int64_t cap = std::min(max_elements / per_gram, max_bytes / (per_gram * elem_bytes));
    const bool batched = have_batched && cap >= 1;
    if (!batched) cap = 1;
    int64_t done = 0;
    while (done < s) {
      const bool open = !groups.empty() && groups.back().n == n && groups.back().batched == batched &&
                        groups.back().batch < cap;
      if (!open) {
        groups.push_back(Group{n, 0, batched, {}});
      }
      Group& g = groups.back();
      const int64_t take = std::min(s - done, cap - g.batch);
      g.chunks.push_back(Chunk{k, done, take, g.batch});
      g.batch += take;
      done += take;
    }
  }
  return groups;
}

// Bytes of the one Gram buffer every group reuses in turn (stream order makes reuse safe).
inline int64_t gram_buffer_bytes(const std::vector<Group>& groups, int64_t elem_bytes) {
  int64_t most = 0;
  for (const Group& g : groups) most = std::max(most, g.n * g.n * g.batch * elem_bytes);
  return most;
}

// Bytes of the eigenvalue buffer every group reuses (real values of the input's precision).
inline int64_t eig_buffer_bytes(const std::vector<Group>& groups, int64_t real_bytes) {
  int64_t most = 0;
  for (const Group& g : groups) most = std::max(most, g.n * g.batch * real_bytes);
  return most;
}

// The most Grams of one group (the length of the per-Gram info and screen arrays).
inline int64_t max_batch(const std::vector<Group>& groups) {
  int64_t most = 0;
  for (const Group& g : groups) most = std::max(most, g.batch);
  return most;
}

constexpr int64_t kAlignment = 256;  // what cudaMalloc guarantees; cuSOLVER and cuBLAS expect at least 16
inline int64_t align_up(int64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

// One scratch buffer for the whole pass (allocated by the caller, from torch's allocator), in byte offsets: the
// Grams of a group, their eigenvalues, cuSOLVER's info per Gram and the screen's verdict per Gram (both int32).
// The solver's own workspace is a second buffer: its size is known only after asking cuSOLVER.
struct ScratchLayout {
  int64_t grams = 0, eigs = 0, info = 0, unusable = 0, bytes = 0;
};

inline ScratchLayout scratch_layout(const std::vector<Group>& groups, int64_t elem_bytes, int64_t real_bytes) {
  ScratchLayout l;
  l.grams = 0;
  l.eigs = align_up(gram_buffer_bytes(groups, elem_bytes));
  l.info = l.eigs + align_up(eig_buffer_bytes(groups, real_bytes));
  l.unusable = l.info + align_up(max_batch(groups) * 4);
  l.bytes = l.unusable + align_up(max_batch(groups) * 4);
  return l;
}

// The largest Gram cuSOLVER's Xsyevd / XsyevBatched take, by cuSOLVER version (cusolverGetVersion: 11701 =
// 11.7.1), 0 for no limit. The cuSOLVER of CUDA 12 (11.x) indexes their workspace with 32-bit integers and fails
// above n = 32768; CUDA 13's (12.0 on) has full 64-bit support. A version of 0 (unknown) gets the limit. Larger
// Grams go to the CPU core.
inline int64_t solver_max_n(int cusolver_version) { return cusolver_version >= 12000 ? 0 : 32768; }

// How the solver is called. cuSOLVER reads one triangle of each Gram; the Grams are stored full (one GEMM writes
// both), so either would do. The upper one: cusolverDnXsyevBatched with the lower triangle has returned wrong
// eigenvalues, at random, for one matrix of a complex64 batch (CUDA.jl issue 2577). Its workspace is zeroed before
// every call: cuSOLVER 11.7.1.2's batched solver reads it before writing it (fixed in 11.7.3).
enum class Triangle { kUpper, kLower };
constexpr Triangle kSolverTriangle = Triangle::kUpper;
constexpr bool kZeroSolverWorkspace = true;
inline const char* triangle_name(Triangle t) { return t == Triangle::kUpper ? "upper" : "lower"; }

// Library status codes that mean "could not allocate device memory" (core_cuda.cu checks them against the headers'
// enums). Such a failure inside cuBLAS/cuSOLVER (their own allocations) or the runtime is an out-of-memory like one
// from torch's allocator: the core raises DeviceAllocError, and the pass retries with smaller solve groups
// (tempbalance/cuda_backend.py), never switching to the CPU.
enum class Library { kRuntime, kCublas, kCusolver };
constexpr int kRuntimeMemoryAllocation = 2;  // cudaErrorMemoryAllocation
constexpr int kCublasAllocFailed = 3;        // CUBLAS_STATUS_ALLOC_FAILED
constexpr int kCusolverAllocFailed = 2;      // CUSOLVER_STATUS_ALLOC_FAILED
inline bool is_alloc_failure(Library lib, int status) {
  switch (lib) {
    case Library::kRuntime: return status == kRuntimeMemoryAllocation;
    case Library::kCublas: return status == kCublasAllocFailed;
    case Library::kCusolver: return status == kCusolverAllocFailed;
  }
  return false;
}

// The soname's version suffix of `lib` ("cusolver" | "cublas" | "cublasLt" | "cusparse" | "nvJitLink") for a
// CUDA major release, or "" when unknown. CUDA 12 ships cuSOLVER 11, cuBLAS 12, cuSPARSE 12, nvJitLink 12; CUDA 13
// ships cuSOLVER 12, cuBLAS 13, cuSPARSE 12, nvJitLink 13.
inline std::string soname_version(const std::string& lib, int cuda_major) {
  if (cuda_major != 12 && cuda_major != 13) return "";
  if (lib == "cusolver") return cuda_major == 12 ? "11" : "12";
  if (lib == "cusparse") return "12";
  if (lib == "cublas" || lib == "cublasLt" || lib == "nvJitLink") return std::to_string(cuda_major);
  return "";
}

// The libraries `lib` needs that may live in another directory, in load order; the core loads them first, from the
// same candidates, so they come from the same installation. CUDA 13's wheels keep every library in one directory
// (nvidia/cu13/lib, $ORIGIN rpath); CUDA 12's have one per package (nvidia/cusparse/lib, ...): the current ones
// point libcusolver's RUNPATH at its siblings, but a copy in a plain directory has no such path. (cuSOLVER also
// needs cuBLAS, which the core loads before it.)
inline std::vector<std::string> library_dependencies(const std::string& lib) {
  if (lib == "cusolver") return {"nvJitLink", "cusparse"};
  if (lib == "cublas") return {"cublasLt"};
  return {};
}

// Where `lib` is looked for, in order. An entry starting with "noload:" means dlopen(RTLD_NOLOAD) of that soname:
// the copy torch already loaded wins, so one process never holds two cuSOLVERs. Then each directory (torch's
// NVIDIA wheel directories, passed in by Python), then the bare soname for the system loader. With an unknown
// CUDA major both CUDA 13 and CUDA 12 sonames are tried, newest first.
inline std::vector<std::string> library_candidates(const std::string& lib, int cuda_major,
                                                   const std::vector<std::string>& dirs) {
  std::vector<std::string> versions;
  const std::string v = soname_version(lib, cuda_major);
  if (!v.empty()) {
    versions.push_back(v);
  } else {
    for (int major : {13, 12}) versions.push_back(soname_version(lib, major));
  }
  std::vector<std::string> out;
  for (const auto& ver : versions) out.push_back("noload:lib" + lib + ".so." + ver);
  for (const auto& dir : dirs)
    for (const auto& ver : versions) out.push_back(dir + "/lib" + lib + ".so." + ver);
  for (const auto& ver : versions) out.push_back("lib" + lib + ".so." + ver);
  return out;
}

}  // namespace cuda_plan
}  // namespace tb
