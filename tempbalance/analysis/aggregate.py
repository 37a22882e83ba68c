"""Per-unit aggregates of per-matrix metrics (a block's mean alpha), on the native core or the numpy reference."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _backend, reference


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
