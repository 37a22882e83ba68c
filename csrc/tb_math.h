// The math of TempBalance, written once: the Hill estimator (PL_Alpha_Hill) with its xmin rules, the other
// per-layer metrics, per-unit means and the learning-rate mappings (SPEC §2-§3).
// Header-only and free of allocation so the CPU core and the CUDA kernels compile the same functions
// (TB_HD = __host__ __device__ under nvcc). Eigenvalues are always handled in double here: the cost is in the
// eigensolver, not in these O(N) loops, and double keeps float32 and float64 spectra on one code path.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TB_HD __host__ __device__
#else
#define TB_HD
#endif

namespace tb {

// Status codes of a spectrum's fit; mirrored by tempbalance/hill.py (STATUS_NAMES).
enum Status : int {
  kOk = 0,
  kTooFewEigs = 1,       // fewer than min_eigs eigenvalues: reported, not tuned
  kFlatTail = 2,         // the tail is flat: it spans no more than the analysis round-off (see flat_tail)
  kXminNotPositive = 3,  // xmin is zero (or numerically zero): rank-deficient matrix
  kNonFinite = 4,        // NaN/Inf eigenvalues (non-finite weights)
  kEmpty = 5,            // no eigenvalues at all
  kTopTooShort = 6,      // only the top-k eigenvalues were computed and xmin lies below them
};

// How xmin (the start of the power-law tail) is chosen.
enum XminRule : int {
  kMedian = 0,      // i = floor(N / xmin_pos): the default of the papers
  kFit = 1,         // scan every candidate, keep the smallest KS distance
  kPeak = 2,        // candidates near the peak of a histogram of log10(lambda), correct bounds
  kPeakCompat = 3,  // the reference code's bounds (log10 lower bound compared against linear eigenvalues)
};

struct HillParams {
  double xmin_pos = 2.0;
  int xmin_rule = kMedian;
  bool filter_zeros = false;
  double zero_tol = 1e-5;    // with filter_zeros: drop lambda <= zero_tol (absolute) ...
  double zero_rel = 0.0;     // ... or lambda <= zero_rel * lambda_max, whichever is larger
  double zero_rtol = 0.0;    // xmin <= zero_rtol * lambda_max counts as not positive (round-off of a Gram)
  int64_t min_eigs = 50;
  int64_t n_total = 0;       // > 0: `eigs` holds only the top of a spectrum of n_total eigenvalues
};

struct HillResult {
  double alpha, xmin, n_tail, ks_distance, spectral_norm, frobenius, stable_rank, alpha_hat, n_eigs;
  int status;
};
constexpr int kHillColumns = 10;  // the 9 doubles above + status, in this order

// Options that may differ between the spectra of one call; nullptr: the HillParams value holds for every spectrum.
// (The numerical-zero guard zero_rtol depends on each matrix's Gram size, so one model has many values.)
struct HillPerSpectrum {
  const double* zero_tol = nullptr;
  const double* zero_rtol = nullptr;
  const int64_t* n_total = nullptr;
};

// The parameters of spectrum j: `p` with the per-spectrum values of `per` filled in.
TB_HD inline HillParams params_for(HillParams p, const HillPerSpectrum& per, int64_t j) {
  if (per.zero_tol) p.zero_tol = per.zero_tol[j];
  if (per.zero_rtol) p.zero_rtol = per.zero_rtol[j];
  if (per.n_total) p.n_total = per.n_total[j];
  return p;
}

// A result as one row of kHillColumns doubles (the HILL_COLUMNS order; status as a double).
TB_HD inline void write_row(const HillResult& r, double* row) {
  const double vals[kHillColumns] = {r.alpha,     r.xmin,        r.n_tail,    r.ks_distance, r.spectral_norm,
                                     r.frobenius, r.stable_rank, r.alpha_hat, r.n_eigs,      double(r.status)};
  for (int c = 0; c < kHillColumns; ++c) row[c] = vals[c];
}

// A tail from xmin to lam_max that spans no more than the round-off of the analysis, rtol * lam_max (rtol =
// zero_rtol, d * eps for a d-square Gram), is flat: the equal singular values of an orthogonal matrix, whose fitted
// "alpha" would be round-off (~1e6). With rtol = 0 only an exactly flat tail is.
TB_HD inline bool flat_tail(double xmin, double lam_max, double rtol) { return !(lam_max - xmin > rtol * lam_max); }

// One term of the Kolmogorov-Smirnov distance of the tail starting at xmin = lam[i] (n = N - i values) from the
// power law with exponent alpha: |F(j) - (j - i) / n| with the fitted CDF F(j) = 1 - (lam_j / xmin)^(1 - alpha).
TB_HD inline double ks_term(const double* lam, int64_t i, int64_t j, double n, double alpha) {
  const double cdf_fit = 1.0 - pow(lam[j] / lam[i], 1.0 - alpha);
  return fabs(cdf_fit - static_cast<double>(j - i) / n);
}

// Kolmogorov-Smirnov distance between the empirical tail lam[0..n) (ascending, lam[0] = xmin) and the fitted
// power law: D = max_t |1 - (lam_t / xmin)^(1 - alpha) - t / n|.
TB_HD inline double ks_distance(const double* lam, int64_t n, double alpha) {
  double d = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    const double diff = ks_term(lam, 0, t, static_cast<double>(n), alpha);
    d = diff > d ? diff : d;
  }
  return d;
}

