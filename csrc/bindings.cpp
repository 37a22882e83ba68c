// pybind11 module `tempbalance._core`: numpy in, numpy out, the GIL released for every heavy loop.
// It does not link libtorch, so one build works with every torch release.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <complex>
#include <cstring>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/plan_bindings.h"
#include "failpoints.h"
#include "gram_eig.h"
#include "guard_page.h"
#include "parallel.h"
#include "params.h"
#include "tb_math.h"
#include "unit_factors.h"

namespace py = pybind11;

namespace {

tb::Scalar scalar_of(const py::array& a, std::size_t index) {
  if (py::isinstance<py::array_t<float>>(a)) return tb::Scalar::kF32;
  if (py::isinstance<py::array_t<double>>(a)) return tb::Scalar::kF64;
  if (py::isinstance<py::array_t<std::complex<float>>>(a)) return tb::Scalar::kC64;
  if (py::isinstance<py::array_t<std::complex<double>>>(a)) return tb::Scalar::kC128;
  throw py::value_error("matrix " + std::to_string(index) + ": dtype " + std::string(py::str(a.dtype())) +
                        " is not float32, float64, complex64 or complex128");
}

tb::Solver solver_of(const std::string& name) {
  if (name == "evd") return tb::Solver::kDivideConquer;
  if (name == "2stage") return tb::Solver::kTwoStage;
  throw py::value_error("solver must be 'evd' or '2stage', got '" + name + "'");
}

// The inputs of one gram_eigvalsh call, checked, and the arrays kept alive while the GIL is released.
struct EigCall {
  std::vector<py::array> keep;
  std::vector<tb::MatrixInput> inputs;
  tb::Solver solver = tb::Solver::kDivideConquer;
};

EigCall eig_call(const py::list& mats, const std::vector<int64_t>& top, const std::string& solver) {
  if (top.size() != mats.size() && !top.empty())
    throw py::value_error("top must be empty or have one entry per matrix");
  EigCall call;
  for (std::size_t j = 0; j < mats.size(); ++j) {
    py::array a = py::reinterpret_borrow<py::array>(mats[j]);
    if (!(a.flags() & py::array::c_style))
      throw py::value_error("matrix " + std::to_string(j) + ": must be C-contiguous");
    if (a.ndim() != 2 && a.ndim() != 3)
      throw py::value_error("matrix " + std::to_string(j) + ": expected 2-d (rows, cols) or 3-d (slices, rows, "
                            "cols), got " + std::to_string(a.ndim()) + "-d");
    tb::MatrixInput in;
    in.data = a.data();
    in.scalar = scalar_of(a, j);
    in.slices = a.ndim() == 3 ? a.shape(0) : 1;
    in.rows = a.shape(a.ndim() - 2);
    in.cols = a.shape(a.ndim() - 1);
    in.top = top.empty() ? 0 : top[j];
    try {
      tb::validate(in, j);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
    call.inputs.push_back(in);
    call.keep.push_back(a);
  }
  call.solver = solver_of(solver);
  return call;
}

// The array gram_eigvalsh fills for `in`.
py::array eig_result(const tb::MatrixInput& in) {
  const auto count = static_cast<py::ssize_t>(tb::eig_count(in));
  return tb::single_precision(in) ? py::array(py::array_t<float>(count)) : py::array(py::array_t<double>(count));
}

py::list gram_eigvalsh(const py::list& mats, const std::vector<int64_t>& top, int num_threads,
                       const std::string& solver) {
  const EigCall call = eig_call(mats, top, solver);
  py::list out;
  std::vector<void*> outputs;
  for (const auto& in : call.inputs) {
    py::array r = eig_result(in);
    outputs.push_back(r.mutable_data());
    out.append(r);
  }
  {
    py::gil_scoped_release release;
    tb::gram_eigvalsh(call.inputs, outputs, num_threads, call.solver);
  }
  return out;
}

#ifdef TB_HAVE_GUARD_PAGE
// gram_eigvalsh with every output written into a GuardedBuffer (copied into the returned arrays afterwards): a
// write past the end of an output crashes the process.
py::list gram_eigvalsh_guarded(const py::list& mats, const std::vector<int64_t>& top, int num_threads,
                               const std::string& solver) {
  const EigCall call = eig_call(mats, top, solver);
  std::vector<py::array> results;
  std::vector<std::unique_ptr<tb::GuardedBuffer>> guarded;
  std::vector<void*> outputs;
  for (const auto& in : call.inputs) {
    results.push_back(eig_result(in));
    guarded.push_back(std::make_unique<tb::GuardedBuffer>(static_cast<std::size_t>(results.back().nbytes())));
    outputs.push_back(guarded.back()->data());
  }
  {
    py::gil_scoped_release release;
    tb::gram_eigvalsh(call.inputs, outputs, num_threads, call.solver);
  }
  py::list out;
  for (std::size_t j = 0; j < results.size(); ++j) {
    std::memcpy(results[j].mutable_data(), guarded[j]->data(), static_cast<std::size_t>(results[j].nbytes()));
    out.append(results[j]);
  }
  return out;
}
#endif

// A per-spectrum option: one number for every spectrum, or one per spectrum (an empty sequence: `fallback` for all).
// Raises ValueError naming the argument when the length is neither.
template <class T>
std::vector<T> per_spectrum(const py::object& value, std::size_t n, T fallback, const char* arg) {
  auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(value);
  if (!a) throw py::value_error(std::string(arg) + " must be a number or a sequence of numbers");
  if (a.ndim() == 0) return std::vector<T>(n, *a.data());
  if (a.ndim() == 1 && a.shape(0) == 0) return std::vector<T>(n, fallback);
  if (a.ndim() != 1 || static_cast<std::size_t>(a.shape(0)) != n)
    throw py::value_error(std::string(arg) + " must be one number or one per spectrum (" + std::to_string(n) +
                          "), got " + std::to_string(a.ndim()) + "-d of size " + std::to_string(a.size()));
  return std::vector<T>(a.data(), a.data() + n);
}

template <class T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

py::array_t<double> hill_metrics(const py::list& eigs, double xmin_pos, const std::string& xmin_rule,
                                 bool filter_zeros, const py::object& zero_tol, double zero_rel,
                                 const py::object& zero_rtol, int64_t min_eigs, const py::object& n_total,
                                 int num_threads) {
  const tb::HillParams p = tb::hill_params(xmin_pos, xmin_rule, filter_zeros, 0.0, zero_rel, 0.0, min_eigs);
  std::vector<CArray<double>> spectra;
  for (auto item : eigs) spectra.emplace_back(py::reinterpret_borrow<py::object>(item));
  const std::size_t count = spectra.size();
  const auto tol = per_spectrum<double>(zero_tol, count, 1e-5, "zero_tol");
  const auto rtol = per_spectrum<double>(zero_rtol, count, 0.0, "zero_rtol");
  const auto total = per_spectrum<int64_t>(n_total, count, 0, "n_total");
  tb::HillPerSpectrum per;
  per.zero_tol = tol.data();
  per.zero_rtol = rtol.data();
  per.n_total = total.data();
  const auto n = static_cast<py::ssize_t>(count);
  py::array_t<double> out({n, static_cast<py::ssize_t>(tb::kHillColumns)});
  double* dst = out.mutable_data();
  std::vector<const double*> ptrs;
  std::vector<int64_t> lens;
  for (auto& s : spectra) {
    if (s.ndim() != 1) throw py::value_error("every spectrum must be 1-d");
    ptrs.push_back(s.data());
    lens.push_back(s.shape(0));
  }
  // Spectra are independent: spread them over workers, longest first (the xmin scans cost ~ N log N each).
  std::vector<std::size_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return lens[a] > lens[b]; });
  {
    py::gil_scoped_release release;
    tb::run_tasks(order, num_threads, [&](std::size_t, std::size_t j) {
      tb::write_row(tb::hill_metrics(ptrs[j], lens[j], tb::params_for(p, per, j)), dst + j * tb::kHillColumns);
    });
  }
  return out;
}

