"""From per-matrix alphas to per-unit learning-rate factors (SPEC §3), on the native core or the torch reference.

Mappings: TBSigmoid (``"sigmoid"``), TBLinearMap (``"linear"``) and the reference code's rank mapping (``"rank"``);
:func:`normalize_factors` is the reference code's ``tb_lr_normalize``; :func:`linear_range` turns the reference's
``lr_min_ratio`` / ``lr_slope`` into ``(s1, s2)``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _backend, reference
from .reference import MAPPINGS


def unit_means(values: Any, unit_index: Any, n_units: int, *, backend: str = "auto") -> np.ndarray:
    """Mean of the finite ``values`` per unit (``unit_index[j]`` in ``[0, n_units)``); NaN where a unit has none."""
    v = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    u = np.ascontiguousarray(unit_index, dtype=np.int64).reshape(-1)
    if v.shape != u.shape:
        raise ValueError(f"values ({v.size}) and unit_index ({u.size}) must have the same length")
    if isinstance(n_units, bool) or not isinstance(n_units, (int, np.integer)) or n_units < 0:
        raise ValueError(f"n_units must be an integer >= 0, got {n_units!r}")
    core = _backend.resolve(backend)
    if core is None:
        return reference.unit_means(v, u, int(n_units))
    return np.asarray(core.unit_means(v, u, int(n_units)), dtype=np.float64)


def lr_factors(
    values: Any,
    *,
    mapping: str = "sigmoid",
    tau: float = 10.0,
    s_lo: float = 2.0,
    s_hi: float = 1.0,
    s1: float = 0.5,
    s2: float = 1.5,
    compat: bool = False,
    backend: str = "auto",
) -> np.ndarray:
    """Learning-rate factor per unit from its alpha (higher alpha -> larger factor).

    ``"sigmoid"`` (TBSigmoid): ``x = alpha - mean(alpha)``, ``factor = 10 ** (s * (sigmoid(tau x) - 1/2))`` with
    ``s = s_hi`` above the mean and ``s_lo`` below; a unit at the mean gets 1. ``"linear"`` (TBLinearMap):
    ``s1`` at the smallest alpha to ``s2`` at the largest; all equal -> 1 (``compat=True``: ``s2``, as the
    reference code). ``"rank"`` (the reference code's ``rank`` / ``tb_step``): the unit of rank ``k`` (0 = the
    smallest alpha) among ``n`` gets ``s1 + (s2 - s1) * k / n`` - so the largest gets ``s2 - (s2 - s1) / n``, as
    in the reference; equal alphas are ranked in unit order. NaN/Inf alphas are untuned units: factor 1, left out
    of the mean/min/max/rank.
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    for arg, val in (("tau", tau), ("s_lo", s_lo), ("s_hi", s_hi), ("s1", s1), ("s2", s2)):
        if not isinstance(val, (int, float)) or not math.isfinite(val):
            raise ValueError(f"{arg} must be a finite number, got {val!r}")
    if tau <= 0 or s_lo < 0 or s_hi < 0:
        raise ValueError(f"tau must be > 0 and s_lo, s_hi >= 0, got tau={tau}, s_lo={s_lo}, s_hi={s_hi}")
    v = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    params = dict(tau=float(tau), s_lo=float(s_lo), s_hi=float(s_hi), s1=float(s1), s2=float(s2), compat=bool(compat))
    core = _backend.resolve(backend)
    if core is None:
        return reference.lr_factors(v, mapping=mapping, **params)
    return np.asarray(core.lr_factors(v, mapping, *params.values()), dtype=np.float64)


def normalize_factors(factors: Any, weights: Any = None, *, backend: str = "auto") -> np.ndarray:
    """The reference code's ``tb_lr_normalize``: ``factors`` divided by their weighted mean, so the mean learning
    rate over the matrices is the base rate.

    ``weights[j]`` is how many matrices factor ``j`` stands for (a block's factor drives all its matrices; an
    untuned matrix the reference still counts has factor 1); ``None`` = one each. Unchanged when the total weight
    or the mean is not positive.
    """
    f = np.ascontiguousarray(factors, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(f)):
        raise ValueError(f"factors must be finite, got {f[~np.isfinite(f)][:4]}")
    w = None
    if weights is not None:
        w = np.ascontiguousarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != f.shape:
            raise ValueError(f"weights has {w.size} values, factors has {f.size}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and >= 0")
    core = _backend.resolve(backend)
    if core is None:
        return reference.normalize_factors(f, w)
    return np.asarray(core.normalize_factors(f, np.empty(0) if w is None else w), dtype=np.float64)


def linear_range(lr_min_ratio: float, lr_slope: float) -> tuple[float, float]:
    """``(s1, s2)`` of the reference code's linear map and rank mapping, written there as ``lr_min_ratio`` and
    ``lr_slope``: factors from ``lr_min_ratio`` to ``lr_min_ratio + lr_slope``."""
    for arg, val in (("lr_min_ratio", lr_min_ratio), ("lr_slope", lr_slope)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
            raise ValueError(f"{arg} must be a finite number, got {val!r}")
    return float(lr_min_ratio), float(lr_min_ratio) + float(lr_slope)
