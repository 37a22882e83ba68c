"""From per-matrix alphas to per-unit learning-rate factors (SPEC §3), on the native core or the torch reference."""
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
    reference code). NaN/Inf alphas are untuned units: factor 1, left out of the mean/min/max.
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
