// From a pass's metrics table to the factor of every unit, as TempBalance commits them (SPEC §3), in one
// allocation-free function: the CUDA core runs it in a kernel so the factors of a pass on CUDA weights never visit
// the host, and `_core.unit_factors_packed` runs it on the CPU for tests. tempbalance/scheduler.py (`_commit`)
// computes the same from the report with the same tb_math.h functions, in the same order, so both give the same
// bits.
#pragma once

#include <cstdint>

#include "tb_math.h"

namespace tb {

// metrics: (n, kHillColumns) rows; metric_column: the column that drives the mapping (alpha, spectral_norm,
// stable_rank, alpha_hat). A row counts when its status is ok and its value finite. A unit with a failed matrix
// (status non_finite or empty: the pass could not analyse it) keeps its previous factor; if any factor comes out
// non-finite or <= 0, every unit keeps its previous factor (the host raises, warns and keeps them too).
// Scratch: values[n], sums[n_units], counts[n_units]. Out: unit_values[n_units] (NaN for failed units),
// factors[n_units]. Returns whether the new factors were taken.
TB_HD inline bool packed_unit_factors(const double* metrics, const int64_t* unit_index, int64_t n, int64_t n_units,
                                      int metric_column, const double* previous, const MappingParams& p,
                                      double* values, double* sums, int64_t* counts, double* unit_values,
                                      double* factors) {
  for (int64_t j = 0; j < n; ++j) {
    const double* row = metrics + j * kHillColumns;
    const double v = row[metric_column];
    values[j] = static_cast<int>(row[kHillColumns - 1]) == kOk && isfinite(v) ? v : NAN;
  }
  unit_means(values, unit_index, n, n_units, sums, counts, unit_values);
  for (int64_t u = 0; u < n_units; ++u) counts[u] = 0;  // now: whether the unit has a failed matrix
  for (int64_t j = 0; j < n; ++j) {
    const int status = static_cast<int>(metrics[j * kHillColumns + kHillColumns - 1]);
    const int64_t u = unit_index[j];
    if (u >= 0 && u < n_units && (status == kNonFinite || status == kEmpty)) counts[u] = 1;
  }
  for (int64_t u = 0; u < n_units; ++u)
    if (counts[u]) unit_values[u] = NAN;
  lr_factors(unit_values, n_units, p, factors);
  bool valid = true;
  for (int64_t u = 0; u < n_units; ++u) {
    if (counts[u]) factors[u] = previous[u];
    if (!(isfinite(factors[u]) && factors[u] > 0.0)) valid = false;
  }
  if (!valid)
    for (int64_t u = 0; u < n_units; ++u) factors[u] = previous[u];
  return valid;
}

}  // namespace tb
