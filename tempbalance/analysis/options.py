"""How a spectral pass analyses its matrices: the options, each checked once, when the object is built.

:class:`HillOptions` are the fit's (SPEC §2): where the tail starts and which eigenvalues count. :class:`AnalysisOptions`
adds how the spectra are formed and computed (precision, backend, threads, memory, conv slicing). Everything below
the public entry points (:func:`tempbalance.analyze`, :func:`~tempbalance.analysis.hill.hill_metrics`,
``TempBalance``) takes these objects, so nothing re-checks or re-lists the options on the way down.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from .. import _backend
from ..reference import XMIN_RULES

DEFAULT_MIN_EIGS = 50
CONV_MODES = ("slices", "flatten")


def check_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    """The analysis dtype, validated: ``torch.float32``, ``torch.float64`` or ``None`` (follow each weight)."""
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be None (follow the weights), torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def _finite(arg: str, v: Any, *, lo: float | None = None, above: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v) or (
            lo is not None and (v <= lo if above else v < lo)):
        bound = "" if lo is None else f" {'>' if above else '>='} {lo:g}"
        raise ValueError(f"{arg} must be a finite number{bound}, got {v!r}")


def _count(arg: str, v: Any, lo: int, none_ok: bool = False) -> None:
    if none_ok and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{arg} must be {'None or ' if none_ok else ''}an integer >= {lo}, got {v!r}")


@dataclass(frozen=True)
class HillOptions:
    """The PL_Alpha_Hill fit of one spectrum (SPEC §2).

    xmin_pos: the tail starts at index ``floor(N / xmin_pos)`` of the ascending spectrum (2 = median; > 1).
    xmin_rule: ``"median"`` (uses ``xmin_pos``), ``"fit"`` (smallest KS distance), ``"peak"``, ``"peak_compat"``.
    filter_zeros: drop eigenvalues ``<= max(zero_tol, zero_rel * lambda_max)`` before fitting.
    min_eigs: spectra with fewer eigenvalues are reported, not fitted.
    """

    xmin_pos: float = 2.0
    xmin_rule: str = "median"
    filter_zeros: bool = False
    zero_tol: float = 1e-5
    zero_rel: float = 0.0
    min_eigs: int = DEFAULT_MIN_EIGS

    def __post_init__(self) -> None:
        if isinstance(self.xmin_pos, bool) or not isinstance(self.xmin_pos, (int, float, np.floating, np.integer)) \
                or not math.isfinite(self.xmin_pos) or self.xmin_pos <= 1.0:
            raise ValueError(f"xmin_pos must be a finite number > 1 (2 = median), got {self.xmin_pos!r}")
        if self.xmin_rule not in XMIN_RULES:
            raise ValueError(f"xmin_rule must be one of {XMIN_RULES}, got {self.xmin_rule!r}")
        _count("min_eigs", self.min_eigs, 0)
        _finite("zero_tol", self.zero_tol, lo=0)
        _finite("zero_rel", self.zero_rel, lo=0)
        if not isinstance(self.filter_zeros, bool):
            raise ValueError(f"filter_zeros must be True or False, got {self.filter_zeros!r}")

    @classmethod
    def of(cls, options: "HillOptions | None" = None, overrides: Mapping[str, Any] | None = None):
        """``options`` (default: the defaults) with ``overrides`` (keyword arguments) applied, checked. An unknown
        keyword is a ``TypeError`` naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides or {}) - names)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}; {cls.__name__} takes {sorted(names)}")
        if options is None:
            return cls(**dict(overrides or {}))
        return dataclasses.replace(options, **dict(overrides or {})) if overrides else options

    def replace(self, **changes: Any):
        """A copy with ``changes``, checked."""
        return dataclasses.replace(self, **changes)

    def hill_only(self) -> "HillOptions":
        """The fit's options alone (what the Hill kernels take)."""
        return HillOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(HillOptions)})


@dataclass(frozen=True)
class AnalysisOptions(HillOptions):
    """A spectral pass: the fit (:class:`HillOptions`) plus how the spectra are formed and computed.

    dtype: ``torch.float32`` or ``torch.float64``; ``None`` follows each weight (float64 weights in float64, the
        rest in float32).
    backend: ``"native"`` (compiled core), ``"torch"`` (reference), ``"auto"`` (native when built).
    zero_rtol: numerical-zero guard, ``xmin <= zero_rtol * lambda_max`` -> status "xmin_not_positive"; ``None`` =
        ``d * eps(dtype)`` per matrix, ``d`` its Gram size (the worst-case round-off of the solve).
    num_threads: native worker threads (``None``: torch's thread count).
    chunk_bytes: bound on the bytes of matrices + Grams solved per native call (``None``: 1 GiB).
    conv_mode: ``"slices"`` (one (out, in) matrix per kernel position, pooled) or ``"flatten"`` ((out, in*k)).
    conv_scale: multiplies conv eigenvalues (0.5 reproduces the reference code; alpha is unchanged).
    """

    dtype: torch.dtype | None = None
    backend: str = "auto"
    zero_rtol: float | None = None
    num_threads: int | None = None
    chunk_bytes: int | None = None
    conv_mode: str = "slices"
    conv_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_dtype(self.dtype)
        if self.backend not in _backend.BACKENDS:
            raise ValueError(f"backend must be one of {_backend.BACKENDS}, got {self.backend!r}")
        _count("num_threads", self.num_threads, 1, none_ok=True)
        _count("chunk_bytes", self.chunk_bytes, 1, none_ok=True)
        if self.conv_mode not in CONV_MODES:
            raise ValueError(f"conv_mode must be one of {CONV_MODES}, got {self.conv_mode!r}")
        _finite("conv_scale", self.conv_scale, lo=0, above=True)
        if self.zero_rtol is not None:
            if isinstance(self.zero_rtol, bool) or not isinstance(self.zero_rtol, (int, float)) \
                    or not math.isfinite(self.zero_rtol) or self.zero_rtol < 0:
                raise ValueError(f"zero_rtol must be None (automatic) or a finite number >= 0, got {self.zero_rtol!r}")

    def settings(self) -> dict[str, Any]:
        """What a :class:`~tempbalance.analysis.report.Report` records of the options (its ``settings``)."""
        return dict(xmin_pos=self.xmin_pos, xmin_rule=self.xmin_rule, min_eigs=self.min_eigs,
                    dtype="auto" if self.dtype is None else str(self.dtype).replace("torch.", ""), backend="",
                    filter_zeros=self.filter_zeros, zero_tol=self.zero_tol, zero_rel=self.zero_rel,
                    zero_rtol="auto" if self.zero_rtol is None else self.zero_rtol, conv_mode=self.conv_mode,
                    conv_scale=self.conv_scale)


def field_names(cls: type) -> tuple[str, ...]:
    """The option names of an options class, in order."""
    return tuple(f.name for f in dataclasses.fields(cls))