// The CUDA core's Hill/LR kernels run on the CPU: the same tb_math.h functions over the same packed layout, so the
// layout the Python side builds for the device is tested on machines without a GPU.
py::tuple hill_lr_packed(const CArray<double>& eigs, const CArray<int64_t>& offsets, const CArray<int64_t>& unit_index,
                         int64_t n_units, double xmin_pos, const std::string& xmin_rule, bool filter_zeros,
                         const py::object& zero_tol, double zero_rel, const py::object& zero_rtol, int64_t min_eigs,
                         const std::string& mapping, double tau, double s_lo, double s_hi, double s1, double s2,
                         bool compat) {
  if (eigs.ndim() != 1 || offsets.ndim() != 1 || unit_index.ndim() != 1 || offsets.shape(0) < 1)
    throw py::value_error("eigs, offsets and unit_index must be 1-d, offsets of length n + 1");
  const int64_t n = offsets.shape(0) - 1;
  if (unit_index.shape(0) != n) throw py::value_error("unit_index must have one entry per spectrum");
  if (n_units < 0) throw py::value_error("n_units must be >= 0");
  const int64_t* off = offsets.data();
  if (off[0] != 0 || off[n] != eigs.shape(0))
    throw py::value_error("offsets must start at 0 and end at len(eigs)");
  for (int64_t j = 0; j < n; ++j)
    if (off[j + 1] < off[j]) throw py::value_error("offsets must be non-decreasing");
  const tb::HillParams hp = tb::hill_params(xmin_pos, xmin_rule, filter_zeros, 0.0, zero_rel, 0.0, min_eigs);
  const tb::MappingParams mp = tb::mapping_params(mapping, tau, s_lo, s_hi, s1, s2, compat);
  const auto tol = per_spectrum<double>(zero_tol, n, 1e-5, "zero_tol");
  const auto rtol = per_spectrum<double>(zero_rtol, n, 0.0, "zero_rtol");
  tb::HillPerSpectrum per;
  per.zero_tol = tol.data();
  per.zero_rtol = rtol.data();
  py::array_t<double> metrics({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(tb::kHillColumns)});
  py::array_t<double> unit_alpha(n_units), factors(n_units);
  std::vector<double> alpha(n), sums(n_units);
  std::vector<int64_t> counts(n_units);
  {
    py::gil_scoped_release release;
    for (int64_t j = 0; j < n; ++j) tb::packed_hill_row(eigs.data(), off, j, hp, per, metrics.mutable_data());
    tb::packed_unit_lr(metrics.data(), unit_index.data(), n, n_units, mp, alpha.data(), sums.data(), counts.data(),
                       unit_alpha.mutable_data(), factors.mutable_data());
  }
  return py::make_tuple(metrics, unit_alpha, factors);
}

