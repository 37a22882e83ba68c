"""The first of TempBalance's three stages (select -> refresh -> apply): which matrices it analyses, which unit each
belongs to, and which parameters each unit's factor reaches.

:func:`select` reads the model through its adapter: the matrices the adapter enumerates, filtered by
``include``/``exclude`` regular expressions and (block adapters) by what the adapter tunes, the first / last unit
dropped on request; under ``compat`` a reference code's :class:`~tempbalance.compat.Plan` decides instead (its tuned
matrices are the units, and it says which matrix's factor every parameter takes). Which unit a parameter belongs to
follows the model's structure, not ``requires_grad``: a parameter frozen now gets its unit's factor once it trains.
A checkpoint records the :attr:`Selection.fingerprint` (names and shapes), and :func:`check_fingerprint` says how
another model differs.
"""
from __future__ import annotations

import collections
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

from torch import nn

from . import compat as _compat
from ..adapters import MatrixSpec, unanalysed, unwrap_model

UNITS = ("block", "layer")


@dataclass
class Selection:
    """What :func:`select` chose.

    ``specs``: the analysed matrices, in model order; ``spec_units``: the unit of each; ``units``: the units, in
    order of first appearance; ``unit``: the unit mode (``"block"`` | ``"layer"``); ``plan``: the reference's plan
    under compat (else None); ``skipped``: (name, reason) of weights no adapter rule covers (a report's
    ``skipped``); ``fingerprint``: ``[name, shape]`` of every analysed matrix; ``owner``: ``id(param) -> unit`` for
    every parameter a unit drives, and ``params`` those parameters (keeping the ids meaning these tensors).
    """

    specs: list[MatrixSpec]
    spec_units: list[str]
    units: list[str]
    unit: str
    plan: _compat.Plan | None
    skipped: list[tuple[str, str]]
    fingerprint: list[list]
    owner: dict[int, str]
    params: list[nn.Parameter]


def unit_mode(adapter: Any, unit: str | None) -> str:
    """``unit`` (``None``: the adapter's choice), checked."""
    mode = unit if unit is not None else getattr(adapter, "default_unit", "block")
    if mode not in UNITS:
        raise ValueError(f"unit must be 'block', 'layer' or None (the adapter's choice), got {unit!r}")
    return mode


