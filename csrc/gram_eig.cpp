#include "gram_eig.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <complex>
#include <exception>
#include <limits>
#include <mutex>
#include <numeric>
#include <stdexcept>

#include "failpoints.h"
#include "lapack.h"
#include "parallel.h"

namespace tb {
namespace {

// Per-scalar-type bindings of the LAPACK calls; Real is the eigenvalue type.
template <class T>
struct Lapack;

template <>
struct Lapack<float> {
  using Real = float;
  static constexpr bool kComplex = false;
  static void gram(char trans, int n, int k, const float* a, int lda, float* c) {
    const float one = 1.f, zero = 0.f;
    TB_SYM(ssyrk_)("L", &trans, &n, &k, &one, a, &lda, &zero, c, &n, 1, 1);
  }
  static void evd(Solver s, int n, float* a, float* w, float* work, int lwork, Real*, int, int* iwork, int liwork,
                  int* info) {
    if (s == Solver::kTwoStage)
      TB_SYM(ssyevd_2stage_)("N", "L", &n, a, &n, w, work, &lwork, iwork, &liwork, info, 1, 1);
    else
      TB_SYM(ssyevd_)("N", "L", &n, a, &n, w, work, &lwork, iwork, &liwork, info, 1, 1);
  }
  static void evr(int n, int il, int iu, float* a, int* m, float* w, int* isuppz, float* work, int lwork, Real*,
                  int, int* iwork, int liwork, int* info) {
    const float zero = 0.f;
    int ldz = 1;
    TB_SYM(ssyevr_)("N", "I", "L", &n, a, &n, &zero, &zero, &il, &iu, &zero, m, w, nullptr, &ldz, isuppz, work,
                    &lwork, iwork, &liwork, info, 1, 1, 1);
  }
};

template <>
struct Lapack<double> {
  using Real = double;
  static constexpr bool kComplex = false;
  static void gram(char trans, int n, int k, const double* a, int lda, double* c) {
    const double one = 1.0, zero = 0.0;
    TB_SYM(dsyrk_)("L", &trans, &n, &k, &one, a, &lda, &zero, c, &n, 1, 1);
  }
  static void evd(Solver s, int n, double* a, double* w, double* work, int lwork, Real*, int, int* iwork,
                  int liwork, int* info) {
    if (s == Solver::kTwoStage)
      TB_SYM(dsyevd_2stage_)("N", "L", &n, a, &n, w, work, &lwork, iwork, &liwork, info, 1, 1);
    else
      TB_SYM(dsyevd_)("N", "L", &n, a, &n, w, work, &lwork, iwork, &liwork, info, 1, 1);
  }
  static void evr(int n, int il, int iu, double* a, int* m, double* w, int* isuppz, double* work, int lwork,
                  Real*, int, int* iwork, int liwork, int* info) {
    const double zero = 0.0;
    int ldz = 1;
    TB_SYM(dsyevr_)("N", "I", "L", &n, a, &n, &zero, &zero, &il, &iu, &zero, m, w, nullptr, &ldz, isuppz, work,
                    &lwork, iwork, &liwork, info, 1, 1, 1);
  }
};

template <>
struct Lapack<std::complex<float>> {
  using Real = float;
  using C = std::complex<float>;
  static constexpr bool kComplex = true;
  static void gram(char trans, int n, int k, const C* a, int lda, C* c) {
    const float one = 1.f, zero = 0.f;
    TB_SYM(cherk_)("L", &trans, &n, &k, &one, a, &lda, &zero, c, &n, 1, 1);
  }
  static void evd(Solver s, int n, C* a, float* w, C* work, int lwork, float* rwork, int lrwork, int* iwork,
                  int liwork, int* info) {
    if (s == Solver::kTwoStage)
      TB_SYM(cheevd_2stage_)("N", "L", &n, a, &n, w, work, &lwork, rwork, &lrwork, iwork, &liwork, info, 1, 1);
    else
      TB_SYM(cheevd_)("N", "L", &n, a, &n, w, work, &lwork, rwork, &lrwork, iwork, &liwork, info, 1, 1);
  }
  static void evr(int n, int il, int iu, C* a, int* m, float* w, int* isuppz, C* work, int lwork, float* rwork,
                  int lrwork, int* iwork, int liwork, int* info) {
    const float zero = 0.f;
    int ldz = 1;
    TB_SYM(cheevr_)("N", "I", "L", &n, a, &n, &zero, &zero, &il, &iu, &zero, m, w, nullptr, &ldz, isuppz, work,
                    &lwork, rwork, &lrwork, iwork, &liwork, info, 1, 1, 1);
  }
};

template <>
struct Lapack<std::complex<double>> {
  using Real = double;
  using C = std::complex<double>;
  static constexpr bool kComplex = true;
  static void gram(char trans, int n, int k, const C* a, int lda, C* c) {
    const double one = 1.0, zero = 0.0;
    TB_SYM(zherk_)("L", &trans, &n, &k, &one, a, &lda, &zero, c, &n, 1, 1);
  }
  static void evd(Solver s, int n, C* a, double* w, C* work, int lwork, double* rwork, int lrwork, int* iwork,
                  int liwork, int* info) {
    if (s == Solver::kTwoStage)
      TB_SYM(zheevd_2stage_)("N", "L", &n, a, &n, w, work, &lwork, rwork, &lrwork, iwork, &liwork, info, 1, 1);
    else
      TB_SYM(zheevd_)("N", "L", &n, a, &n, w, work, &lwork, rwork, &lrwork, iwork, &liwork, info, 1, 1);
  }
  static void evr(int n, int il, int iu, C* a, int* m, double* w, int* isuppz, C* work, int lwork, double* rwork,
                  int lrwork, int* iwork, int liwork, int* info) {
    const double zero = 0.0;
    int ldz = 1;
    TB_SYM(zheevr_)("N", "I", "L", &n, a, &n, &zero, &zero, &il, &iu, &zero, m, w, nullptr, &ldz, isuppz, work,
                    &lwork, rwork, &lrwork, iwork, &liwork, info, 1, 1, 1);
  }
};

// Buffers a worker reuses across matrices (grown, never shrunk, within one call).
template <class T>
struct Workspace {
  using Real = typename Lapack<T>::Real;
  std::vector<T> gram, work;
  std::vector<Real> w, rwork;
  std::vector<int> iwork, isuppz;
};

template <class T>
bool lower_triangle_finite(const T* g, int n) {
  for (int j = 0; j < n; ++j)
    for (int i = j; i < n; ++i) {
      const T v = g[static_cast<int64_t>(j) * n + i];
      if constexpr (Lapack<T>::kComplex) {
        if (!std::isfinite(v.real()) || !std::isfinite(v.imag())) return false;
      } else {
        if (!std::isfinite(v)) return false;
      }
    }
  return true;
}

template <class T>
int real_size(T v) {
  if constexpr (Lapack<T>::kComplex)
    return static_cast<int>(v.real());
  else
    return static_cast<int>(v);
}

template <class T>
void eigvals_of_gram(Workspace<T>& ws, int n, int64_t top, Solver solver, typename Lapack<T>::Real* out) {
  using L = Lapack<T>;
  using Real = typename L::Real;
  int info = 0;
  T work_query{};
  Real rwork_query{};
  int iwork_query = 0;
  if (top > 0) {
    const int il = n - static_cast<int>(top) + 1, iu = n;
    int found = 0;
    // W is LAPACK's N-sized array, not `out` (top slots): ?stebz, inside ?syevr, first stores every eigenvalue of
    // its bracketing interval, all N when they are equal (orthonormal rows), and only then drops the extra ones.
    ws.w.resize(n);
    ws.isuppz.resize(2 * static_cast<std::size_t>(n));
    L::evr(n, il, iu, ws.gram.data(), &found, ws.w.data(), ws.isuppz.data(), &work_query, -1, &rwork_query, -1,
           &iwork_query, -1, &info);
    ws.work.resize(std::max(1, real_size(work_query)));
    ws.rwork.resize(std::max(1, static_cast<int>(rwork_query)));
    ws.iwork.resize(std::max(1, iwork_query));
    L::evr(n, il, iu, ws.gram.data(), &found, ws.w.data(), ws.isuppz.data(), ws.work.data(),
           static_cast<int>(ws.work.size()), ws.rwork.data(), static_cast<int>(ws.rwork.size()), ws.iwork.data(),
           static_cast<int>(ws.iwork.size()), &info);
    if (fault::hit(fault::kEvrShortCount)) found = static_cast<int>(top) - 1;
    // ?syevr may find another number of eigenvalues in the index range than asked: a failed spectrum
    if (info == 0 && found != top) info = -1;
    if (info == 0) std::copy(ws.w.begin(), ws.w.begin() + top, out);
  } else {
    L::evd(solver, n, ws.gram.data(), out, &work_query, -1, &rwork_query, -1, &iwork_query, -1, &info);
    ws.work.resize(std::max(1, real_size(work_query)));
    ws.rwork.resize(std::max(1, static_cast<int>(rwork_query)));
    ws.iwork.resize(std::max(1, iwork_query));
    L::evd(solver, n, ws.gram.data(), out, ws.work.data(), static_cast<int>(ws.work.size()), ws.rwork.data(),
           static_cast<int>(ws.rwork.size()), ws.iwork.data(), static_cast<int>(ws.iwork.size()), &info);
  }
  if (fault::hit(fault::kSolverInfo)) info = 1;
  if (info != 0) {
    // info > 0: no convergence; the spectrum is reported as failed rather than half-computed.
    const int64_t count = top > 0 ? top : n;
    std::fill(out, out + count, std::numeric_limits<Real>::quiet_NaN());
  }
}

template <class T>
void solve_matrix(const MatrixInput& in, typename Lapack<T>::Real* out, Workspace<T>& ws, Solver solver) {
  using Real = typename Lapack<T>::Real;
  const int m = static_cast<int>(in.rows), n = static_cast<int>(in.cols);
  const int k = std::min(m, n);
  // Row-major A (m x n) is column-major X = A^T (n x m, ld n). A A^H shares its eigenvalues with X^H X
  // (its conjugate) and A^H A with X X^H, so the Gram of the smaller side is one SYRK/HERK on X.
  const char trans = m <= n ? (Lapack<T>::kComplex ? 'C' : 'T') : 'N';
  const int depth = std::max(m, n);
  ws.gram.resize(static_cast<std::size_t>(k) * k);
  const T* base = static_cast<const T*>(in.data);
  const int64_t count = eig_count(in);
  for (int64_t s = 0; s < in.slices; ++s) {
    const T* a = base + s * static_cast<int64_t>(m) * n;
    Lapack<T>::gram(trans, k, depth, a, n, ws.gram.data());
    Real* dst = out + s * k;
    if (!lower_triangle_finite(ws.gram.data(), k)) {
      std::fill(out, out + count, std::numeric_limits<Real>::quiet_NaN());
      return;
    }
    eigvals_of_gram(ws, k, in.top, solver, dst);
  }
  // A slice whose solve failed is NaN: the pooled spectrum is then all NaN (and std::sort over NaN is undefined).
  if (std::any_of(out, out + count, [](Real v) { return std::isnan(v); })) {
    std::fill(out, out + count, std::numeric_limits<Real>::quiet_NaN());
    return;
  }
  if (in.slices > 1) std::sort(out, out + count);
  for (int64_t j = 0; j < count; ++j)
    if (out[j] < Real(0)) out[j] = Real(0);
}

// One worker's view of all four scalar types.
struct AnyWorkspace {
  Workspace<float> f32;
  Workspace<double> f64;
  Workspace<std::complex<float>> c64;
  Workspace<std::complex<double>> c128;
};

void solve_any(const MatrixInput& in, void* out, AnyWorkspace& ws, Solver solver) {
  switch (in.scalar) {
    case Scalar::kF32: solve_matrix<float>(in, static_cast<float*>(out), ws.f32, solver); break;
    case Scalar::kF64: solve_matrix<double>(in, static_cast<double*>(out), ws.f64, solver); break;
    case Scalar::kC64: solve_matrix<std::complex<float>>(in, static_cast<float*>(out), ws.c64, solver); break;
    case Scalar::kC128: solve_matrix<std::complex<double>>(in, static_cast<double*>(out), ws.c128, solver); break;
  }
}

double flop_estimate(const MatrixInput& in) {
  const double k = static_cast<double>(std::min(in.rows, in.cols));
  const double d = static_cast<double>(std::max(in.rows, in.cols));
  return static_cast<double>(in.slices) * (k * k * d + 4.0 / 3.0 * k * k * k);
}

// Sets the BLAS thread count for one call and restores it afterwards. The count is process-wide in OpenBLAS, but
// this copy of OpenBLAS serves only this core (numpy and torch carry their own), so only concurrent calls into the
// core share it: a mutex serialises them.
std::mutex blas_threads_mutex;

class BlasThreadsScope {
 public:
  explicit BlasThreadsScope(int threads)
      : lock_(blas_threads_mutex), previous_(TB_SYM(openblas_get_num_threads)()) {
    TB_SYM(openblas_set_num_threads)(threads);
  }
  ~BlasThreadsScope() { TB_SYM(openblas_set_num_threads)(previous_); }
  BlasThreadsScope(const BlasThreadsScope&) = delete;
  BlasThreadsScope& operator=(const BlasThreadsScope&) = delete;