// TempBalance's factors of a pass from its metrics table (the CUDA core's unit_factors kernel, on the CPU).
py::tuple unit_factors_packed(const CArray<double>& metrics, const CArray<int64_t>& unit_index, int64_t n_units,
                              const std::string& metric, const CArray<double>& previous, const std::string& mapping,
                              double tau, double s_lo, double s_hi, double s1, double s2, bool compat) {
  if (metrics.ndim() != 2 || metrics.shape(1) != tb::kHillColumns)
    throw py::value_error("metrics must be (n, " + std::to_string(tb::kHillColumns) + ")");
  const int64_t n = metrics.shape(0);
  if (unit_index.ndim() != 1 || unit_index.shape(0) != n)
    throw py::value_error("unit_index must have one entry per metrics row");
  if (n_units < 0 || previous.ndim() != 1 || previous.shape(0) != n_units)
    throw py::value_error("previous must hold one factor per unit (n_units >= 0)");
  const int column = tb::metric_column(metric);
  const tb::MappingParams mp = tb::mapping_params(mapping, tau, s_lo, s_hi, s1, s2, compat);
  py::array_t<double> unit_values(n_units), factors(n_units);
  std::vector<double> values(n), sums(n_units);
  std::vector<int64_t> counts(n_units);
  const bool taken = tb::packed_unit_factors(metrics.data(), unit_index.data(), n, n_units, column, previous.data(),
                                             mp, values.data(), sums.data(), counts.data(),
                                             unit_values.mutable_data(), factors.mutable_data());
  return py::make_tuple(unit_values, factors, taken);
}

