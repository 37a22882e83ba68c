// pybind11 module `tempbalance._core_cuda`: device pointers and the stream as Python ints, no libtorch.
// Importing it needs neither a GPU nor cuSOLVER: the libraries are loaded by `load()`, devices counted on demand.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "../failpoints.h"
#include "common_bindings.h"
#include "core_cuda.h"
#include "libs.h"
#include "params.h"

namespace py = pybind11;

namespace {

tb::cuda::Scalar scalar_of(const std::string& name) {
  if (name == "float32") return tb::cuda::Scalar::kF32;
  if (name == "float64") return tb::cuda::Scalar::kF64;
  if (name == "complex64") return tb::cuda::Scalar::kC64;
  if (name == "complex128") return tb::cuda::Scalar::kC128;
  throw py::value_error("dtype must be float32, float64, complex64 or complex128, got '" + name + "'");
}

py::dict load(int cuda_major, const std::vector<std::string>& dirs) {
  const tb::cuda::Api& api = tb::cuda::load_api(cuda_major, dirs);  // RuntimeError with every path tried
  py::dict out;
  out["cusolver"] = api.cusolver_path;
  out["cublas"] = api.cublas_path;
  out["batched"] = api.syev_batched != nullptr;
  out["version"] = api.version;
  out["max_n"] = api.max_n;
  return out;
}

py::dict gram_eigvalsh(const std::vector<std::tuple<uintptr_t, int64_t, int64_t, int64_t, uintptr_t>>& mats,
                       const std::string& dtype, uintptr_t stream, const py::function& alloc, int64_t max_bytes) {
  std::vector<tb::cuda::DeviceMatrix> in;
  for (std::size_t j = 0; j < mats.size(); ++j) {
    tb::cuda::DeviceMatrix m;
    std::tie(m.data, m.slices, m.rows, m.cols, m.out) = mats[j];
    if (!m.data || !m.out || m.slices < 1 || m.rows < 1 || m.cols < 1)
      throw py::value_error("matrix " + std::to_string(j) + ": null pointer or empty shape");
    in.push_back(m);
  }
  if (max_bytes < 1) throw py::value_error("max_bytes must be >= 1");
  const tb::cuda::Scalar s = scalar_of(dtype);
  // Device scratch from the caller (torch.empty on the device): called with the GIL held; its exceptions (an
  // out-of-memory) propagate unchanged, raised before any work is enqueued.
  const tb::cuda::Allocator allocator = [&alloc](int64_t bytes) -> uintptr_t {
    py::gil_scoped_acquire acquire;
    const auto ptr = alloc(bytes).cast<uintptr_t>();
    if (!ptr) throw std::runtime_error("alloc returned a null pointer");
    return ptr;
  };
  tb::cuda::PassInfo info;
  {
    py::gil_scoped_release release;
    info = tb::cuda::gram_eigvalsh(in, s, stream, allocator, max_bytes);
  }
  py::dict out;
  out["groups"] = info.groups;
  out["batched_groups"] = info.batched_groups;
  out["scratch_bytes"] = info.scratch_bytes;
  out["solver_bytes"] = info.solver_bytes;
  out["solver_host_bytes"] = info.solver_host_bytes;
  return out;
}

void hill_lr(uintptr_t eigs, uintptr_t offsets, int64_t n, uintptr_t unit_index, int64_t n_units, double xmin_pos,
             const std::string& xmin_rule, bool filter_zeros, double zero_tol, double zero_rel, double zero_rtol,
             int64_t min_eigs, const std::string& mapping, double tau, double s_lo, double s_hi, double s1, double s2,
             bool compat, uintptr_t metrics, uintptr_t unit_alpha, uintptr_t factors, uintptr_t scratch,
             uintptr_t stream, uintptr_t zero_tols, uintptr_t zero_rtols) {
  const tb::HillParams hp = tb::hill_params(xmin_pos, xmin_rule, filter_zeros, zero_tol, zero_rel, zero_rtol,
                                            min_eigs);
  const tb::MappingParams mp = tb::mapping_params(mapping, tau, s_lo, s_hi, s1, s2, compat);
  if (n < 0 || n_units < 0) throw py::value_error("n and n_units must be >= 0");
  if (n > 0 &&
      (!eigs || !offsets || !metrics || (n_units > 0 && (!unit_index || !unit_alpha || !factors || !scratch))))
    throw py::value_error("null device pointer");
  py::gil_scoped_release release;
  tb::cuda::hill_lr(eigs, offsets, n, unit_index, n_units, hp, zero_tols, zero_rtols, mp, metrics, unit_alpha,
                    factors, scratch, stream);
}

void unit_factors(uintptr_t metrics, uintptr_t unit_index, int64_t n, int64_t n_units, const std::string& metric,
                  uintptr_t previous, const std::string& mapping, double tau, double s_lo, double s_hi, double s1,
                  double s2, bool compat, uintptr_t unit_values, uintptr_t factors, uintptr_t scratch,
                  uintptr_t stream) {
  const int column = tb::metric_column(metric);
  const tb::MappingParams mp = tb::mapping_params(mapping, tau, s_lo, s_hi, s1, s2, compat);
  if (n < 0 || n_units < 0) throw py::value_error("n and n_units must be >= 0");
  if (n_units > 0 && (!metrics || !unit_index || !previous || !unit_values || !factors || !scratch))
    throw py::value_error("null device pointer");
  py::gil_scoped_release release;
  tb::cuda::unit_factors(metrics, unit_index, n, n_units, column, previous, mp, unit_values, factors, scratch,
                         stream);
}

py::tuple device_count() {
  std::string why;
  const int n = tb::cuda::device_count(&why);
  return py::make_tuple(n, why);
}

}  // namespace