// The KS distance D of the tail lam[i..N) (alpha given) without scanning every term, when it can be avoided:
// a branch and bound over index blocks. In a block [a, b] both the fitted CDF F(j) and the empirical (j - i) / n
// increase with j, so every term is at most max(F(b) - (a - i) / n, (b - i) / n - F(a)); a block whose bound is
// below the largest term found so far cannot hold a larger one (8 eps of slack covers a pow() that is not exactly
// monotone: the result is the scan's maximum, bit for bit). Returns D exactly, or, as soon as a term exceeds
// `limit`, that term (the caller only needs to know D > limit). `*hint` (an index in [i, N), or -1) is tried first
// and receives the index of the largest term: neighbouring candidates have their maxima close together.
TB_HD inline double ks_distance_bounded(const double* lam, int64_t i, int64_t N, double alpha, double limit,
                                        int64_t* hint) {
  constexpr int64_t kLeaf = 16;           // blocks this small are scanned
  constexpr double kSlack = 8.0 * 2.220446049250313e-16;
  const double n = static_cast<double>(N - i);
  const double e = 1.0 - alpha;
  double best = 0.0;  // the term at j = i is exactly 0
  int64_t arg = i;
  if (*hint >= i && *hint < N) {
    best = ks_term(lam, i, *hint, n, alpha);
    arg = *hint;
  }
  if (best > limit) {
    *hint = arg;
    return best;
  }
  int64_t stack_a[128], stack_b[128];  // depth-first: at most one pending sibling per level of a binary split
  int top = 0;
  stack_a[0] = i;
  stack_b[0] = N - 1;
  top = 1;
  while (top > 0) {
    --top;
    const int64_t a = stack_a[top], b = stack_b[top];
    const double fa = 1.0 - pow(lam[a] / lam[i], e), fb = 1.0 - pow(lam[b] / lam[i], e);
    const double above = fb - static_cast<double>(a - i) / n, below = static_cast<double>(b - i) / n - fa;
    if ((above > below ? above : below) + kSlack <= best) continue;
    if (b - a < kLeaf) {
      for (int64_t j = a; j <= b; ++j) {
        const double d = ks_term(lam, i, j, n, alpha);
        if (d > best) {
          best = d;
          arg = j;
        }
      }
      if (best > limit) break;
      continue;
    }
    const int64_t mid = a + (b - a) / 2;
    // visit the upper half first: for a power law fitted to its own tail the largest deviations sit high
    stack_a[top] = a;
    stack_b[top] = mid;
    ++top;
    stack_a[top] = mid + 1;
    stack_b[top] = b;
    ++top;
  }
  *hint = arg;
  return best;
}

// Neumaier's compensated sum: the rounding error of every addition is carried, so a long sum keeps its digits.
struct CompensatedSum {
  double sum = 0.0, carry = 0.0;
  TB_HD void add(double x) {
    const double t = sum + x;
    carry += fabs(sum) >= fabs(x) ? (sum - t) + x : (x - t) + sum;
    sum = t;
  }
  TB_HD double value() const { return sum + carry; }
};