py::array_t<double> unit_means(py::array_t<double, py::array::c_style | py::array::forcecast> values,
                               py::array_t<int64_t, py::array::c_style | py::array::forcecast> unit_index,
                               int64_t n_units) {
  if (values.ndim() != 1 || unit_index.ndim() != 1 || values.shape(0) != unit_index.shape(0))
    throw py::value_error("values and unit_index must be 1-d of equal length");
  if (n_units < 0) throw py::value_error("n_units must be >= 0");
  py::array_t<double> out(n_units);
  std::vector<double> sums(n_units);
  std::vector<int64_t> counts(n_units);
  tb::unit_means(values.data(), unit_index.data(), values.shape(0), n_units, sums.data(), counts.data(),
                 out.mutable_data());
  return out;
}

py::array_t<double> lr_factors(py::array_t<double, py::array::c_style | py::array::forcecast> values,
                               const std::string& mapping, double tau, double s_lo, double s_hi, double s1,
                               double s2, bool compat) {
  if (values.ndim() != 1) throw py::value_error("values must be 1-d");
  const tb::MappingParams p = tb::mapping_params(mapping, tau, s_lo, s_hi, s1, s2, compat);
  py::array_t<double> out(values.shape(0));
  tb::lr_factors(values.data(), values.shape(0), p, out.mutable_data());
  return out;
}

