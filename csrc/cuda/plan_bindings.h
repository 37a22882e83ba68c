// Exposes the CUDA pass's host planning (plan.h), its device checks (device_checks.h) and its handle lifetime rules
// (handle_cache.h) through the CPU module `tempbalance._core`, so the batching, scratch layout, solver settings,
// allocation-failure statuses, library search, Gram screen, copy-out and handle rules are tested on machines
// without CUDA (tests/test_cuda_build.py).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cfloat>
#include <complex>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "common_bindings.h"
#include "device_checks.h"
#include "handle_cache.h"
#include "plan.h"

namespace tb {

namespace handle_twin {

inline std::atomic<int>& created() {
  static std::atomic<int> n{0};
  return n;
}
inline std::atomic<int>& destroyed() {
  static std::atomic<int> n{0};
  return n;
}
inline std::atomic<bool>& log_destroy() {
  static std::atomic<bool> on{false};
  return on;
}

struct Destroy {
  // Counts, and with logging on writes a line to stderr (C stdio: it must work after Python is gone, which is
  // exactly when a destruction would be wrong).
  static void destroy(int device, int& handle) noexcept {
    destroyed().fetch_add(1);
    if (log_destroy().load()) {
      std::fprintf(stderr, "handle twin: destroyed handle %d of device %d\n", handle, device);
      std::fflush(stderr);
    }
  }
};

using Cache = cuda_handles::PerThread<int, Destroy>;

}  // namespace handle_twin

// The CUDA core's handle cache over stand-in handles (ints), registered with the same exit hook.
inline void bind_handle_twin(pybind11::module_& m) {
  namespace py = pybind11;
  register_handle_exit_hook();
  m.def(
      "_cuda_handle_twin_get",
      [](int device) {
        return handle_twin::Cache::mine().get(device, [] { return handle_twin::created().fetch_add(1) + 1; });
      },
      py::arg("device"),
      "Testing only: the calling thread's stand-in handle for `device` (numbered from 1 as created), made on first "
      "use by the CUDA core's handle cache rules.");
  m.def(
      "_cuda_handle_twin_counts",
      [] { return std::make_tuple(handle_twin::created().load(), handle_twin::destroyed().load()); },
      "Testing only: (created, destroyed) stand-in handles.");
  m.def(
      "_cuda_handle_twin_log", [](bool on) { handle_twin::log_destroy().store(on); }, py::arg("on"),
      "Testing only: report every stand-in handle destruction on stderr (also after the interpreter is gone).");
}

inline cuda_plan::Library library_of(const std::string& name) {
  if (name == "runtime") return cuda_plan::Library::kRuntime;
  if (name == "cublas") return cuda_plan::Library::kCublas;
  if (name == "cusolver") return cuda_plan::Library::kCusolver;
  throw pybind11::value_error("library must be 'runtime', 'cublas' or 'cusolver', got '" + name + "'");
}

inline void bind_cuda_plan(pybind11::module_& m) {
  namespace py = pybind11;
  bind_handle_twin(m);
  using ChunkTuple = std::tuple<int64_t, int64_t, int64_t, int64_t>;
  m.def(
      "cuda_plan_groups",
      [](const std::vector<int64_t>& slices, const std::vector<int64_t>& gram_n, int64_t elem_bytes,
         bool have_batched, int64_t max_elements, int64_t max_bytes) {
        if (slices.size() != gram_n.size()) throw py::value_error("slices and gram_n must have the same length");
        if (elem_bytes <= 0 || max_elements <= 0 || max_bytes <= 0)
          throw py::value_error("elem_bytes, max_elements and max_bytes must be positive");
        py::list out;
        for (const auto& g : cuda_plan::plan_groups(slices, gram_n, elem_bytes, have_batched, max_elements,
                                                    max_bytes)) {
          std::vector<ChunkTuple> chunks;
          for (const auto& c : g.chunks) chunks.emplace_back(c.matrix, c.slice_begin, c.slices, c.position);
          out.append(py::make_tuple(g.n, g.batch, g.batched, chunks));
        }
        return out;
      },
      py::arg("slices"), py::arg("gram_n"), py::arg("elem_bytes"), py::arg("have_batched") = true,
      py::arg("max_elements") = cuda_plan::kBatchedElementLimit, py::arg("max_bytes") = int64_t(1) << 30,
      "How the CUDA core groups Grams for cusolverDnXsyevBatched: [(n, batch, batched, [(matrix, slice_begin, "
      "slices, position)])].");
  m.def("cuda_library_candidates", &cuda_plan::library_candidates, py::arg("lib"), py::arg("cuda_major"),
        py::arg("dirs"), "Where the CUDA core looks for lib<lib>.so.<version>, in order ('noload:' = already loaded).");
  m.def("cuda_library_dependencies", &cuda_plan::library_dependencies, py::arg("lib"),
        "What the CUDA core loads before lib<lib> (from the same places), in order.");
  m.attr("CUDA_BATCHED_ELEMENT_LIMIT") = cuda_plan::kBatchedElementLimit;
  m.attr("CUDA_SOLVER_SETTINGS") = solver_settings();
  m.def(
      "cuda_alloc_failure",
      [](const std::string& library, int status) {
        return cuda_plan::is_alloc_failure(library_of(library), status);
      },
      py::arg("library"), py::arg("status"),
      "Whether a status of 'runtime' (cudaError_t), 'cublas' or 'cusolver' means the CUDA core's DeviceAllocError "
      "(an out-of-memory: the pass retries with smaller solve groups).");
  m.def("cuda_solver_max_n", &cuda_plan::solver_max_n, py::arg("cusolver_version"),
        "The largest Gram the CUDA core gives cuSOLVER of this version (0: no limit).");
  m.def(
      "cuda_scratch_layout",
      [](const std::vector<int64_t>& slices, const std::vector<int64_t>& gram_n, int64_t elem_bytes,
         int64_t real_bytes, bool have_batched, int64_t max_bytes) {
        if (slices.size() != gram_n.size()) throw py::value_error("slices and gram_n must have the same length");
        if (elem_bytes <= 0 || real_bytes <= 0 || max_bytes <= 0)
          throw py::value_error("elem_bytes, real_bytes and max_bytes must be positive");
        const auto groups = cuda_plan::plan_groups(slices, gram_n, elem_bytes, have_batched,
                                                   cuda_plan::kBatchedElementLimit, max_bytes);
        const auto l = cuda_plan::scratch_layout(groups, elem_bytes, real_bytes);
        py::dict out;
        out["grams"] = l.grams;
        out["eigs"] = l.eigs;
        out["info"] = l.info;
        out["unusable"] = l.unusable;
        out["bytes"] = l.bytes;
        return out;
      },
      py::arg("slices"), py::arg("gram_n"), py::arg("elem_bytes"), py::arg("real_bytes"), py::arg("have_batched"),
      py::arg("max_bytes"), "Byte offsets of the CUDA pass's scratch buffer: grams, eigs, info, unusable, bytes.");
  m.def(
      "cuda_gram_unusable",
      [](const py::array& grams) {
        // (batch, n, n) Grams as the CUDA core holds them (column-major = the transpose; only the diagonal is read)
        if (grams.ndim() != 3 || grams.shape(1) != grams.shape(2) || !(grams.flags() & py::array::c_style))
          throw py::value_error("grams must be a C-contiguous (batch, n, n) array");
        const int64_t batch = grams.shape(0), n = grams.shape(1);
        std::vector<bool> out(batch);
        auto run = [&](auto tag, bool complex, double real_max) {
          using R = decltype(tag);
          const R* g = static_cast<const R*>(grams.data());
          for (int64_t b = 0; b < batch; ++b)
            out[b] = cuda_checks::gram_unusable(g + b * n * n * (complex ? 2 : 1), n, complex, real_max);
        };
        if (py::isinstance<py::array_t<float>>(grams)) {
          run(float{}, false, FLT_MAX);
        } else if (py::isinstance<py::array_t<double>>(grams)) {
          run(double{}, false, DBL_MAX);
        } else if (py::isinstance<py::array_t<std::complex<float>>>(grams)) {
          run(float{}, true, FLT_MAX);
        } else if (py::isinstance<py::array_t<std::complex<double>>>(grams)) {
          run(double{}, true, DBL_MAX);
        } else {
          throw py::value_error("grams must be float32, float64, complex64 or complex128");
        }
        return out;
      },
      py::arg("grams"), "The CUDA core's screen: which Grams never reach cuSOLVER (tb::cuda_checks::gram_unusable).");
  m.def(
      "cuda_finished_eigenvalues",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> w, const std::vector<int>& info,
         const std::vector<int>& unusable) {
        // w: (batch, n) eigenvalues of a group; the copy-out the CUDA core's finish kernel does
        if (w.ndim() != 2 || static_cast<std::size_t>(w.shape(0)) != info.size() || info.size() != unusable.size())
          throw py::value_error("w must be (batch, n) with one info and one unusable flag per Gram");
        const int64_t batch = w.shape(0), n = w.shape(1);
        py::array_t<double> out({batch, n});
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t k = 0; k < n; ++k)
            out.mutable_at(b, k) = cuda_checks::finished_eigenvalue(w.at(b, k), info[b] != 0 || unusable[b] != 0);
        return out;
      },
      py::arg("w"), py::arg("info"), py::arg("unusable"),
      "The CUDA core's copy-out of eigenvalues: NaN for a failed Gram, else clamped at 0.");
}

}  // namespace tb