PYBIND11_MODULE(_core_cuda, m) {
  tb::register_handle_exit_hook();
  m.doc() = "tempbalance CUDA spectral core (cuBLAS Gram + batched cuSOLVER eigenvalues + Hill/LR kernels)";
  py::register_exception<tb::cuda::DeviceAllocError>(m, "DeviceAllocError", PyExc_MemoryError);
  m.def("load", &load, py::arg("cuda_major"), py::arg("dirs"),
        "dlopen cuBLAS and cuSOLVER (the copy already in the process first, then `dirs`, then the system loader). "
        "Returns {'cusolver': path, 'cublas': path, 'batched': bool}; RuntimeError saying what was tried.");
  m.def("device_count", &device_count, "(count, reason): count < 0 with the CUDA runtime's reason when unusable.");
  m.def("gram_eigvalsh", &gram_eigvalsh, py::arg("mats"), py::arg("dtype"), py::arg("stream"), py::arg("alloc"),
        py::arg("max_bytes") = int64_t(1) << 30,
        "mats: [(data_ptr, slices, rows, cols, out_ptr)]; enqueue Gram + screen + eigenvalues on `stream`. "
        "alloc(nbytes) -> device pointer (kept alive by the caller until this returns). Grams are batched in "
        "groups of at most max_bytes. Returns what it did: {'groups', 'batched_groups', 'scratch_bytes', "
        "'solver_bytes', 'solver_host_bytes'}. DeviceAllocError (a MemoryError) when cuBLAS, cuSOLVER or the "
        "runtime cannot allocate their own device memory; RuntimeError for any other failing call.");
  m.def("hill_lr", &hill_lr, py::arg("eigs"), py::arg("offsets"), py::arg("n"), py::arg("unit_index"),
        py::arg("n_units"), py::arg("xmin_pos"), py::arg("xmin_rule"), py::arg("filter_zeros"), py::arg("zero_tol"),
        py::arg("zero_rel"), py::arg("zero_rtol"), py::arg("min_eigs"), py::arg("mapping"), py::arg("tau"),
        py::arg("s_lo"), py::arg("s_hi"), py::arg("s1"), py::arg("s2"), py::arg("compat"), py::arg("metrics"),
        py::arg("unit_alpha"), py::arg("factors"), py::arg("scratch"), py::arg("stream"), py::arg("zero_tols") = 0,
        py::arg("zero_rtols") = 0,
        "Enqueue the Hill metrics, per-unit mean alpha and LR factors (all device pointers) on `stream`. "
        "zero_tols / zero_rtols: per-spectrum float64 device arrays overriding zero_tol / zero_rtol (0: none); "
        "scratch: n + 2 n_units 8-byte words.");
  m.def("unit_factors", &unit_factors, py::arg("metrics"), py::arg("unit_index"), py::arg("n"), py::arg("n_units"),
        py::arg("metric"), py::arg("previous"), py::arg("mapping"), py::arg("tau"), py::arg("s_lo"), py::arg("s_hi"),
        py::arg("s1"), py::arg("s2"), py::arg("compat"), py::arg("unit_values"), py::arg("factors"),
        py::arg("scratch"), py::arg("stream"),
        "Enqueue TempBalance's unit values and factors of a pass (tb::packed_unit_factors) on `stream`: failed "
        "units keep `previous`; scratch: n + 2 n_units 8-byte words.");
  m.def("_arm_fault", &tb::fault::arm_named, py::arg("fault"), py::arg("skip") = 0,
      "Testing only: 'solver_info' makes the (skip + 1)-th Gram solved from now report info = 1 (did not "
      "converge); 'solver_alloc' makes the (skip + 1)-th solver call from now fail with "
      "CUSOLVER_STATUS_ALLOC_FAILED (DeviceAllocError); 'none' disarms.");
  m.attr("required_symbols") = tb::cuda::required_symbols();
  m.attr("solver_settings") = tb::solver_settings();
  m.attr("hill_columns") = tb::kHillColumns;
}
