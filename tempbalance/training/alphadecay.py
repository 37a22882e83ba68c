"""AlphaDecay (He et al., NeurIPS 2025, arXiv 2506.14562) as a policy: module-wise weight decay from alpha.

Modules with heavier-tailed spectra (smaller alpha) get weaker decay, lighter-tailed ones stronger decay: the weight
decay of every unit is the group's base weight decay times a factor of its alpha, one of the reference's assign
functions (``hed-ucas/AlphaDecay``, ``LLaMa-pretraining/WeightDecayUnbalance.py``, WDU below):

* ``"tb_linear_map"`` (the published runs): ``wd_min_ratio`` at the smallest alpha to ``wd_max_ratio`` at the
  largest, linearly (WDU:334-337; TempBalance's TBLinearMap);
* ``"tb_sqrt"`` / ``"tb_log2"``: ``sqrt(alpha)`` / ``log2(alpha)`` over its mean, so the mean factor over the
  matrices is 1 (WDU:338-341);
* ``"layerwise_sigmoid"``: within each group of units, ``2 / (1 + exp(-sigmoid_alpha * z))`` of the alpha's
  z-score in the group (WDU:342-358); the groups are the adapter's blocks (``unit="layer"`` makes every matrix of a
  block a unit of that block).

Used alone (``TempBalance(model, opt, policy=AlphaDecay(), unit="layer", interval=500)``), beside a learning-rate
policy (``policy=[MappedPolicy(), AlphaDecay()]``: one spectral pass drives both knobs), or as the reference under
``compat="alphadecay"`` (presets ``alphadecay-*``), where it follows WDU's arithmetic to the last bit: the ``+1e-8``
terms of ``tb_sqrt`` / ``tb_log2`` / ``layerwise_sigmoid``, equal alphas mapped to ``wd_max_ratio``, and the
groups of ``layerwise_sigmoid`` given by the third part of a module's name (``name.split('.')[2]``: the block index
of ``model.layers.3.mlp.up_proj``). docs/COMPAT.md lists what the default does differently.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .compat import Plan
from .mapping import MappingOptions
from .policies import Policy

ASSIGNS = ("tb_linear_map", "tb_sqrt", "tb_log2", "layerwise_sigmoid")
SCHEME = "alphadecay"  # the compat scheme this policy reproduces (tempbalance.training.compat.SCHEMES)


def _number(arg: str, v: Any, *, positive: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) \
            or (positive and v <= 0):
        raise ValueError(f"AlphaDecay: {arg} must be a finite number{' > 0' if positive else ''}, got {v!r}")
    return float(v)


class AlphaDecay(Policy):
    """Weight decay x a factor of each unit's alpha (module docstring).

    ``assign``: one of :data:`ASSIGNS`; ``wd_min_ratio`` / ``wd_max_ratio``: the ends of ``"tb_linear_map"``
    (the reference's class defaults 0.5 and 1.5; its published runs 0.6666 and 3 or 5: the presets);
    ``sigmoid_alpha``: the slope of ``"layerwise_sigmoid"``; ``metric``: what the factors follow (alpha; under
    compat only alpha). Units without a fitted value (NaN) keep factor 1 and are left out of every min, max, mean
    and z-score. A policy object serves one TempBalance (it learns the units' groups at construction).
    """

    reproduces = (SCHEME,)

    def __init__(self, assign: str = "tb_linear_map", *, wd_min_ratio: float = 0.5, wd_max_ratio: float = 1.5,
                 sigmoid_alpha: float = 4.0, metric: str = "alpha", backend: str = "auto"):
        super().__init__(metric=metric, target="weight_decay", backend=backend)
        if assign not in ASSIGNS:
            raise ValueError(f"AlphaDecay: assign must be one of {ASSIGNS}, got {assign!r}")
        self.assign = assign
        self.wd_min_ratio = _number("wd_min_ratio", wd_min_ratio, positive=True)
        self.wd_max_ratio = _number("wd_max_ratio", wd_max_ratio, positive=True)
        self.sigmoid_alpha = _number("sigmoid_alpha", sigmoid_alpha, positive=False)
        self.compat = False
        self.groups: np.ndarray | None = None  # layerwise_sigmoid: the group index of every unit (None: one group)

    def bind(self, units: Sequence[str], blocks: Sequence[str | None], plan: Plan | None) -> None:
        """The reference's arithmetic under ``compat="alphadecay"`` (only for ``metric="alpha"``, what it was
        published and tested with); ``layerwise_sigmoid``'s groups: the adapter's blocks (units outside every block
        form one group), under compat the third part of each name, as WDU:329 (a name without one is refused: the
        reference raises IndexError there)."""
        self.compat = plan is not None and plan.scheme.name == SCHEME
        if self.compat and self.metric != "alpha":
            raise ValueError(f"compat={SCHEME!r} reproduces AlphaDecay with metric='alpha' (esd_metric_for_tb alpha, "
                             f"the published runs); got metric={self.metric!r}: drop compat to follow another metric")
        self.groups = None
        if self.assign != "layerwise_sigmoid":
            return
        if self.compat:
            short = [u for u in units if len(u.split(".")) < 3]
            if short:
                raise ValueError(f"AlphaDecay(assign='layerwise_sigmoid') under compat groups modules by the third "
                                 f"part of their name (name.split('.')[2], WeightDecayUnbalance.py:329); layer "
                                 f"'{short[0]}' has none (the reference raises IndexError): drop compat to group "
                                 "by the adapter's blocks")
            keys: list[Any] = [u.split(".")[2] for u in units]
        else:
            keys = list(blocks)
        index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        self.groups = np.array([index[k] for k in keys], dtype=np.int64)

    def factors(self, unit_values: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        v = np.asarray(unit_values, dtype=np.float64)
        tuned = np.isfinite(v)
        out = np.ones_like(v)
        if not tuned.any():
            return out
        if self.assign == "tb_linear_map":
            return MappingOptions(mapping="linear", s1=self.wd_min_ratio, s2=self.wd_max_ratio,
                                  compat=self.compat).factors(np.where(tuned, v, np.nan), backend=self.backend)
        if self.assign in ("tb_sqrt", "tb_log2"):
            g = np.sqrt(v[tuned]) if self.assign == "tb_sqrt" else np.log2(v[tuned])
            if self.compat:  # WDU:339, 341: the 1e-8 inside the sum, n the tuned modules
                out[tuned] = g / np.sum(g + 1e-8) * g.size
            else:  # over the mean across the matrices: a unit of k matrices counts k times
                w = np.asarray(matrices, dtype=np.float64)[tuned]
                out[tuned] = g / (np.sum(w * g) / np.sum(w))
            return out
        groups = np.zeros(v.size, dtype=np.int64) if self.groups is None else self.groups
        if groups.size != v.size:
            raise ValueError(f"AlphaDecay was bound to {groups.size} units and got {v.size} values; a policy object "
                             "serves one TempBalance")
        for k in np.unique(groups[tuned]):
            members = tuned & (groups == k)
            x = v[members]
            std = np.std(x)
            if self.compat:  # WDU:349-351
                z = (x - np.mean(x)) / (std + 1e-8)
            else:  # equal alphas: the base weight decay
                z = (x - np.mean(x)) / std if std > 0 else np.zeros_like(x)
            out[members] = 2 / (1 + np.exp(-self.sigmoid_alpha * z))  # WDU:353
        return out

    def __repr__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        detail = {"tb_linear_map": f"{self.wd_min_ratio:g}..{self.wd_max_ratio:g}",
                  "layerwise_sigmoid": f"sigmoid_alpha={self.sigmoid_alpha:g}"}.get(self.assign, "")
        return (f"AlphaDecay({self.assign}{', ' + detail if detail else ''}, metric={self.metric}"
                f"{', compat' if self.compat else ''})")
