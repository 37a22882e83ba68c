"""From per-matrix alphas to per-unit learning-rate factors (SPEC §3), on the native core or the torch reference.

Mappings: TBSigmoid (``"sigmoid"``), TBLinearMap (``"linear"``) and the reference code's rank mapping (``"rank"``);
:func:`normalize_factors` is the reference code's ``tb_lr_normalize``; :func:`linear_range` turns the reference's
``lr_min_ratio`` / ``lr_slope`` into ``(s1, s2)``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .. import _backend, reference
from ..analysis.aggregate import unit_means
from ..analysis.options import field_names
from ..reference import MAPPINGS

__all__ = ["MappingOptions", "linear_range", "lr_factors", "normalize_factors", "unit_means"]


@dataclass(frozen=True)
class MappingOptions:
    """How unit values (mean alphas) become factors, checked once when built (SPEC §3).

    ``"sigmoid"`` (TBSigmoid): ``x = alpha - mean(alpha)``, ``factor = 10 ** (s * (sigmoid(tau x) - 1/2))`` with
    ``s = s_hi`` above the mean and ``s_lo`` below; a unit at the mean gets 1. ``"linear"`` (TBLinearMap):
    ``s1`` at the smallest alpha to ``s2`` at the largest; all equal -> 1 (``compat=True``: ``s2``, as the
    reference code). ``"rank"`` (the reference code's ``rank`` / ``tb_step``): the unit of rank ``k`` (0 = the
    smallest alpha) among ``n`` gets ``s1 + (s2 - s1) * k / n`` - so the largest gets ``s2 - (s2 - s1) / n``, as
    in the reference; equal alphas are ranked in unit order. NaN/Inf alphas are untuned units: factor 1, left out
    of the mean/min/max/rank.
    """

    mapping: str = "sigmoid"
    tau: float = 10.0
    s_lo: float = 2.0
    s_hi: float = 1.0
    s1: float = 0.5
    s2: float = 1.5
    compat: bool = False

    def __post_init__(self) -> None:
        if self.mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {self.mapping!r}")
        for arg in ("tau", "s_lo", "s_hi", "s1", "s2"):
            val = getattr(self, arg)
            if isinstance(val, bool) or not isinstance(val, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(val):
                raise ValueError(f"{arg} must be a finite number, got {val!r}")
        if self.tau <= 0 or self.s_lo < 0 or self.s_hi < 0:
            raise ValueError(f"tau must be > 0 and s_lo, s_hi >= 0, got tau={self.tau}, s_lo={self.s_lo}, "
                             f"s_hi={self.s_hi}")
        if not isinstance(self.compat, bool):
            raise ValueError(f"compat must be True or False, got {self.compat!r}")

    @classmethod
    def of(cls, options: "MappingOptions | None" = None, overrides: Mapping[str, Any] | None = None
           ) -> "MappingOptions":
        """``options`` (default: the defaults) with ``overrides`` (keyword arguments) applied, checked; an unknown
        keyword is a ``TypeError`` naming it."""
        unknown = sorted(set(overrides or {}) - set(field_names(cls)))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}; {cls.__name__} takes {list(field_names(cls))}")
        if options is None:
            return cls(**dict(overrides or {}))
        return dataclasses.replace(options, **dict(overrides or {})) if overrides else options

    def replace(self, **changes: Any) -> "MappingOptions":
        """A copy with ``changes``, checked."""
        return dataclasses.replace(self, **changes)

    def factors(self, values: Any, *, backend: str = "auto") -> np.ndarray:
        """The factor of every unit from its value (higher value -> larger factor)."""
        v = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        params = dict(tau=float(self.tau), s_lo=float(self.s_lo), s_hi=float(self.s_hi), s1=float(self.s1),
                      s2=float(self.s2), compat=bool(self.compat))
        core = _backend.resolve(backend)
        if core is None:
            return reference.lr_factors(v, mapping=self.mapping, **params)
        return np.asarray(core.lr_factors(v, self.mapping, *params.values()), dtype=np.float64)


MAPPING_FIELDS = field_names(MappingOptions)


def lr_factors(values: Any, options: MappingOptions | None = None, *, backend: str = "auto",
               **mapping: Any) -> np.ndarray:
    """Learning-rate factor per unit from its alpha: ``options`` (:class:`MappingOptions`, or its fields as keywords
    applied over it: ``mapping``, ``tau``, ``s_lo``, ``s_hi``, ``s1``, ``s2``, ``compat``) - see there."""
    return MappingOptions.of(options, mapping).factors(values, backend=backend)


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
