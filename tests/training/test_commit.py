"""The commit stage as pure functions (tempbalance/training/commit.py) against its C++ twin, tb::packed_unit_factors
(csrc/unit_factors.h, ``_core.unit_factors_packed``; the CUDA core runs the same function in a kernel), and the
group values against the plain definition. Both sides must give the same bits: the scheduler commits on the host
what the GPU commits on the device."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tempbalance import _native
from tempbalance.analysis.hill import HILL_COLUMNS, STATUS_CODES, STATUS_NAMES
from tempbalance.analysis.report import LayerResult
from tempbalance.training import commit
from tempbalance.training.mapping import MappingOptions
from tempbalance.training.policies import MappedPolicy

core = _native.core
needs_core = pytest.mark.skipif(core is None or not hasattr(core, "unit_factors_packed"),
                                reason="the native core (with unit_factors_packed) is not built")
METRIC_COLUMN = {"alpha": 0, "spectral_norm": 4, "stable_rank": 6, "alpha_hat": 7}


def table_and_rows(rng, n):
    """A metrics table with every status that matters (ok, too few eigenvalues, flat tail, non-finite, empty),
    NaN values in not-ok rows and a few non-finite values in ok rows, and the same as report rows."""
    table = np.zeros((n, len(HILL_COLUMNS)))
    table[:, 0] = rng.uniform(1.5, 6.0, n)
    table[:, 4] = rng.uniform(1.0, 30.0, n)
    table[:, 6] = rng.uniform(5.0, 50.0, n)
    table[:, 7] = rng.uniform(0.5, 8.0, n)
    table[:, 9] = rng.choice([0, 0, 0, 0, 0, 1, 2, 4, 5], n)
    table[table[:, 9] != 0, 0] = np.nan
    table[rng.random(n) < 0.05, 6] = np.inf  # an ok row with a non-finite ablation metric
    rows = [LayerResult(f"m{j}", "u", "linear", (4, 4), 4, r[0], 1.0, 2, r[4], 1.0, r[6], r[7], 0.1,
                        STATUS_NAMES[int(r[9])], "") for j, r in enumerate(table)]
    return table, rows


@needs_core
@pytest.mark.parametrize("metric", list(METRIC_COLUMN))
@pytest.mark.parametrize("mapping", [MappingOptions(), MappingOptions(mapping="linear", s1=0.3, s2=1.9),
                                     MappingOptions(mapping="rank", s1=0.6, s2=1.4),
                                     MappingOptions(mapping="linear", compat=True), MappingOptions(tau=4, s_lo=0.5)])
def test_unit_factors_is_the_twin_of_packed_unit_factors(metric, mapping):
    rng = np.random.default_rng(7)
    for trial in range(20):
        n, n_units = int(rng.integers(1, 60)), int(rng.integers(1, 9))
        table, rows = table_and_rows(rng, n)
        units = rng.integers(0, n_units, n)
        previous = rng.uniform(0.5, 2.0, n_units)
        failed_units = np.zeros(n_units, dtype=bool)
        for u, r in zip(units, rows):
            failed_units[u] |= r.status in ("non_finite", "empty")
        got = commit.unit_factors(commit.metric_values(rows, metric), units, n_units, failed_units, previous,
                                  MappedPolicy(mapping, metric=metric, backend="native"))
        values, factors, taken = core.unit_factors_packed(table, units, n_units, metric, previous, mapping.mapping,
                                                          mapping.tau, mapping.s_lo, mapping.s_hi, mapping.s1,
                                                          mapping.s2, mapping.compat)
        assert got.taken == taken, trial
        np.testing.assert_array_equal(got.values, values)
        np.testing.assert_array_equal(got.factors, factors)


@needs_core
def test_both_keep_every_factor_when_one_comes_out_invalid():
    # TBLinearMap with s1 < 0 gives a negative factor: every unit keeps its previous one, on both sides.
    _, rows = table_and_rows(np.random.default_rng(0), 3)
    rows = [LayerResult(r.name, r.unit, r.kind, r.shape, 4, a, 1.0, 2, 1.0, 1.0, 1.0, 1.0, 0.1, "ok", "")
            for r, a in zip(rows, (2.0, 3.0, 4.0))]
    previous = np.array([1.1, 0.9, 1.3])
    policy = MappedPolicy(MappingOptions(mapping="linear", s1=-0.5), backend="native")
    got = commit.unit_factors(commit.metric_values(rows, "alpha"), np.arange(3), 3, np.zeros(3, bool), previous,
                              policy)
    table = np.zeros((3, len(HILL_COLUMNS)))
    table[:, 0] = [2.0, 3.0, 4.0]
    _, factors, taken = core.unit_factors_packed(table, np.arange(3), 3, "alpha", previous, "linear", 10.0, 2.0, 1.0,
                                                 -0.5, 1.5, False)
    assert not got.taken and not taken
    assert got.candidate[0] < 0  # what the mapping gave, for the error message
    np.testing.assert_array_equal(got.factors, previous)
    np.testing.assert_array_equal(factors, previous)


def test_unit_factors_against_the_definition():
    # No native core needed: the torch backend, every step written out by hand.
    values = np.array([2.0, 4.0, np.nan, 3.0, 5.0, 1.0])
    units = np.array([0, 0, 1, 1, 2, 3])
    failed = np.array([False, False, False, True])
    previous = np.array([1.0, 1.0, 1.0, 0.7])
    got = commit.unit_factors(values, units, 4, failed, previous, MappedPolicy(backend="torch"))
    means = np.array([3.0, 3.0, 5.0])  # unit 3 failed: left out of the mean of the others
    x = means - means.mean()
    s = np.where(x > 0, 1.0, 2.0)
    want = 10 ** (s * (1 / (1 + np.exp(-10 * x)) - 0.5))
    np.testing.assert_allclose(got.values[:3], means)
    assert math.isnan(got.values[3])
    np.testing.assert_allclose(got.factors, [*want, 0.7], rtol=1e-14)


def test_normalize_counts_each_unit_once_per_matrix():
    values = np.array([2.0, 2.0, 2.0, 6.0])
    units = np.array([0, 0, 0, 1])
    policy = MappedPolicy(MappingOptions(mapping="linear"), normalize=True, backend="torch")
    got = commit.unit_factors(values, units, 2, np.zeros(2, bool), np.ones(2), policy)
    # linear: 0.5 and 1.5; their mean over the 4 matrices is (3 * 0.5 + 1.5) / 4 = 0.75
    np.testing.assert_allclose(got.factors, [0.5 / 0.75, 1.5 / 0.75], rtol=1e-14)


def test_merge_rows_and_failures():
    _, rows = table_and_rows(np.random.default_rng(3), 6)
    fresh_rows = [LayerResult(r.name, r.unit, r.kind, r.shape, 4, 9.0, 1.0, 2, 1, 1, 1, 1, 0.1, "non_finite", "bad")
                  for r in rows[1:3]]
    merged, fresh = commit.merge_rows(rows, fresh_rows, [1, 2], 6)
    assert merged[1:3] == fresh_rows and merged[0] is rows[0] and merged[3:] == rows[3:] and fresh == {1, 2}
    with pytest.raises(RuntimeError, match="partial pass"):
        commit.merge_rows(None, fresh_rows, [1, 2], 6)
    units = ["a", "a", "b", "c", "c", "c"]
    merged[5] = LayerResult("m5", "c", "linear", (4, 4), 0, math.nan, math.nan, 0, math.nan, math.nan, math.nan,
                            math.nan, math.nan, "empty", "")
    failed, newly = commit.failures(merged, units, fresh)
    assert set(failed) == {"a", "b", "c"} and newly == {"a", "b"}  # c's failure is in a stale row
    assert failed["a"] == ["bad"] and failed["c"] == ["layer 'm5': empty"]
    assert STATUS_CODES["empty"] == 5


def test_group_values_is_base_times_the_factor_of_the_unit():
    values, applied = commit.group_values([1e-3, 2e-3, 3e-3, 4e-3], ["a", None, "b", "z"], {"a": 1.5, "b": 0.5})
    assert values == [1e-3 * 1.5, 2e-3, 3e-3 * 0.5, 4e-3] and applied == [1.5, 1.0, 0.5, 1.0]
