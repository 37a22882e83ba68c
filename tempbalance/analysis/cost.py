"""What one matrix's spectral work costs, and how a set of matrices is split into parts of equal cost.

* Cost: the flops of a matrix's spectral pass, ``S * (max(m, n) * d**2 + 4/3 * d**3)`` for ``S`` slices of
  ``m x n`` with ``d = min(m, n)`` (the Gram of the smaller side, then a symmetric eigensolve).
* :func:`assign`: longest-processing-time first - matrices sorted by cost, largest first (ties by index), each to
  the part with the least cost so far (ties: lowest index). Ranks share a distributed pass this way
  (:mod:`tempbalance.distributed.partition`), and ``stagger`` slices a scheduler's passes the same way.
"""
from __future__ import annotations

import math


def slice_geometry(shape: tuple[int, ...], kind: str, conv_mode: str = "slices") -> tuple[int, int, int]:
    """``(S, m, n)`` of the slice stack the analysis forms (for the cost model; :mod:`tempbalance.spectra`)."""
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if kind == "conv" and conv_mode == "flatten":
        return 1, shape[0], math.prod(shape[1:])
    return math.prod(shape[2:]), shape[0], shape[1]


def cost(shape: tuple[int, ...], kind: str, conv_mode: str = "slices") -> float:
    """Flops of one matrix's spectral pass (module docstring)."""
    if not shape or math.prod(shape) == 0:
        return 0.0
    s, m, n = slice_geometry(shape, kind, conv_mode)
    d, big = min(m, n), max(m, n)
    return float(s) * (big * d * d + 4.0 / 3.0 * d ** 3)


def assign(costs: list[float], world: int) -> tuple[list[int], list[float]]:
    """Owner of each matrix (largest first onto the least-loaded rank) and the cost per rank."""
    loads = [0.0] * world
    owners = [0] * len(costs)
    for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        r = min(range(world), key=lambda r: (loads[r], r))
        owners[k] = r
        loads[r] += costs[k]
    return owners, loads
