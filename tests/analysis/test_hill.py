"""SPEC §2: PL_Alpha_Hill against an independent float64 implementation, Pareto samples, guards."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tempbalance import _native
from tempbalance.analysis import hill
from tempbalance.analysis.hill import alpha_hill, default_zero_rtol, hill_metrics


# --- independent oracle: plain Python loops, straight from the SPEC text ---------------------------------------
def _fit_at(lam, i):
    N = len(lam)
    n = N - i
    s = 0.0
    for j in range(i, N):
        s += math.log(lam[j] / lam[i])
    if s <= 0:
        return None
    a = 1 + n / s
    d = 0.0
    for t in range(n):
        d = max(d, abs(1 - (lam[i + t] / lam[i]) ** (1 - a) - t / n))
    return a, d


def oracle(eigs, xmin_pos=2.0, rule="median", rtol=0.0):
    """(alpha, xmin, ks) of an ascending positive spectrum; alpha None for a flat tail (one that spans no more
    than ``rtol * lambda_max``)."""
    lam = sorted(float(x) for x in eigs)
    N = len(lam)
    i = math.floor(N / xmin_pos)
    if rule != "median":
        cands = [k for k in range(N - 1) if lam[-1] - lam[k] > rtol * lam[-1]]
        if rule in ("peak", "peak_compat"):
            pos = [x for x in lam if x > 0]
            counts, edges = np.histogram(np.log10(pos), bins=100)
            peak = 10 ** edges[int(np.argmax(counts))]
            lower = math.log10(0.95 * peak) if rule == "peak_compat" else 0.95 * peak
            cands = [k for k in cands if lower <= lam[k] <= 1.5 * peak]
        best = None
        for k in cands:
            f = _fit_at(lam, k) if lam[k] > 0 else None
            if f is not None and (best is None or f[1] < best[0]):
                best = (f[1], k, f[0])
        if best is not None:
            return best[2], lam[best[1]], best[0]
    f = _fit_at(lam, i) if lam[-1] - lam[i] > rtol * lam[-1] else None
    return (None, lam[i], None) if f is None else (f[0], lam[i], f[1])


def mp_spectrum(rng, m, n):
    """A realistic ESD: squared singular values of a random matrix with a heavy-tailed perturbation."""
    a = rng.standard_normal((m, n)) + 0.3 * rng.standard_t(2.5, size=(m, n))
    return np.sort(np.linalg.svd(a, compute_uv=False) ** 2)


@pytest.mark.parametrize("xmin_pos", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("shape", [(60, 80), (150, 150), (300, 120)])
def test_median_rule_matches_oracle(backend, rng, xmin_pos, shape):
    lam = mp_spectrum(rng, *shape)
    row = hill_metrics([lam], xmin_pos=xmin_pos, min_eigs=0, backend=backend)[0]
    alpha, xmin, ks = oracle(lam, xmin_pos)
    assert row["status"] == "ok"
    assert row["alpha"] == pytest.approx(alpha, rel=1e-10)
    assert row["xmin"] == xmin
    assert row["n_tail"] == len(lam) - math.floor(len(lam) / xmin_pos)
    assert row["ks_distance"] == pytest.approx(ks, rel=1e-9)
    assert row["spectral_norm"] == lam[-1]
    assert row["frobenius"] == pytest.approx(lam.sum(), rel=1e-12)
    assert row["stable_rank"] == pytest.approx(lam.sum() / lam[-1], rel=1e-12)
    assert row["alpha_hat"] == pytest.approx(alpha * math.log10(lam[-1]), rel=1e-10)
    assert row["n_eigs"] == len(lam)


@pytest.mark.parametrize("rule", ["fit", "peak", "peak_compat"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_other_xmin_rules_match_oracle(backend, rule, seed):
    rng = np.random.default_rng(seed)
    lam = mp_spectrum(rng, 120, 200)
    row = hill_metrics([lam], xmin_rule=rule, min_eigs=0, backend=backend)[0]
    alpha, xmin, ks = oracle(lam, rule=rule)
    assert row["status"] == "ok"
    assert row["xmin"] == xmin
    assert row["alpha"] == pytest.approx(alpha, rel=1e-9)
    assert row["ks_distance"] == pytest.approx(ks, rel=1e-9)


def test_fit_rule_beats_median_on_ks(rng):
    lam = mp_spectrum(rng, 150, 150)
    med = hill_metrics([lam], min_eigs=0, backend="torch")[0]
    fit = hill_metrics([lam], xmin_rule="fit", min_eigs=0, backend="torch")[0]
    assert fit["ks_distance"] <= med["ks_distance"]


def test_peak_compat_lower_bound_differs_from_peak():
    # A spectrum with eigenvalues well above 1: log10(0.95 peak) is far below the linear bound 0.95 peak, so
    # compat scans candidates below the peak that the correct rule excludes.
    rng = np.random.default_rng(5)
    lam = np.sort(np.concatenate([rng.uniform(10, 20, 150), 20 * (1 + rng.pareto(1.5, 80))]))
    peak = hill_metrics([lam], xmin_rule="peak", min_eigs=0, backend="torch")[0]
    compat = hill_metrics([lam], xmin_rule="peak_compat", min_eigs=0, backend="torch")[0]
    assert peak["xmin"] == oracle(lam, rule="peak")[1]
    assert compat["xmin"] == oracle(lam, rule="peak_compat")[1]
    assert compat["xmin"] < peak["xmin"] and compat["ks_distance"] <= peak["ks_distance"]


def pareto(rng, alpha, n):
    """Samples with density p(x) ~ x^-alpha on [1, inf): x = U^(-1 / (alpha - 1))."""
    return rng.uniform(size=n) ** (-1.0 / (alpha - 1.0))


@pytest.mark.parametrize("true_alpha", [2.0, 3.0, 4.5])
def test_pareto_estimate_converges(true_alpha):
    errors = []
    for n in (200, 2000, 20000, 200000):
        est = [alpha_hill(pareto(np.random.default_rng(s), true_alpha, n), backend="torch") for s in range(8)]
        errors.append(np.sqrt(np.mean((np.array(est) - true_alpha) ** 2)))
    assert errors[-1] < 0.02 * true_alpha
    assert errors[-1] < errors[1] < errors[0]
    # the MLE's error shrinks like 1/sqrt(n_tail): 100x the samples, about 10x less error
    assert errors[-1] < errors[1] / 4


def test_alpha_hill_accepts_any_order_and_types(rng):
    lam = mp_spectrum(rng, 50, 70)
    a = alpha_hill(lam, backend="torch")
    assert a == pytest.approx(oracle(lam)[0], rel=1e-10)
    assert alpha_hill(rng.permutation(lam), backend="torch") == a
    assert alpha_hill(torch.from_numpy(lam).float(), backend="torch") == pytest.approx(a, rel=1e-5)
    assert alpha_hill(list(lam), xmin_pos=2.0, backend="torch") == a


def test_filter_zeros_drops_small_eigenvalues(backend, rng):
    lam = np.sort(np.concatenate([mp_spectrum(rng, 80, 100), np.full(40, 1e-7), [0.0]]))
    row = hill_metrics([lam], filter_zeros=True, min_eigs=0, backend=backend)[0]
    kept = lam[lam > 1e-5]
    assert row["n_eigs"] == kept.size
    assert row["alpha"] == pytest.approx(oracle(kept)[0], rel=1e-10)
    rel = hill_metrics([lam], filter_zeros=True, zero_tol=0.0, zero_rel=1e-3, min_eigs=0, backend=backend)[0]
    assert rel["n_eigs"] == int((lam > 1e-3 * lam[-1]).sum())
    assert alpha_hill(lam, filter_zeros=True, backend=backend) == pytest.approx(row["alpha"], rel=1e-12)


# --- guards --------------------------------------------------------------------------------------------------
def _status(eigs, **kw):
    kw.setdefault("min_eigs", 0)
    return hill_metrics([np.asarray(eigs, dtype=float)], **kw)[0]


def test_guard_statuses(backend):
    good = np.linspace(1, 10, 100)
    assert _status(good, backend=backend)["status"] == "ok"
    assert _status([], backend=backend)["status"] == "empty"
    r = _status(np.r_[good, np.nan], backend=backend)
    assert r["status"] == "non_finite" and math.isnan(r["alpha"]) and r["n_eigs"] == 101
    assert _status(np.r_[good, np.inf], backend=backend)["status"] == "non_finite"
    r = _status(good, min_eigs=101, backend=backend)
    assert r["status"] == "too_few_eigs" and math.isnan(r["alpha"]) and r["spectral_norm"] == 10.0
    assert "101" in r["reason"]
    r = _status(np.full(80, 3.0), backend=backend)  # all equal: zero denominator
    assert r["status"] == "flat_tail" and math.isnan(r["alpha"]) and r["xmin"] == 3.0
    r = _status(np.r_[np.linspace(1, 2, 50), np.full(50, 5.0)], backend=backend)  # flat top half only
    assert r["status"] == "flat_tail"
    r = _status(np.zeros(60), backend=backend)  # zero matrix
    assert r["status"] == "xmin_not_positive" and math.isnan(r["alpha"])
    r = _status(np.r_[np.zeros(60), np.linspace(1, 2, 40)], backend=backend)  # rank-deficient: xmin = 0
    assert r["status"] == "xmin_not_positive"
    r = _status(np.zeros(60), filter_zeros=True, backend=backend)  # nothing survives the filter
    assert r["status"] == "empty"
    for rule in ("fit", "peak", "peak_compat"):
        assert _status(np.full(80, 3.0), xmin_rule=rule, backend=backend)["status"] == "flat_tail"
        assert _status(np.zeros(60), xmin_rule=rule, backend=backend)["status"] == "xmin_not_positive"
    for r in (_status(x, backend=backend) for x in ([], np.zeros(60), np.full(80, 3.0))):
        assert r["reason"]


@pytest.mark.parametrize("rule", ["median", "fit", "peak", "peak_compat"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orthogonal_weights_have_a_flat_tail(backend, rule, dtype):
    """nn.init.orthogonal_ (RL policies, RNNs): every singular value is 1, the spectrum spreads only by round-off
    (~0.25 d eps measured), so the fit would be round-off (alpha ~2e6, status ok before)."""
    from tempbalance import analyze

    for seed, shape in enumerate([(128, 128), (256, 64), (96, 384)]):
        torch.manual_seed(seed)
        w = torch.empty(*shape, dtype=dtype)
        torch.nn.init.orthogonal_(w)
        row = analyze([("w", w)], backend=backend, xmin_rule=rule)["w"]
        assert row.status == "flat_tail" and math.isnan(row.alpha), (shape, row)
        assert "orthogonal" in row.reason


@pytest.mark.parametrize("rule", ["median", "fit"])
def test_a_tail_flat_only_at_the_top(backend, rule):
    """Half the spectrum at 1 within the round-off, half spread below: the median rule's tail is flat; the fit
    rule keeps only candidates whose tail spans more than the round-off (the float64 oracle, same rule)."""
    d, eps = 128, float(torch.finfo(torch.float32).eps)
    rtol = d * eps
    rng = np.random.default_rng(0)
    lam = np.sort(np.r_[np.linspace(0.05, 0.8, 64), 1.0 + rng.uniform(-0.2, 0.2, 64) * rtol])
    r = hill_metrics([lam], zero_rtol=rtol, min_eigs=0, xmin_rule=rule, backend=backend)[0]
    a, xmin, ks = oracle(lam, rule=rule, rtol=rtol)
    if a is None:
        assert r["status"] == "flat_tail" and rule == "median"
    else:
        assert r["status"] == "ok" and xmin < 0.81 and r["xmin"] == xmin
        assert r["alpha"] == pytest.approx(a, rel=1e-12) and r["ks_distance"] == pytest.approx(ks, rel=1e-9)
    # without the round-off tolerance the flat half is "fitted" (what happened before)
    assert hill_metrics([lam], zero_rtol=0.0, min_eigs=0, backend=backend)[0]["alpha"] > 1e5


def test_numerical_zero_guard_on_rank_deficient_gram(backend):
    # A rank-10 100x100 matrix in float32: its 90 zero eigenvalues come out as round-off noise, not 0.
    g = torch.Generator().manual_seed(3)
    w = torch.randn(100, 10, generator=g) @ torch.randn(10, 100, generator=g)
    from tempbalance.analysis.spectra import esd

    lam = esd(w, backend=backend).double().numpy()
    rtol = default_zero_rtol(100, torch.float32)
    assert rtol == pytest.approx(100 * 1.1920929e-07)
    r = hill_metrics([lam], zero_rtol=rtol, min_eigs=0, backend=backend)[0]
    assert r["status"] == "xmin_not_positive", r
    assert r["xmin"] <= rtol * lam[-1]
    # without the guard a meaningless alpha would come out (or an exact zero would be caught anyway)
    raw = hill_metrics([lam], zero_rtol=0.0, min_eigs=0, backend=backend)[0]
    assert raw["status"] in ("ok", "xmin_not_positive")
    # a full-rank matrix passes the same guard
    full = esd(torch.randn(100, 100, generator=g), backend=backend).double().numpy()
    assert hill_metrics([full], zero_rtol=rtol, min_eigs=0, backend=backend)[0]["status"] == "ok"


def test_alpha_hill_warns_and_returns_nan():
    with pytest.warns(RuntimeWarning, match="flat tail"):
        assert math.isnan(alpha_hill(np.full(10, 2.0), backend="torch"))
    with pytest.warns(RuntimeWarning, match="no eigenvalues"):
        assert math.isnan(alpha_hill(np.array([]), backend="torch"))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert math.isnan(alpha_hill(np.array([1.0, np.nan, 2.0]), backend="torch"))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(xmin_pos=1.0), "xmin_pos"),
        (dict(xmin_pos=0.5), "xmin_pos"),
        (dict(xmin_pos=float("nan")), "xmin_pos"),
        (dict(xmin_rule="mean"), "xmin_rule"),
        (dict(min_eigs=-1), "min_eigs"),
        (dict(zero_tol=-1e-5), "zero_tol"),
        (dict(zero_rtol=-1.0), "zero_rtol"),
        (dict(backend="gpu"), "backend"),
    ],
)
def test_bad_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        hill_metrics([np.linspace(1, 2, 10)], **kw)


def test_bad_eigenvalue_arrays_raise():
    with pytest.raises(ValueError, match="eigenvalues"):
        alpha_hill(np.float64(3.0))
    with pytest.raises(ValueError, match="eigenvalues"):
        alpha_hill(np.ones((3, 3)))
    with pytest.raises(ValueError, match="real"):
        alpha_hill(torch.ones(4, dtype=torch.complex64))


def test_status_mapping_is_complete():
    assert set(hill.STATUS_NAMES.values()) >= {"ok", "too_few_eigs", "flat_tail", "xmin_not_positive",
                                               "non_finite", "empty"}
    for code, name in hill.STATUS_NAMES.items():
        assert hill.STATUS_CODES[name] == code


def test_many_spectra_in_one_call_keep_order(backend, rng):
    spectra = [mp_spectrum(rng, m, 90) for m in (55, 70, 90)] + [np.full(60, 1.0)]
    rows = hill_metrics(spectra, min_eigs=0, zero_rtol=[1e-6, 1e-6, 0.0, 0.0], backend=backend)
    for lam, row in zip(spectra[:3], rows):
        assert row["alpha"] == pytest.approx(oracle(lam)[0], rel=1e-10)
    assert rows[3]["status"] == "flat_tail"


@pytest.mark.skipif(_native.core is None, reason="native core unavailable")
def test_native_backend_makes_one_call_for_many_zero_guards(monkeypatch, rng):
    # A model's Grams have many sizes, so many zero_rtol values: still one native call, each row with its own value.
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def hill_metrics(self, *args, **kw):
            calls.append(kw)
            return real.hill_metrics(*args, **kw)

    real = _native.core
    monkeypatch.setattr(_native, "core", Counting())
    spectra = [mp_spectrum(rng, m, 90) for m in (55, 70, 80, 90)]
    rtol = [0.0, 1e-6, 0.5, 1e-4]
    rows = hill_metrics(spectra, min_eigs=0, zero_rtol=rtol, filter_zeros=True, zero_rel=1e-3, backend="native")
    assert len(calls) == 1
    want = hill_metrics(spectra, min_eigs=0, zero_rtol=rtol, filter_zeros=True, zero_rel=1e-3, backend="torch")
    assert [r["status"] for r in rows] == [r["status"] for r in want] and rows[2]["status"] == "xmin_not_positive"
    for got, ref in zip(rows, want):
        assert got["alpha"] == pytest.approx(ref["alpha"], rel=1e-10, nan_ok=True)
