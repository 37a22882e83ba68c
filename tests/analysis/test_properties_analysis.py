"""Property-based tests of the analysis (hypothesis; the "ci" profile by default, ``--hypothesis-profile thorough``
for more): random shapes, dtypes and scales - near-flat, rank-deficient, huge and tiny norms - against a float64
numpy reference. A row is "ok" with a finite alpha within the round-off bound of the reference, or has a named
status and a reason; the native core and the torch reference agree rule for rule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tempbalance import _native, analyze
from tempbalance.analysis import hill

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

BACKENDS = ["torch"] + (["native"] if _native.core is not None else [])
NAMED = {"ok", "too_few_eigs", "flat_tail", "xmin_not_positive", "non_finite", "empty", "error"}
KINDS = ("gaussian", "heavy", "low_rank", "near_flat", "top_flat")


@st.composite
def weights(draw) -> tuple[str, torch.Tensor]:
    m, n = draw(st.integers(2, 72)), draw(st.integers(2, 72))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    kind = draw(st.sampled_from(KINDS))
    log_scale = draw(st.floats(-2, 2) if dtype == torch.float16 else st.floats(-30, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    d = min(m, n)
    if kind == "gaussian":
        w = rng.standard_normal((m, n))
    elif kind == "heavy":
        w = rng.standard_t(2.5, (m, n))
    elif kind == "low_rank":
        r = draw(st.integers(1, max(1, d // 3)))
        w = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
    else:
        u, _ = np.linalg.qr(rng.standard_normal((m, d)))
        v, _ = np.linalg.qr(rng.standard_normal((n, d)))
        if kind == "near_flat":  # orthogonal-like, equal singular values up to a relative spread
            s = 1.0 + 10 ** draw(st.floats(-12, -1)) * rng.uniform(-1, 1, d)
        else:  # flat in the top half only
            s = np.r_[np.linspace(0.1, 0.9, d - d // 2), np.ones(d // 2)]
        w = (u * s) @ v.T
    return kind, torch.from_numpy(w * 10.0 ** log_scale).to(dtype)


def reference(w: torch.Tensor) -> dict:
    """Median-rule Hill of the stored weight, float64 SVD (SPEC §2)."""
    lam = np.sort(np.linalg.svd(w.double().numpy(), compute_uv=False) ** 2)
    i = len(lam) // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = float(np.sum(np.log(lam[i:] / lam[i])))
    return dict(lam=lam, i=i, n=len(lam) - i, denom=denom, alpha=1 + (len(lam) - i) / denom if denom > 0 else None)


def gram_error_bound(w: torch.Tensor, lam: np.ndarray) -> float:
    """An upper bound of the absolute error of each Gram eigenvalue in the analysis precision (float64 for float64
    weights, else float32): forming the Gram (dot products of length max(m, n)) plus a backward-stable solve."""
    eps = float(torch.finfo(torch.float64 if w.dtype == torch.float64 else torch.float32).eps)
    m, n = w.shape
    return 4 * (max(m, n) + min(m, n)) * eps * float(lam.sum())


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=weights())
def test_alpha_is_right_or_the_status_says_why(backend, case):
    kind, w = case
    row = analyze([("w", w)], backend=backend, min_eigs=2)["w"]
    assert row.status in NAMED
    ref = reference(w)
    lam, i, n = ref["lam"], ref["i"], ref["n"]
    bound = gram_error_bound(w, lam)
    if row.status != "ok":
        assert math.isnan(row.alpha) and row.reason and "'w'" in row.reason
        # a spectrum the round-off cannot blur must be fitted (no false flat/zero verdicts)
        clear = lam[i] > 1e3 * bound and lam[-1] - lam[i] > 1e3 * bound
        assert not clear, (kind, w.dtype, row.status, row.reason)
        return
    assert math.isfinite(row.alpha) and row.alpha > 1
    assert ref["alpha"] is not None
    if lam[i] > 10 * bound:  # first-order error of alpha from |d lambda| <= bound (Weyl), with a margin of 4
        tol = 4 * n * (2 * n * bound / lam[i]) / ref["denom"] ** 2 + 1e-12 * ref["alpha"]
        assert abs(row.alpha - ref["alpha"]) <= tol, (kind, w.dtype, row.alpha, ref["alpha"], tol)


@st.composite
def spectra(draw) -> np.ndarray:
    """Ascending float64 spectra with plateaus, zeros and wide ranges."""
    n = draw(st.integers(2, 120))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    lam = 10.0 ** rng.uniform(draw(st.floats(-30, 0)), draw(st.floats(0, 30)), n)
    if draw(st.booleans()):  # a plateau at the top, flat within a tiny relative spread
        k = draw(st.integers(1, n))
        lam[-k:] = lam.max() * (1 + 10 ** draw(st.floats(-16, -2)) * rng.uniform(-1, 0, k))
    if draw(st.booleans()):
        lam[: draw(st.integers(0, n))] = 0.0
    return np.sort(lam)


@pytest.mark.skipif("native" not in BACKENDS, reason="the native core is not built")
@given(lam=spectra(), rule=st.sampled_from(["median", "fit", "peak", "peak_compat"]),
       xmin_pos=st.floats(1.1, 4.0), rtol_log=st.floats(math.log10(2 * 2.220446049250313e-16), -2),
       filter_zeros=st.booleans())
def test_native_core_and_torch_reference_agree(lam, rule, xmin_pos, rtol_log, filter_zeros):
    """The same status, and the same numbers wherever they are well-conditioned (a mean log-ratio of the tail
    above 1e-6; below it alpha > 1e6 is round-off of either implementation's sums, though finite in both)."""
    kw = dict(xmin_rule=rule, xmin_pos=xmin_pos, zero_rtol=10 ** rtol_log, filter_zeros=filter_zeros, min_eigs=2,
              assume_sorted=True)
    a = hill.hill_metrics([lam], backend="native", **kw)[0]
    b = hill.hill_metrics([lam], backend="torch", **kw)[0]
    assert a["status"] == b["status"], (a, b)
    if a["status"] == "ok" and (a["alpha"] > 1e6 or b["alpha"] > 1e6):
        assert math.isfinite(a["alpha"]) and math.isfinite(b["alpha"])
        return
    for key in ("alpha", "xmin", "n_tail", "spectral_norm", "n_eigs"):
        if isinstance(a[key], float) and math.isnan(a[key]):
            assert math.isnan(b[key]), key
        else:
            assert a[key] == pytest.approx(b[key], rel=1e-9), (key, a, b)
