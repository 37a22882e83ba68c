"""The commit stage of a refresh as pure functions: the rows of a pass -> each unit's value and factor -> each
param group's value.

:func:`unit_factors` is the Python twin of ``csrc/unit_factors.h`` (``tb::packed_unit_factors``, which the CUDA
core runs on the GPU when a refresh never leaves the device): the same steps in the same order - per-matrix values
from the rows that are ok, unit values, failed units set aside, the mapping, failed units keeping their factor,
and every unit keeping its factor when any new one is not finite and positive - so both give the same bits for
the policies the kernel can run (tests/training/test_commit.py holds them against each other). Nothing here
touches a model, an optimizer or the scheduler's state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..analysis.report import LayerResult

if TYPE_CHECKING:
    from .policies import Policy

# statuses that mean "the spectral pass failed for this layer" (its unit keeps its factor), as opposed to "cannot
# be fitted" (too few eigenvalues, flat tail: untuned, factor 1)
FAILED = ("non_finite", "error", "empty")


@dataclass(frozen=True)
class UnitFactors:
    """What a pass means for the units: ``values`` (per unit; NaN for a failed unit or one without a usable
    matrix), ``candidate`` (the factors the policy gave, failed units at their previous factor), ``factors`` (what
    is committed: ``candidate``, or every previous factor when ``taken`` is False)."""

    values: np.ndarray
    candidate: np.ndarray
    factors: np.ndarray
    taken: bool


def merge_rows(last: Sequence[LayerResult] | None, fresh: Sequence[LayerResult], indices: Sequence[int],
               n: int) -> tuple[list[LayerResult], set[int]]:
    """The rows of all ``n`` matrices after a pass over ``indices`` (a stagger slice keeps the ``last`` rows of the
    others), and the set of freshly analysed indices."""
    if len(indices) == n:
        return list(fresh), set(range(n))
    if last is None:
        raise RuntimeError("a partial pass needs a full one before it")
    rows = list(last)
    for i, r in zip(indices, fresh):
        rows[i] = r
    return rows, set(indices)


def failures(rows: Sequence[LayerResult], units: Sequence[str], fresh: set[int]) -> tuple[dict[str, list[str]],
                                                                                            set[str]]:
    """Units with a failed matrix (unit -> the reasons) and those whose failure is in ``fresh`` rows (new in this
    pass: a stale one was reported when it happened)."""
    failed: dict[str, list[str]] = {}
    newly: set[str] = set()
    for i, (u, r) in enumerate(zip(units, rows)):
        if r.status in FAILED:
            failed.setdefault(u, []).append(r.reason or f"layer '{r.name}': {r.status}")
            if i in fresh:
                newly.add(u)
    return failed, newly


def metric_values(rows: Sequence[LayerResult], metric: str) -> np.ndarray:
    """``metric`` of every matrix; NaN where its row is not ok or the value is not finite."""
    v = np.array([getattr(r, metric) if r.ok else math.nan for r in rows], dtype=np.float64)
    v[~np.isfinite(v)] = math.nan
    return v


def unit_factors(values: np.ndarray, unit_index: np.ndarray, n_units: int, failed: np.ndarray,
                 previous: np.ndarray, policy: "Policy") -> UnitFactors:
    """Each unit's value and factor from the per-matrix ``values`` (``unit_index[j]``: the unit of matrix j, in
    ``[0, n_units)``; ``failed[u]``: unit u has a failed matrix and keeps ``previous[u]``). See the module
    docstring for the order of the steps."""
    unit_values = np.array(policy.unit_values(values, unit_index, n_units), dtype=np.float64)
    unit_values[failed] = math.nan
    matrices = np.bincount(unit_index, minlength=n_units)
    candidate = np.array(policy.factors(unit_values, matrices), dtype=np.float64)
    candidate[failed] = previous[failed]
    taken = bool(np.all(np.isfinite(candidate) & (candidate > 0)))
    return UnitFactors(unit_values, candidate, candidate if taken else np.array(previous, dtype=np.float64), taken)


def group_values(base: Sequence[float], group_units: Sequence[str | None],
                 factors: Mapping[str, float]) -> tuple[list[float], list[float]]:
    """Each param group's value ``base[i] x factor of its unit`` (no unit, or a unit without a factor: 1), and
    the factor applied."""
    applied = [float(factors.get(u, 1.0)) if u is not None else 1.0 for u in group_units]
    return [b * f for b, f in zip(base, applied)], applied
