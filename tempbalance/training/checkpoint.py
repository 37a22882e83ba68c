"""TempBalance's checkpoint: a version, the settings it was saved with, and one part per component.

``state_dict()`` nests each component's own state (torch's ``SequentialLR`` and Shampoo's state utilities do the
same): ``groups`` (:class:`~tempbalance.training.groups.FactoredGroups`), ``cadence``, ``base_scheduler``,
``passes`` (:class:`~tempbalance.training.passes.PassRunner`), ``results``
(:class:`~tempbalance.training.results.Results`), ``progress`` (the scheduler's counters) and ``fingerprint`` (the
analysed matrices). Loading checks everything before anything changes: first that every part is there, then the
settings (a setting that differs explains the rest), then each component checks its own part.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

VERSION = 3
# settings added to the checkpoint after version 3 was defined, with the value a state saved without them had
SETTINGS_ADDED = {"compat": None, "normalize": False}
PROGRESS_KEYS = ("step_count", "epoch", "refresh_due")
PREFIX = "TempBalance.load_state_dict: "


def check_layout(state: Any, parts: Mapping[str, Sequence[str] | None]) -> None:
    """``ValueError`` unless ``state`` is a TempBalance state of this version with every part (``parts``: name ->
    keys it must hold, or None for a part that is anything)."""
    if not isinstance(state, dict) or state.get("version") != VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{PREFIX}not a TempBalance state_dict of version {VERSION} (got version {found!r}); save "
                         "it with this tempbalance version")
    for part, keys in parts.items():
        if part not in state or (keys is not None and (not isinstance(state[part], dict)
                                                       or any(k not in state[part] for k in keys))):
            raise ValueError(f"{PREFIX}the state has no valid {part!r} part (expected keys {list(keys or [])})")


def check_settings(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> None:
    """``ValueError`` naming the first setting ``saved`` differs in (one added since the format's version counts
    as its value then)."""
    for key, value in mine.items():
        was = saved.get(key, SETTINGS_ADDED.get(key))
        if was != value:
            raise ValueError(f"{PREFIX}saved with {key}={was!r}, this object has {key}={value!r}")


def check_held(held: Any, n_groups: int) -> None:
    """The base rates a reference holds between passes: one finite number per param group."""
    if not isinstance(held, list) or len(held) != n_groups or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in held):
        raise ValueError(f"{PREFIX}the saved base rates held between passes do not cover this object's {n_groups} "
                         "param groups")
