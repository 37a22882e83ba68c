// Host-side parsing of the string options both extension modules accept (`_core` and `_core_cuda`), and the one
// layout of a metrics row, so the CPU and CUDA bindings agree by construction. Throws std::invalid_argument
// (pybind11 turns it into ValueError).
#pragma once

#include <stdexcept>
#include <string>

#include "tb_math.h"

namespace tb {

inline int parse_xmin_rule(const std::string& name) {
  if (name == "median") return kMedian;
  if (name == "fit") return kFit;
  if (name == "peak") return kPeak;
  if (name == "peak_compat") return kPeakCompat;
  throw std::invalid_argument("xmin_rule must be 'median', 'fit', 'peak' or 'peak_compat', got '" + name + "'");
}

inline MappingParams mapping_params(const std::string& mapping, double tau, double s_lo, double s_hi, double s1,
                                    double s2, bool compat) {
  MappingParams p;
  if (mapping == "sigmoid") {
    p.mapping = kSigmoid;
  } else if (mapping == "linear") {
    p.mapping = kLinear;
  } else if (mapping == "rank") {
    p.mapping = kRank;
  } else {
    throw std::invalid_argument("mapping must be 'sigmoid', 'linear' or 'rank', got '" + mapping + "'");
  }
  p.tau = tau;
  p.s_lo = s_lo;
  p.s_hi = s_hi;
  p.s1 = s1;
  p.s2 = s2;
  p.compat = compat;
  return p;
}

inline HillParams hill_params(double xmin_pos, const std::string& xmin_rule, bool filter_zeros, double zero_tol,
                              double zero_rel, double zero_rtol, int64_t min_eigs) {
  if (!(xmin_pos > 1.0)) throw std::invalid_argument("xmin_pos must be > 1, got " + std::to_string(xmin_pos));
  HillParams p;
  p.xmin_pos = xmin_pos;
  p.xmin_rule = parse_xmin_rule(xmin_rule);
  p.filter_zeros = filter_zeros;
  p.zero_tol = zero_tol;
  p.zero_rel = zero_rel;
  p.zero_rtol = zero_rtol;
  p.min_eigs = min_eigs;
  return p;
}

// The metrics column a TempBalance `metric` reads (HILL_COLUMNS: alpha 0, spectral_norm 4, stable_rank 6,
// alpha_hat 7).
inline int metric_column(const std::string& metric) {
  if (metric == "alpha") return 0;
  if (metric == "spectral_norm") return 4;
  if (metric == "stable_rank") return 6;
  if (metric == "alpha_hat") return 7;
  throw std::invalid_argument("metric must be 'alpha', 'spectral_norm', 'stable_rank' or 'alpha_hat', got '" + metric +
                              "'");
}

}  // namespace tb