 private:
  std::lock_guard<std::mutex> lock_;
  int previous_;
};

}  // namespace

int64_t eig_count(const MatrixInput& in) {
  return in.top > 0 ? in.top : in.slices * std::min(in.rows, in.cols);
}

bool single_precision(const MatrixInput& in) { return in.scalar == Scalar::kF32 || in.scalar == Scalar::kC64; }

void validate(const MatrixInput& in, std::size_t index) {
  const std::string where = "matrix " + std::to_string(index) + ": ";
  if (in.slices < 1 || in.rows < 1 || in.cols < 1)
    throw std::invalid_argument(where + "empty matrix (" + std::to_string(in.slices) + " x " +
                                std::to_string(in.rows) + " x " + std::to_string(in.cols) + ")");
  const int64_t k = std::min(in.rows, in.cols);
  if (std::max(in.rows, in.cols) > std::numeric_limits<int>::max() || k * k > std::numeric_limits<int>::max())
    throw std::invalid_argument(where + "too large for 32-bit LAPACK indices");
  if (in.top < 0 || in.top > k)
    throw std::invalid_argument(where + "top=" + std::to_string(in.top) + " must be in [0, " + std::to_string(k) +
                                "]");
  if (in.top > 0 && in.slices != 1)
    throw std::invalid_argument(where + "top > 0 needs a single matrix: the top of a pooled spectrum is not the "
                                        "pool of the slices' tops");
}

void gram_eigvalsh(const std::vector<MatrixInput>& inputs, const std::vector<void*>& outputs, int num_threads,
                   Solver solver) {
  if (inputs.size() != outputs.size()) throw std::invalid_argument("inputs and outputs differ in length");
  for (std::size_t j = 0; j < inputs.size(); ++j) validate(inputs[j], j);
  if (inputs.empty()) return;

  std::vector<std::size_t> order(inputs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return flop_estimate(inputs[a]) > flop_estimate(inputs[b]); });

  const int threads = std::max(1, num_threads);
  const int workers = worker_count(inputs.size(), threads);
  // Fewer matrices than threads: the spare threads go to BLAS inside the one worker per matrix.
  const int blas_threads = std::max(1, threads / workers);

  std::vector<std::exception_ptr> errors(inputs.size());
  std::vector<AnyWorkspace> spaces(workers);  // one per worker, reused across its matrices
  BlasThreadsScope scope(blas_threads);
  run_tasks(order, workers, [&](std::size_t worker, std::size_t j) {
    try {
      solve_any(inputs[j], outputs[j], spaces[worker], solver);
    } catch (...) {
      errors[j] = std::current_exception();
    }
  });
  for (std::size_t j = 0; j < errors.size(); ++j) {
    if (!errors[j]) continue;
    try {
      std::rethrow_exception(errors[j]);
    } catch (const std::exception& e) {
      throw std::runtime_error("matrix " + std::to_string(j) + ": " + e.what());
    }
  }
}

}  // namespace tb
