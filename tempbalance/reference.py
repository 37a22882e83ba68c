"""Plain torch/numpy implementation of everything the native core (`tempbalance._core`) does.

It is the fallback when the core is not built (``backend="torch"``) and the oracle the tests hold the core to, so
it follows ``csrc/tb_math.h`` rule for rule (SPEC §2-§3):

* :func:`gram_eigvalsh` - eigenvalues of the Gram of each slice's smaller side, pooled over slices, ascending,
  round-off negatives clamped to 0, optionally only the top ``k``.
* :func:`hill_metrics` - PL_Alpha_Hill and the other per-layer metrics of ascending float64 spectra, one row of
  ``HILL_COLUMNS`` per spectrum. The rules, in order:

  1. empty spectrum -> ``STATUS_EMPTY``; any NaN/Inf -> ``STATUS_NON_FINITE`` (only ``n_eigs`` is set).
  2. ``lam_max`` = the largest eigenvalue of the *unfiltered* spectrum.
  3. with ``filter_zeros``: drop every eigenvalue ``<= max(zero_tol, zero_rel * lam_max)``; nothing left ->
     ``STATUS_EMPTY``. ``n_eigs`` counts what is left, ``frobenius`` sums what is left,
     ``stable_rank = frobenius / lam_max``, ``spectral_norm = lam_max``.
  4. ``n_eigs < max(min_eigs, 2)`` -> ``STATUS_TOO_FEW_EIGS``.
  5. xmin index ``i = floor(N / xmin_pos)`` (clamped to ``N - 1``). Rules "fit", "peak", "peak_compat" scan
     candidates ``i`` in ``[lo, hi]``, ``hi <= N - 2`` (``alpha`` of each from suffix sums of
     ``ln(lam / lam_max)``), skip ``lam_i <= 0``, flat tails (:func:`flat_tail`: the top candidates are dropped from
     ``hi`` down; and ``lam_max == lam_i``, tested exactly) and zero denominators, and keep the smallest KS distance
     (ties: smallest ``i``). "peak":
     ``peak = 10**(left edge of the fullest of 100 bins of log10 lam over the positive eigenvalues)``, candidates
     with ``0.95 peak <= lam_i <= 1.5 peak``; "peak_compat" uses ``log10(0.95 peak)`` as the lower bound against
     the *linear* eigenvalues, as the reference code does. No candidate -> the median index.
  6. ``xmin <= 0`` or ``xmin <= zero_rtol * lam_max`` -> ``STATUS_XMIN_NOT_POSITIVE`` (a numerically zero
     eigenvalue of a rank-deficient Gram; callers pass ``zero_rtol = d * eps(analysis dtype)`` with ``d`` the Gram
     dimension, see ``tempbalance.hill.default_zero_rtol``).
  7. a flat tail - ``lam_max - xmin <= zero_rtol * lam_max`` (:func:`flat_tail`: the tail spans no more than the
     analysis round-off, as an orthogonal matrix's) or ``sum_j ln(lam_j / xmin) <= 0`` -> ``STATUS_FLAT_TAIL``.
  8. ``alpha = 1 + n / sum_{j>=i} ln(lam_j / xmin)``, ``n = N - i``;
     ``ks_distance = max_t |1 - (lam_{i+t} / xmin)^(1 - alpha) - t / n|``; ``alpha_hat = alpha log10 lam_max``.

  A non-ok row has ``alpha``, ``ks_distance`` and ``alpha_hat`` NaN; ``xmin``/``n_tail`` are set once known.
* :func:`unit_means`, :func:`lr_factors` - SPEC §3 (TBSigmoid, TBLinearMap, the reference code's rank mapping);
  non-finite values are untuned units. :func:`normalize_factors` - the reference code's ``tb_lr_normalize``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

HILL_COLUMNS = (
    "alpha", "xmin", "n_tail", "ks_distance", "spectral_norm", "frobenius", "stable_rank", "alpha_hat", "n_eigs",
    "status",
)
_COL = {name: k for k, name in enumerate(HILL_COLUMNS)}

# Status codes, as in csrc/tb_math.h (tb::Status).
STATUS_OK = 0
STATUS_TOO_FEW_EIGS = 1
STATUS_FLAT_TAIL = 2
STATUS_XMIN_NOT_POSITIVE = 3
STATUS_NON_FINITE = 4
STATUS_EMPTY = 5
STATUS_TOP_TOO_SHORT = 6

XMIN_RULES = ("median", "fit", "peak", "peak_compat")
MAPPINGS = ("sigmoid", "linear", "rank")
PEAK_BINS = 100

_EIG_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
# Bounds the (candidates x N) block of the vectorised KS scan, in elements (~32 MiB of float64).
_KS_BLOCK = 1 << 22


# ----------------------------------------------------------------------------------------------------------------
# Gram eigenvalues


def gram_eigvalsh(mats: Sequence[torch.Tensor], top: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Pooled ascending eigenvalues of the Gram of each slice's smaller side, for every ``(S, m, n)`` stack.

    ``mats[k]`` is float32/float64/complex64/complex128; the result has the matching real dtype. ``top[k] > 0``
    keeps only the largest ``top[k]`` eigenvalues (``S`` must be 1). Raises ``ValueError`` naming ``mats[k]``.
    """
    top = [0] * len(mats) if top is None else list(top)
    if len(top) != len(mats):
        raise ValueError(f"top has {len(top)} entries but mats has {len(mats)}")
    out = []
    for k, (a, t) in enumerate(zip(mats, top)):
        if not isinstance(a, torch.Tensor) or a.ndim != 3:
            raise ValueError(f"mats[{k}] must be a 3-d (S, m, n) tensor, got {getattr(a, 'shape', type(a))}")
        if a.dtype not in _EIG_DTYPES:
            raise ValueError(f"mats[{k}] has dtype {a.dtype}; expected float32/float64/complex64/complex128")
        if a.numel() == 0:
            raise ValueError(f"mats[{k}] is empty (shape {tuple(a.shape)})")
        if t < 0 or (t > 0 and a.shape[0] != 1):
            raise ValueError(f"top[{k}]={t}: must be >= 0, and > 0 only for a single slice")
        # The Gram of the smaller side has the same nonzero spectrum and is cheaper.
        gram = a @ a.mH if a.shape[1] <= a.shape[2] else a.mH @ a
        ev = torch.linalg.eigvalsh(gram).reshape(-1).clamp_min_(0.0)
        ev = torch.sort(ev).values
        out.append(ev[-t:] if t > 0 else ev)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Hill estimator and per-layer metrics