def patterns(arg: str, value: str | Iterable[str] | None) -> list[re.Pattern]:
    """``value`` (one regular expression or several; None: none) compiled; a bad one is a ``ValueError`` naming
    ``arg``."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for p in items:
        try:
            out.append(re.compile(p))
        except (re.error, TypeError) as e:
            raise ValueError(f"{arg}: {p!r} is not a valid regular expression ({e})") from None
    return out


def select(model: nn.Module, optimizers: Any, adapter: Any, *, unit: str | None = None,
           include: str | Iterable[str] | None = None, exclude: str | Iterable[str] | None = None,
           remove_first: bool = False, remove_last: bool = False, include_embeddings: bool = False,
           compat: bool | str = False, min_eigs: int = 50, normalize: bool = False) -> Selection:
    """The matrices of ``model`` that TempBalance analyses and the parameters their units drive in ``optimizers``
    (one optimizer or a list).

    ``unit``: ``"block"``, ``"layer"`` or None (the adapter's choice; under ``compat`` the scheme's). ``compat``:
    True (the adapter's default scheme) or a scheme name; ``min_eigs`` and ``normalize`` go to its plan.
    No matrix at all is one warning (every group keeps factor 1); an optimizer that holds none of the model's
    parameters is a ``ValueError``.
    """
    inc, exc = patterns("include", include), patterns("exclude", exclude)
    found = adapter.enumerate(model, include_embeddings=include_embeddings)
    skipped = unanalysed(unwrap_model(model), found)
    specs = [s for s in found
             if (not inc or any(p.search(s.name) for p in inc)) and not any(p.search(s.name) for p in exc)]
    plan = None
    if compat:
        scheme = _compat.default_scheme(adapter, specs) if compat is True else compat
        plan = _compat.plan(unwrap_model(model), specs, scheme=scheme, blocks=_compat.block_of_specs(adapter, specs),
                            unit=unit, min_eigs=min_eigs, remove_first=remove_first, remove_last=remove_last,
                            normalize=normalize)
        mode, specs = plan.unit, list(plan.specs)
        spec_units = [s.name for s in specs]  # every tuned matrix is a unit
        units = spec_units + list(plan.extra_units)  # and the plan's units without a matrix (LLR's)
    else:
        mode = unit_mode(adapter, unit)
        tuned = getattr(adapter, "tuned", None)  # block adapters report heads/poolers but do not tune them
        specs = [s for s in specs if tuned is None or tuned(s)]
        key = (lambda s: s.name) if mode == "layer" else (lambda s: s.unit)
        units = list(dict.fromkeys(key(s) for s in specs))
        drop = set(units[:1] if remove_first else []) | set(units[-1:] if remove_last else [])
        specs = [s for s in specs if key(s) not in drop]
        units = [u for u in units if u not in drop]
        spec_units = [key(s) for s in specs]
    if not specs:
        names = (f"; not analysed: {', '.join(f'{n} ({r})' for n, r in skipped[:3])}"
                 f"{' ...' if len(skipped) > 3 else ''}") if skipped else ""
        warnings.warn("TempBalance: no matrix to analyse (check include/exclude and the adapter"
                      f"{names}); every group keeps factor 1", UserWarning, stacklevel=3)
    fingerprint = [[s.name, list(s.weight().shape)] for s in specs]
    owner, params = _owners(model, optimizers if isinstance(optimizers, (list, tuple)) else [optimizers], adapter,
                            specs, units, mode, plan)
    return Selection(specs, list(spec_units), units, mode, plan, skipped, fingerprint, owner, params)


def unit_blocks(chosen: Selection, adapter: Any) -> list[str | None]:
    """The adapter's block of every unit of ``chosen`` (that of its first matrix; ``None`` outside blocks or for an
    adapter without blocks): what a policy groups units by (:meth:`~tempbalance.training.policies.Policy.bind`).
    Call it after :func:`select` enumerated the model through ``adapter``."""
    first: dict[str, str | None] = {}
    for u, b in zip(chosen.spec_units, _compat.block_of_specs(adapter, chosen.specs)):
        first.setdefault(u, b)
    return [first.get(u) for u in chosen.units]


def _owners(model: nn.Module, optimizers: list[Any], adapter: Any, specs: list[MatrixSpec], units: list[str], mode: str,
            plan: _compat.Plan | None) -> tuple[dict[int, str], list[nn.Parameter]]:
    """``id(param) -> unit`` for every parameter a unit drives (the first unit wins for a shared one), and those
    parameters. An optimizer that holds none of the model's parameters is a ``ValueError``: nothing could ever be
    tuned."""
    model_params = {id(p) for p in model.parameters()}
    opt_params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    if opt_params and not any(id(p) in model_params for p in opt_params):
        raise ValueError(
            f"none of the optimizer's {len(opt_params)} parameters belongs to the model given to TempBalance "
            f"({type(model).__name__}); pass the model whose parameters the optimizer trains")
    if plan is not None:  # the reference's rule: which tuned matrix's factor each parameter takes
        unit_params: dict[str, list[nn.Parameter]] = collections.defaultdict(list)
        for n, p in unwrap_model(model).named_parameters():
            if (o := plan.owners.get(n)) is not None:
                unit_params[o].append(p)
    else:
        unit_params = adapter.unit_params(model, specs, mode)
    owner: dict[int, str] = {}
    params: list[nn.Parameter] = []
    for u in units:
        for p in unit_params.get(u, []):
            if id(p) not in owner:
                owner[id(p)] = u
                params.append(p)
    return owner, params


def check_fingerprint(mine: list, saved: list) -> None:
    """``ValueError`` saying how the matrices ``saved`` (a checkpoint's fingerprint) differ from ``mine``: missing,
    new or reshaped layers, or another order."""
    ours = {n: tuple(s) for n, s in mine}
    theirs = {n: tuple(s) for n, s in saved}
    if ours == theirs and [n for n, _ in saved] == [n for n, _ in mine]:
        return
    missing = [n for n in theirs if n not in ours]
    added = [n for n in ours if n not in theirs]
    reshaped = [f"'{n}' {theirs[n]} -> {ours[n]}" for n in theirs if n in ours and theirs[n] != ours[n]]
    parts = [f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}" for label, items in
             (("layers missing now:", missing), ("new layers:", added), ("shapes changed:", reshaped)) if items]
    raise ValueError("the model differs from the one saved - "
                     + ("; ".join(parts) or "the layers are in a different order"))