// Scan candidates xmin = lam[i] for i in [lo, hi] (hi < N - 1), keep the smallest KS distance; ties go to the
// smallest i, as argmin does in the reference code. The same choice as computing every candidate's alpha and D in
// full (O(N^2)), in O(N log N) typical time: alpha of every candidate comes from running sums of
// ln(lam_j / lam_max) (shifted so a tail of large but close eigenvalues keeps its digits; compensated summation),
// and D by ks_distance_bounded, which stops as soon as a candidate is certain to lose. Returns the chosen index,
// or -1 when no candidate fits.
TB_HD inline int64_t best_fit_index(const double* lam, int64_t N, int64_t lo, int64_t hi, double* alpha_out,
                                    double* d_out) {
  const double top = lam[N - 1];
  CompensatedSum suffix;  // sum of ln(lam_j / top) over j >= i
  for (int64_t j = N - 1; j > hi; --j) suffix.add(log(lam[j] / top));
  int64_t best = -1, hint = -1;
  double best_d = 0.0, best_alpha = 0.0;
  for (int64_t i = hi; i >= lo; --i) {
    const double ell = log(lam[i] / top);
    suffix.add(ell);
    // A flat tail (every value equal to xmin) has a zero denominator that round-off may leave positive.
    if (!(lam[i] > 0.0) || !(top > lam[i])) continue;
    const double n = static_cast<double>(N - i);
    const double denom = suffix.value() - n * ell;  // sum_{j >= i} ln(lam_j / lam_i)
    if (!(denom > 0.0)) continue;
    const double alpha = 1.0 + n / denom;
    const double d = ks_distance_bounded(lam, i, N, alpha, best < 0 ? INFINITY : best_d, &hint);
    if (best < 0 || d <= best_d) {
      best = i;
      best_d = d;
      best_alpha = alpha;
    }
  }
  *alpha_out = best_alpha;
  *d_out = best_d;
  return best;
}

// The peak of a 100-bin histogram of log10(lambda) over the positive eigenvalues: returns 10^(left edge of the
// fullest bin), as the reference code does.
TB_HD inline double histogram_peak(const double* lam, int64_t N) {
  constexpr int kBins = 100;
  int64_t first = 0;
  while (first < N && !(lam[first] > 0.0)) ++first;
  if (first >= N) return 0.0;
  const double lo = log10(lam[first]), hi = log10(lam[N - 1]);
  const double width = (hi - lo) / kBins;
  if (!(width > 0.0)) return lam[first];
  int64_t counts[kBins] = {0};
  for (int64_t j = first; j < N; ++j) {
    int b = static_cast<int>((log10(lam[j]) - lo) / width);
    b = b < 0 ? 0 : (b >= kBins ? kBins - 1 : b);
    ++counts[b];
  }
  int peak = 0;
  for (int b = 1; b < kBins; ++b)
    if (counts[b] > counts[peak]) peak = b;
  return pow(10.0, lo + peak * width);
}