def flat_tail(xmin: float, lam_max: float, rtol: float) -> bool:
    """Whether the tail from ``xmin`` to ``lam_max`` spans no more than ``rtol * lam_max`` (``rtol`` = zero_rtol,
    the round-off of the analysis): flat, nothing to fit. ``rtol = 0``: only an exactly flat tail."""
    return not (lam_max - xmin > rtol * lam_max)


def _ks_distances(lam: np.ndarray, cand: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """KS distance of the power-law fit for every candidate xmin index in ``cand`` (vectorised in blocks; every
    term computed, O(N^2): the plain definition the native core's pruned scan must reproduce)."""
    N = lam.size
    out = np.empty(cand.size)
    j = np.arange(N)
    block = max(1, _KS_BLOCK // max(N, 1))
    for s in range(0, cand.size, block):
        ci = cand[s:s + block, None]
        a = alphas[s:s + block, None]
        n = (N - ci).astype(np.float64)
        t = j[None, :] - ci
        mask = t >= 0
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            fit = 1.0 - (lam[None, :] / lam[ci]) ** (1.0 - a)
            diff = np.abs(fit - t / n)
        out[s:s + block] = np.where(mask, diff, 0.0).max(axis=1)
    return out


def _ks_distance(tail: np.ndarray, alpha: float) -> float:
    n = tail.size
    fit = 1.0 - (tail / tail[0]) ** (1.0 - alpha)
    return float(np.max(np.abs(fit - np.arange(n) / n)))


def _histogram_peak(lam: np.ndarray) -> float:
    """10**(left edge of the fullest of 100 bins of log10(lam)) over the positive eigenvalues (0 if none)."""
    pos = lam[lam > 0.0]
    if pos.size == 0:
        return 0.0
    lg = np.log10(pos)
    lo, hi = lg[0], lg[-1]
    width = (hi - lo) / PEAK_BINS
    if not width > 0.0:
        return float(pos[0])
    bins = np.clip(np.trunc((lg - lo) / width), 0, PEAK_BINS - 1).astype(np.int64)
    peak = int(np.argmax(np.bincount(bins, minlength=PEAK_BINS)))  # first fullest bin
    return float(10.0 ** (lo + peak * width))


def _best_fit(lam: np.ndarray, lo: int, hi: int) -> tuple[int, float, float]:
    """Candidate in [lo, hi] with the smallest KS distance: (index, alpha, D); index -1 if none fits."""
    N = lam.size
    if lo > hi:
        return -1, math.nan, math.nan
    # ln(lam / lam_max), not ln(lam): a tail of large, close eigenvalues keeps its digits in the difference below
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(lam / lam[-1])
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = sum_{j>=i} ln(lam_j / lam_max)
    cand = np.arange(lo, hi + 1)
    n = (N - cand).astype(np.float64)
    with np.errstate(invalid="ignore"):
        denom = suffix[cand] - n * logs[cand]  # = sum_{j>=i} ln(lam_j / lam_i)
    # A flat tail (max == xmin) is tested exactly: suffix-sum round-off can leave its denominator a tiny positive.
    ok = (lam[cand] > 0.0) & (denom > 0.0) & (lam[-1] > lam[cand])
    cand, n, denom = cand[ok], n[ok], denom[ok]
    if cand.size == 0:
        return -1, math.nan, math.nan
    alphas = 1.0 + n / denom
    ds = _ks_distances(lam, cand, alphas)
    k = int(np.argmin(ds))  # first minimum = smallest index on ties
    return int(cand[k]), float(alphas[k]), float(ds[k])


def hill_metrics_one(
    eigs: np.ndarray,
    *,
    xmin_pos: float = 2.0,
    xmin_rule: str = "median",
    filter_zeros: bool = False,
    zero_tol: float = 1e-5,
    zero_rel: float = 0.0,
    zero_rtol: float = 0.0,
    min_eigs: int = 50,
    n_total: int = 0,
) -> np.ndarray:
    """One row of ``HILL_COLUMNS`` for one ascending spectrum (rules in the module docstring).

    ``n_total > 0`` says ``eigs`` holds only the top of a spectrum of ``n_total`` eigenvalues; then xmin must lie
    within them (else ``STATUS_TOP_TOO_SHORT``) and only the median rule applies.
    """
    if xmin_rule not in XMIN_RULES:
        raise ValueError(f"xmin_rule must be one of {XMIN_RULES}, got {xmin_rule!r}")
    eigs = np.asarray(eigs, dtype=np.float64).reshape(-1)
    row = np.full(len(HILL_COLUMNS), np.nan)
    row[_COL["n_tail"]] = 0.0
    row[_COL["n_eigs"]] = 0.0

    def done(status: int) -> np.ndarray:
        row[_COL["status"]] = status
        return row

    if eigs.size == 0:
        return done(STATUS_EMPTY)
    if not np.all(np.isfinite(eigs)):
        row[_COL["n_eigs"]] = eigs.size
        return done(STATUS_NON_FINITE)
    lam_max = float(eigs[-1])
    lam = eigs
    if filter_zeros:
        lam = eigs[eigs > max(zero_tol, zero_rel * lam_max)]
    N = (n_total - (eigs.size - lam.size)) if n_total > 0 else lam.size
    offset = N - lam.size  # global index of lam[0]
    row[_COL["n_eigs"]] = N
    if lam.size == 0:
        return done(STATUS_EMPTY)
    frob = float(lam.sum())
    row[_COL["spectral_norm"]] = lam_max
    row[_COL["frobenius"]] = frob
    row[_COL["stable_rank"]] = frob / lam_max if lam_max > 0.0 else math.nan
    if N < min_eigs or N < 2:
        return done(STATUS_TOO_FEW_EIGS)

    i = min(int(math.floor(N / xmin_pos)), N - 1)
    alpha = ks = math.nan
    if xmin_rule != "median":
        if offset > 0:
            return done(STATUS_TOP_TOO_SHORT)
        lo, hi = 0, N - 2
        if xmin_rule != "fit":
            peak = _histogram_peak(lam)
            if xmin_rule == "peak_compat":
                with np.errstate(divide="ignore"):
                    lower = float(np.log10(0.95 * peak))
            else:
                lower = 0.95 * peak
            upper = 1.5 * peak
            lo = int(np.searchsorted(lam, lower, side="left"))  # first lam >= lower
            hi = min(int(np.searchsorted(lam, upper, side="right")) - 1, N - 2)  # last lam <= upper
        while hi >= lo and flat_tail(float(lam[hi]), float(lam[-1]), zero_rtol):
            hi -= 1  # flat candidate tails: no fit
        best, a, d = _best_fit(lam, lo, hi)
        if best >= 0:
            i, alpha, ks = best, a, d
    local = i - offset
    if local < 0:
        return done(STATUS_TOP_TOO_SHORT)
    xmin = float(lam[local])
    n = N - i
    row[_COL["xmin"]] = xmin
    row[_COL["n_tail"]] = n
    if not xmin > 0.0 or xmin <= zero_rtol * lam_max:
        return done(STATUS_XMIN_NOT_POSITIVE)
    if math.isnan(alpha):
        if flat_tail(xmin, lam_max, zero_rtol):
            return done(STATUS_FLAT_TAIL)
        denom = float(np.sum(np.log(lam[local:] / xmin)))
        if not denom > 0.0:
            return done(STATUS_FLAT_TAIL)
        alpha = 1.0 + n / denom
        ks = _ks_distance(lam[local:], alpha)
    row[_COL["alpha"]] = alpha
    row[_COL["ks_distance"]] = ks
    row[_COL["alpha_hat"]] = alpha * math.log10(lam_max)
    return done(STATUS_OK)


def hill_metrics(eigs: Sequence[np.ndarray], **options) -> np.ndarray:
    """``(len(eigs), 10)`` float64 array of ``HILL_COLUMNS``, like ``_core.hill_metrics``; ``options`` are the
    keyword arguments of :func:`hill_metrics_one`."""
    out = np.empty((len(eigs), len(HILL_COLUMNS)))
    for k, e in enumerate(eigs):
        out[k] = hill_metrics_one(e, **options)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Units and learning-rate mappings


def unit_means(values: np.ndarray, unit_index: np.ndarray, n_units: int) -> np.ndarray:
    """Mean of the finite values per unit (NaN where a unit has none); ``unit_index < 0`` belongs to no unit."""
    values = np.asarray(values, dtype=np.float64)
    unit_index = np.asarray(unit_index, dtype=np.int64)
    keep = np.isfinite(values) & (unit_index >= 0) & (unit_index < n_units)
    sums = np.bincount(unit_index[keep], weights=values[keep], minlength=n_units)[:n_units]
    counts = np.bincount(unit_index[keep], minlength=n_units)[:n_units]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def lr_factors(
    values: np.ndarray,
    *,
    mapping: str = "sigmoid",
    tau: float = 10.0,
    s_lo: float = 2.0,
    s_hi: float = 1.0,
    s1: float = 0.5,
    s2: float = 1.5,
    compat: bool = False,
) -> np.ndarray:
    """SPEC §3 learning-rate factors per unit. Non-finite values are untuned: factor 1, outside mean/min/max.

    sigmoid: ``x = v - mean``, ``factor = 10 ** (s (sigmoid(tau x) - 1/2))`` with ``s = s_hi`` if ``x > 0`` else
    ``s_lo``. linear: ``s1 + (s2 - s1) (v - min) / (max - min)``; all values equal -> 1 (compat: ``s2``).
    rank: ``s1 + (s2 - s1) k / n`` for the value of rank ``k`` (0 = smallest) among the ``n`` finite ones; equal
    values ranked in order (stable).
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    fin = np.isfinite(v)
    out = np.ones_like(v)
    if not fin.any():
        return out
    good = v[fin]
    if mapping == "linear":
        vmin, vmax = good.min(), good.max()
        if vmax > vmin:
            out[fin] = s1 + (s2 - s1) * (good - vmin) / (vmax - vmin)
        else:
            out[fin] = s2 if compat else 1.0
    elif mapping == "rank":
        ranks = np.empty(good.size)
        ranks[np.argsort(good, kind="stable")] = np.arange(good.size)
        out[fin] = s1 + (s2 - s1) * ranks / good.size
    else:
        x = good - good.mean()
        s = np.where(x > 0.0, s_hi, s_lo)
        with np.errstate(over="ignore"):
            out[fin] = 10.0 ** (s * (1.0 / (1.0 + np.exp(-tau * x)) - 0.5))
    return out


def normalize_factors(factors: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``factors`` divided by their weighted mean (``weights[j]``: how many matrices factor ``j`` stands for; None:
    one each); unchanged when the total weight or the mean is not positive and finite."""
    f = np.asarray(factors, dtype=np.float64).reshape(-1)
    w = np.ones_like(f) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    total = float(w.sum())
    if not total > 0.0:
        return f.copy()
    mean = float((w * f).sum()) / total
    if not (mean > 0.0 and math.isfinite(mean)):
        return f.copy()
    return f / mean
