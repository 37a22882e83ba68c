"""The goodness-of-fit xmin rule (SPEC §2) against the plain O(N^2) definition.

The native core scans the candidates with running sums and a pruned KS maximum (csrc/tb_math.h,
``best_fit_index``); the torch/numpy reference vectorises every term. Both must pick the same xmin as computing
every candidate's alpha and KS distance in full, in float64, straight from the definition below, with alpha and D
equal to round-off: on realistic spectra, ties among the eigenvalues, near-flat spectra, and through every entry
point that runs the rule (``hill_metrics``, the CUDA kernels' CPU twin ``hill_lr_packed``, the peak rules' ranges).
"""
from __future__ import annotations

import numpy as np
import pytest

from tempbalance import _native
from tempbalance.analysis import hill

core = _native.core
needs_core = pytest.mark.skipif(core is None, reason="native core not built")


def plain_fit(lam: np.ndarray, lo: int = 0, hi: int | None = None) -> tuple[int, float, float] | None:
    """(index, alpha, D) with the smallest D over candidates lo..hi (ties: smallest index), every sum in full."""
    N = lam.size
    hi = N - 2 if hi is None else hi
    best = None
    for i in range(lo, hi + 1):
        if not (lam[i] > 0 and lam[-1] > lam[i]):
            continue
        n = N - i
        denom = float(np.sum(np.log(lam[i:] / lam[i])))
        if not denom > 0:
            continue
        alpha = 1.0 + n / denom
        d = float(np.max(np.abs(1.0 - (lam[i:] / lam[i]) ** (1.0 - alpha) - np.arange(n) / n)))
        if best is None or d < best[2]:
            best = (i, alpha, d)
    return best


def mp(rng, m, n, heavy=0.3):
    a = rng.standard_normal((m, n)) + heavy * rng.standard_t(2.5, size=(m, n))
    return np.sort(np.linalg.svd(a, compute_uv=False) ** 2)


def spectra(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "marchenko_pastur": mp(rng, int(rng.integers(80, 300)), 400, heavy=0.0),
        "heavy_tailed": mp(rng, int(rng.integers(80, 300)), 300),
        "pareto": np.sort(rng.pareto(rng.uniform(1.2, 4.0), int(rng.integers(60, 900))) + 1.0),
        "lognormal": np.sort(rng.lognormal(0.0, 2.0, 500)),
        # ties: many equal eigenvalues, so candidates share xmin and the KS terms repeat
        "ties": np.sort(np.round((rng.pareto(2.0, 400) + 1.0) * 4.0) / 4.0),
        "duplicated": np.sort(np.repeat(rng.pareto(2.5, 60) + 1.0, 5)),
        # near-flat: relative spread 1e-6 around a large value (the tail's logs are tiny next to ln(lam))
        "near_flat": np.sort(2.0e3 * (1.0 + 1e-6 * rng.random(300))),
        "near_flat_top": np.sort(np.r_[rng.random(200), 50.0 * (1.0 + 1e-7 * rng.random(100))]),
        "zeros_below": np.sort(np.r_[np.zeros(30), rng.pareto(2.0, 150) + 0.5]),
        "tiny": np.sort(rng.random(3) + 0.5),
    }


def _check(got_xmin, got_alpha, got_d, lam, want):
    i, alpha, d = want
    # Round-off of the plain definition itself: each ln(lam_j / lam_i) is off by ~eps absolute and the
    # denominator is n / (alpha - 1), so alpha carries a relative error of ~alpha * eps (1e-14 for a typical
    # tail, 1e-7 for the near-flat ones below, whose alpha is ~1e8). D moves by the same relative amount.
    rtol = max(1e-10, 64 * np.finfo(float).eps * alpha)
    assert got_xmin == lam[i]
    assert got_alpha == pytest.approx(alpha, rel=rtol)
    assert got_d == pytest.approx(d, rel=rtol, abs=rtol)


@pytest.mark.parametrize("seed", range(4))
def test_fit_rule_matches_the_plain_definition(backend, seed):
    cases = spectra(seed)
    rows = hill.hill_metrics(list(cases.values()), xmin_rule="fit", min_eigs=0, backend=backend, assume_sorted=True)
    for (name, lam), row in zip(cases.items(), rows):
        want = plain_fit(lam)
        assert row["status"] == "ok", (name, row)
        _check(row["xmin"], row["alpha"], row["ks_distance"], lam, want)
        assert row["n_tail"] == lam.size - want[0], name


@needs_core
@pytest.mark.parametrize("seed", range(2))
def test_kernel_twin_runs_the_same_fit(seed):
    # hill_lr_packed runs what the CUDA kernel runs (tb::packed_hill_row) over the packed layout.
    cases = spectra(seed)
    eigs = list(cases.values())
    offsets = np.concatenate([[0], np.cumsum([e.size for e in eigs])]).astype(np.int64)
    metrics, _, _ = core.hill_lr_packed(np.concatenate(eigs), offsets, np.zeros(len(eigs), np.int64), 0,
                                        xmin_rule="fit", min_eigs=0)
    for lam, row in zip(eigs, np.asarray(metrics)):
        _check(row[1], row[0], row[3], lam, plain_fit(lam))


@pytest.mark.parametrize("rule", ["peak", "peak_compat"])
def test_peak_rules_scan_their_range_like_the_plain_definition(backend, rule):
    rng = np.random.default_rng(7)
    lam = np.sort(np.concatenate([rng.uniform(10, 20, 300), 20 * (1 + rng.pareto(1.5, 120))]))
    row = hill.hill_metrics([lam], xmin_rule=rule, min_eigs=0, backend=backend)[0]
    counts, edges = np.histogram(np.log10(lam), bins=100)
    peak = 10 ** edges[int(np.argmax(counts))]
    lower = np.log10(0.95 * peak) if rule == "peak_compat" else 0.95 * peak
    cand = [k for k in range(lam.size - 1) if lower <= lam[k] <= 1.5 * peak]
    _check(row["xmin"], row["alpha"], row["ks_distance"], lam, plain_fit(lam, cand[0], cand[-1]))


@needs_core
def test_native_and_reference_agree_on_larger_spectra():
    # N = 3000: the pruned scan (a handful of terms per candidate) against the reference's every term.
    rng = np.random.default_rng(11)
    eigs = [np.sort(rng.pareto(a, 3000) + 1.0) for a in (1.5, 2.5, 4.0)] + [mp(rng, 1500, 3000)]
    native = hill.hill_metrics(eigs, xmin_rule="fit", min_eigs=0, backend="native", assume_sorted=True)
    ref = hill.hill_metrics(eigs, xmin_rule="fit", min_eigs=0, backend="torch", assume_sorted=True)
    for a, b in zip(native, ref):
        assert a["xmin"] == b["xmin"] and a["n_tail"] == b["n_tail"]
        assert a["alpha"] == pytest.approx(b["alpha"], rel=1e-10)
        assert a["ks_distance"] == pytest.approx(b["ks_distance"], rel=1e-10)


@needs_core
def test_hill_metrics_threads_give_the_same_table():
    rng = np.random.default_rng(3)
    eigs = [np.sort(rng.pareto(2.0, int(n)) + 1.0) for n in rng.integers(50, 600, size=30)]
    one = core.hill_metrics(eigs, xmin_rule="fit", min_eigs=0, num_threads=1)
    np.testing.assert_array_equal(core.hill_metrics(eigs, xmin_rule="fit", min_eigs=0, num_threads=3), one)