// All per-layer metrics of one ascending spectrum. Never divides by zero, never returns a NaN alpha with
// status kOk; a failing spectrum gets alpha = NaN and a status saying why.
TB_HD inline HillResult hill_metrics(const double* eigs, int64_t len, const HillParams& p) {
  const double nan = NAN;
  HillResult r = {nan, nan, 0.0, nan, nan, nan, nan, nan, 0.0, kOk};
  if (len <= 0) {
    r.status = kEmpty;
    return r;
  }
  for (int64_t j = 0; j < len; ++j) {
    if (!isfinite(eigs[j])) {
      r.status = kNonFinite;
      r.n_eigs = static_cast<double>(len);
      return r;
    }
  }
  const double lam_max = eigs[len - 1];
  int64_t start = 0;  // the zero filter drops a prefix: the spectrum is ascending
  if (p.filter_zeros) {
    const double rel = p.zero_rel * lam_max;
    const double cut = p.zero_tol > rel ? p.zero_tol : rel;
    while (start < len && eigs[start] <= cut) ++start;
  }
  const double* lam = eigs + start;
  const int64_t n_have = len - start;
  // With only the top of a spectrum, N is the full count; the filter is then not applicable to the missing part.
  const int64_t N = (p.n_total > 0 ? p.n_total - start : n_have);
  const int64_t offset = N - n_have;  // global index of lam[0]
  r.n_eigs = static_cast<double>(N);
  if (n_have <= 0) {
    r.status = kEmpty;
    return r;
  }
  double frob = 0.0;
  for (int64_t j = 0; j < n_have; ++j) frob += lam[j];
  r.spectral_norm = lam_max;
  r.frobenius = frob;
  r.stable_rank = lam_max > 0.0 ? frob / lam_max : nan;
  if (N < p.min_eigs || N < 2) {
    r.status = kTooFewEigs;
    return r;
  }

  int64_t i = static_cast<int64_t>(floor(static_cast<double>(N) / p.xmin_pos));
  if (i > N - 1) i = N - 1;
  double alpha = nan, ks = nan;
  if (p.xmin_rule == kFit || p.xmin_rule == kPeak || p.xmin_rule == kPeakCompat) {
    if (offset > 0) {
      r.status = kTopTooShort;
      return r;
    }
    int64_t lo = 0, hi = N - 2;
    if (p.xmin_rule != kFit) {
      const double peak = histogram_peak(lam, N);
      const double lower = p.xmin_rule == kPeakCompat ? log10(0.95 * peak) : 0.95 * peak;
      const double upper = 1.5 * peak;
      while (lo <= hi && lam[lo] < lower) ++lo;
      int64_t top = lo - 1;
      while (top + 1 <= N - 2 && lam[top + 1] <= upper) ++top;
      hi = top;
    }
    while (hi >= lo && flat_tail(lam[hi], lam[N - 1], p.zero_rtol)) --hi;  // flat candidate tails: no fit
    const int64_t best = lo <= hi ? best_fit_index(lam, N, lo, hi, &alpha, &ks) : -1;
    if (best >= 0) {
      i = best;
    } else {
      alpha = nan;  // no candidate in range: fall back to the median rule below
    }
  }
  const int64_t local = i - offset;
  if (local < 0) {
    r.status = kTopTooShort;
    return r;
  }
  const double xmin = lam[local];
  const int64_t n = N - i;
  r.xmin = xmin;
  r.n_tail = static_cast<double>(n);
  if (!(xmin > 0.0) || xmin <= p.zero_rtol * lam_max) {
    r.status = kXminNotPositive;
    return r;
  }
  if (isnan(alpha)) {
    if (flat_tail(xmin, lam_max, p.zero_rtol)) {
      r.status = kFlatTail;
      return r;
    }
    double denom = 0.0;
    for (int64_t j = local; j < n_have; ++j) denom += log(lam[j] / xmin);
    if (!(denom > 0.0)) {
      r.status = kFlatTail;
      return r;
    }
    alpha = 1.0 + static_cast<double>(n) / denom;
    ks = ks_distance(lam + local, n, alpha);
  }
  r.alpha = alpha;
  r.ks_distance = ks;
  r.alpha_hat = alpha * log10(lam_max);
  return r;
}

// Mean of the finite values per unit (NaN where a unit has none). unit_index[j] < 0: value belongs to no unit.
TB_HD inline void unit_means(const double* values, const int64_t* unit_index, int64_t n, int64_t n_units,
                             double* sums, int64_t* counts, double* out) {
  for (int64_t u = 0; u < n_units; ++u) {
    sums[u] = 0.0;
    counts[u] = 0;
  }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t u = unit_index[j];
    if (u < 0 || u >= n_units || !isfinite(values[j])) continue;
    sums[u] += values[j];
    ++counts[u];
  }
  for (int64_t u = 0; u < n_units; ++u) out[u] = counts[u] > 0 ? sums[u] / counts[u] : NAN;
}

enum Mapping : int { kSigmoid = 0, kLinear = 1, kRank = 2 };

struct MappingParams {
  int mapping = kSigmoid;
  double tau = 10.0, s_lo = 2.0, s_hi = 1.0;  // TBSigmoid
  double s1 = 0.5, s2 = 1.5;                  // TBLinearMap and the rank mapping
  bool compat = false;
};

// TBSigmoid: x = value - mean; phi = s_hi (x > 0) or s_lo (x <= 0) times (sigmoid(tau x) - 1/2); factor 10^phi.
TB_HD inline double sigmoid_factor(double x, const MappingParams& p) {
  const double s = x > 0.0 ? p.s_hi : p.s_lo;
  const double phi = s * (1.0 / (1.0 + exp(-p.tau * x)) - 0.5);
  return pow(10.0, phi);
}