py::array_t<double> normalize_factors(py::array_t<double, py::array::c_style | py::array::forcecast> factors,
                                      py::array_t<double, py::array::c_style | py::array::forcecast> weights) {
  if (factors.ndim() != 1) throw py::value_error("factors must be 1-d");
  const bool weighted = weights.size() > 0;
  if (weighted && (weights.ndim() != 1 || weights.shape(0) != factors.shape(0)))
    throw py::value_error("weights has " + std::to_string(weights.size()) + " values, factors has " +
                          std::to_string(factors.shape(0)));
  py::array_t<double> out(factors.shape(0));
  std::copy(factors.data(), factors.data() + factors.shape(0), out.mutable_data());
  tb::normalize_to_mean(out.mutable_data(), weighted ? weights.data() : nullptr, factors.shape(0));
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "tempbalance native spectral core (CPU)";
  m.def("gram_eigvalsh", &gram_eigvalsh, py::arg("mats"), py::arg("top") = std::vector<int64_t>{},
        py::arg("num_threads") = 1, py::arg("solver") = "evd",
        "Ascending eigenvalues of the Gram of the smaller side of every matrix (pooled over slices).");
  m.def("hill_metrics", &hill_metrics, py::arg("eigs"), py::arg("xmin_pos") = 2.0, py::arg("xmin_rule") = "median",
        py::arg("filter_zeros") = false, py::arg("zero_tol") = 1e-5, py::arg("zero_rel") = 0.0,
        py::arg("zero_rtol") = 0.0, py::arg("min_eigs") = 50, py::arg("n_total") = py::list(),
        py::arg("num_threads") = 1,
        "Per-spectrum metrics, one row each: alpha, xmin, n_tail, ks_distance, spectral_norm, frobenius, "
        "stable_rank, alpha_hat, n_eigs, status. zero_tol, zero_rtol and n_total: one number or one per spectrum. "
        "Spectra are spread over num_threads workers.");
  m.def("hill_lr_packed", &hill_lr_packed, py::arg("eigs"), py::arg("offsets"), py::arg("unit_index"),
        py::arg("n_units"), py::arg("xmin_pos") = 2.0, py::arg("xmin_rule") = "median",
        py::arg("filter_zeros") = false, py::arg("zero_tol") = 1e-5, py::arg("zero_rel") = 0.0,
        py::arg("zero_rtol") = 0.0, py::arg("min_eigs") = 50, py::arg("mapping") = "sigmoid",
        py::arg("tau") = 10.0, py::arg("s_lo") = 2.0, py::arg("s_hi") = 1.0, py::arg("s1") = 0.5,
        py::arg("s2") = 1.5, py::arg("compat") = false,
        "The CUDA core's Hill/LR kernels on the CPU (same functions, same packed layout): spectrum j is "
        "eigs[offsets[j]:offsets[j+1]]. Returns (metrics (n, 10), mean alpha per unit, LR factor per unit).");
  m.def("unit_factors_packed", &unit_factors_packed, py::arg("metrics"), py::arg("unit_index"), py::arg("n_units"),
        py::arg("metric"), py::arg("previous"), py::arg("mapping") = "sigmoid", py::arg("tau") = 10.0,
        py::arg("s_lo") = 2.0, py::arg("s_hi") = 1.0, py::arg("s1") = 0.5, py::arg("s2") = 1.5,
        py::arg("compat") = false,
        "The CUDA core's unit_factors kernel on the CPU: (unit values, factors, whether the new factors were "
        "taken) of a pass's (n, 10) metrics table; units with a failed matrix keep `previous`.");
  m.def("unit_means", &unit_means, py::arg("values"), py::arg("unit_index"), py::arg("n_units"));
  m.def("lr_factors", &lr_factors, py::arg("values"), py::arg("mapping") = "sigmoid", py::arg("tau") = 10.0,
        py::arg("s_lo") = 2.0, py::arg("s_hi") = 1.0, py::arg("s1") = 0.5, py::arg("s2") = 1.5,
        py::arg("compat") = false);
  m.def("normalize_factors", &normalize_factors, py::arg("factors"), py::arg("weights") = py::array_t<double>(0),
        "Factors divided by their weighted mean (weights: matrices per factor; empty = one each): "
        "the reference code's tb_lr_normalize.");
  m.attr("HILL_COLUMNS") = py::make_tuple("alpha", "xmin", "n_tail", "ks_distance", "spectral_norm", "frobenius",
                                          "stable_rank", "alpha_hat", "n_eigs", "status");
  m.def("_arm_fault", &tb::fault::arm_named, py::arg("fault"), py::arg("skip") = 0,
      "Testing only: make the next (skip + 1)-th occurrence of `fault` fail ('solver_info': an eigensolver reports "
      "no convergence; 'evr_short_count': ?syevr finds one eigenvalue too few; 'thread_start': a worker thread "
      "cannot start; 'task_throw': a worker's task throws; 'none': disarm).");
#ifdef TB_HAVE_GUARD_PAGE
  m.def("_gram_eigvalsh_guarded", &gram_eigvalsh_guarded, py::arg("mats"), py::arg("top") = std::vector<int64_t>{},
        py::arg("num_threads") = 1, py::arg("solver") = "evd",
        "Testing only: gram_eigvalsh with each output followed by an inaccessible page, so that writing past the "
        "end of an output crashes the process instead of corrupting memory.");
#endif
  m.attr("cuda_built") = false;
  tb::bind_cuda_plan(m);  // CUDA host planning, testable without CUDA
}
