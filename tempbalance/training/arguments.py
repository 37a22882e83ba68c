"""TempBalance's keyword arguments: named once, checked once, at construction.

A TempBalance takes three kinds of options, each owned by one frozen class: how the weights are analysed
(:class:`~tempbalance.analysis.options.AnalysisOptions`, the fields in :data:`ANALYSIS_FIELDS`), how unit values
become factors (:class:`~tempbalance.training.mapping.MappingOptions`) and what the scheduler itself does
(:class:`Arguments`). :func:`parse` splits the keywords among them; :data:`NAMES` is every keyword TempBalance
takes (presets check theirs against it).
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from ..analysis.options import AnalysisOptions, field_names
from . import compat as _compat
from .cadence import Cadence, as_cadence
from .mapping import MappingOptions

METRICS = ("alpha", "spectral_norm", "stable_rank", "alpha_hat")
TARGETS = ("lr", "weight_decay")
# the analysis options a TempBalance takes as keywords (the rest keep AnalysisOptions' defaults; conv_scale is the
# compat scheme's); min_eigs=None there means the adapter's default
ANALYSIS_FIELDS = ("xmin_pos", "xmin_rule", "min_eigs", "filter_zeros", "dtype", "backend", "num_threads",
                   "chunk_bytes")
MAPPING_FIELDS = tuple(n for n in field_names(MappingOptions) if n != "compat")  # compat is the scheduler's


def _flag(arg: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{arg} must be True or False, got {v!r}")


def _count(arg: str, v: Any, lo: int, meaning: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{arg} must be an integer >= {lo} ({meaning}), got {v!r}")


@dataclass(frozen=True)
class Arguments:
    """What the scheduler does, beyond analysis and mapping options (every field documented on
    :class:`~tempbalance.TempBalance`)."""

    base_scheduler: Any = None
    unit: str | None = None
    normalize: bool = False
    interval: int | str | Cadence | None = None
    lag: int = 0
    stagger: int = 1
    include: str | Iterable[str] | None = None
    exclude: str | Iterable[str] | None = None
    remove_first: bool = False
    remove_last: bool = False
    metric: str = "alpha"
    target: str = "lr"
    compat: bool | str = False
    adapter: Any = "auto"
    include_embeddings: bool = False
    process_group: Any = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        as_cadence(self.interval)  # a bad interval is an error now
        _count("lag", self.lag, 0, "0 = synchronous")
        _count("stagger", self.stagger, 1, "1 = every matrix at every refresh")
        for arg in ("remove_first", "remove_last", "normalize", "include_embeddings"):
            _flag(arg, getattr(self, arg))
        if not isinstance(self.compat, bool) and self.compat not in _compat.SCHEMES:
            raise ValueError(f"compat must be True, False or one of {tuple(_compat.SCHEMES)}, got {self.compat!r}")
        if self.compat and self.stagger > 1:
            raise ValueError("stagger >= 2 analyses a slice of the matrices per refresh (an approximation); compat "
                             "reproduces a reference that analyses every matrix at every refresh: use stagger=1")
        if self.compat and self.include_embeddings:
            raise ValueError("include_embeddings=True: no reference code analyses embeddings; drop it with compat")


@dataclass(frozen=True)
class Parsed:
    """:func:`parse`'s result: the scheduler's arguments, the mapping options and the analysis options
    (``min_eigs=None``: the adapter's default, filled in once the adapter is known)."""

    args: Arguments
    mapping: MappingOptions
    analysis: AnalysisOptions
    min_eigs: int | None


def parse(kwargs: dict[str, Any]) -> Parsed:
    """Split TempBalance's keyword arguments among their owners and check them all (a ``TypeError`` naming
    unknown keywords, a ``ValueError`` naming a bad value), before anything is built."""
    unknown = sorted(set(kwargs) - set(NAMES))
    if unknown:
        raise TypeError(f"TempBalance got unexpected keyword argument(s) {unknown}")
    own = {k: v for k, v in kwargs.items() if k in _ARGUMENT_FIELDS}
    args = Arguments(**own)
    mapping = MappingOptions(compat=bool(args.compat), **{k: v for k, v in kwargs.items() if k in MAPPING_FIELDS})
    analysis = {k: v for k, v in kwargs.items() if k in ANALYSIS_FIELDS}
    min_eigs = analysis.pop("min_eigs", None)
    options = AnalysisOptions(**analysis, **({} if min_eigs is None else {"min_eigs": min_eigs}))
    return Parsed(args, mapping, options, min_eigs)


_ARGUMENT_FIELDS = field_names(Arguments)
NAMES: tuple[str, ...] = _ARGUMENT_FIELDS + MAPPING_FIELDS + ANALYSIS_FIELDS


def _defaults() -> dict[str, Any]:
    out = {f.name: f.default for f in dataclasses.fields(Arguments)}
    out.update({f.name: f.default for f in dataclasses.fields(MappingOptions) if f.name in MAPPING_FIELDS})
    out.update({f.name: f.default for f in dataclasses.fields(AnalysisOptions) if f.name in ANALYSIS_FIELDS})
    out["min_eigs"] = None
    return out


def signature(model_type: Any = torch.nn.Module) -> inspect.Signature:
    """The signature TempBalance shows: ``(model, optimizer, *, preset=None, <every keyword of NAMES>,
    **preset_choice)``."""
    kw = inspect.Parameter.KEYWORD_ONLY
    defaults = _defaults()
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=model_type),
              inspect.Parameter("optimizer", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("preset", kw, default=None, annotation="str | None")]
    params += [inspect.Parameter(n, kw, default=defaults[n]) for n in NAMES]
    params.append(inspect.Parameter("preset_choice", inspect.Parameter.VAR_KEYWORD, annotation="Any"))
    return inspect.Signature(params)