// TBLinearMap: s1 at the smallest value, s2 at the largest. A flat set maps to 1 (the reference code gives s2).
TB_HD inline double linear_factor(double v, double vmin, double vmax, const MappingParams& p) {
  if (!(vmax > vmin)) return p.compat ? p.s2 : 1.0;
  return p.s1 + (p.s2 - p.s1) * (v - vmin) / (vmax - vmin);
}

// Rank mapping (the reference code's "rank" / "tb_step"): among the `count` finite values, the one of rank k
// (k = 0 for the smallest) gets s1 + (s2 - s1) k / count, so the largest gets less than s2. Equal values are
// ranked in unit order (a stable sort). O(n) per unit, no allocation, so the CUDA kernel runs it too.
TB_HD inline double rank_factor(const double* values, int64_t n, int64_t j, int64_t count, const MappingParams& p) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; ++i)
    if (isfinite(values[i]) && (values[i] < values[j] || (values[i] == values[j] && i < j))) ++k;
  return p.s1 + (p.s2 - p.s1) * static_cast<double>(k) / static_cast<double>(count);
}

// Factors for every unit; NaN values are untuned units (factor 1) and do not enter the mean, min, max or rank.
TB_HD inline void lr_factors(const double* values, int64_t n, const MappingParams& p, double* out) {
  double sum = 0.0, vmin = INFINITY, vmax = -INFINITY;
  int64_t count = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (!isfinite(values[j])) continue;
    sum += values[j];
    ++count;
    vmin = values[j] < vmin ? values[j] : vmin;
    vmax = values[j] > vmax ? values[j] : vmax;
  }
  const double mean = count > 0 ? sum / count : 0.0;
  for (int64_t j = 0; j < n; ++j) {
    if (!isfinite(values[j])) {
      out[j] = 1.0;
    } else if (p.mapping == kLinear) {
      out[j] = linear_factor(values[j], vmin, vmax, p);
    } else if (p.mapping == kRank) {
      out[j] = rank_factor(values, n, j, count, p);
    } else {
      out[j] = sigmoid_factor(values[j] - mean, p);
    }
  }
}

// The reference code's tb_lr_normalize: every factor divided by the weighted mean of all factors (weights[j]: how
// many matrices factor j stands for; nullptr = one each), so the mean learning rate over the matrices is the base.
// A non-positive or non-finite total weight or mean leaves the factors as they are.
TB_HD inline void normalize_to_mean(double* factors, const double* weights, int64_t n) {
  double sum = 0.0, total = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double w = weights ? weights[j] : 1.0;
    sum += w * factors[j];
    total += w;
  }
  if (!(total > 0.0)) return;
  const double mean = sum / total;
  if (!(mean > 0.0) || !isfinite(mean)) return;
  for (int64_t j = 0; j < n; ++j) factors[j] /= mean;
}

// ---- The packed layout of a whole model's spectra: what the CUDA kernels run, and their CPU twin in `_core` ----
// Spectrum j is eigs[offsets[j] .. offsets[j+1]) (float64, ascending); metrics is (n, kHillColumns) row-major.

// Metrics row of spectrum j (one CUDA thread each; a loop on the CPU).
TB_HD inline void packed_hill_row(const double* eigs, const int64_t* offsets, int64_t j, const HillParams& p,
                                  const HillPerSpectrum& per, double* metrics) {
  write_row(hill_metrics(eigs + offsets[j], offsets[j + 1] - offsets[j], params_for(p, per, j)),
            metrics + j * kHillColumns);
}

// From the metrics rows to the mean alpha per unit and the LR factor per unit. Scratch: alpha[n], sums[n_units],
// counts[n_units]. unit_index[j] < 0: spectrum j belongs to no unit.
TB_HD inline void packed_unit_lr(const double* metrics, const int64_t* unit_index, int64_t n, int64_t n_units,
                                 const MappingParams& p, double* alpha, double* sums, int64_t* counts,
                                 double* unit_alpha, double* factors) {
  for (int64_t j = 0; j < n; ++j) alpha[j] = metrics[j * kHillColumns];
  unit_means(alpha, unit_index, n, n_units, sums, counts, unit_alpha);
  lr_factors(unit_alpha, n_units, p, factors);
}

}  // namespace tb
