"""The policy seam: what a refresh turns into values of one optimizer knob.

A :class:`Policy` is metric -> aggregate -> mapping -> target: it reads one metric of every analysed matrix (alpha,
spectral norm, ...), aggregates it per unit (:meth:`Policy.unit_values`, a block's mean by default), maps the unit
values to factors (:meth:`Policy.factors`) and names the param-group key the factors scale (``target``: ``"lr"`` or
``"weight_decay"``). TempBalance runs one spectral pass and hands the rows to its policy; the commit stage
(:func:`tempbalance.training.commit.unit_factors`) does the rest the same way for every policy: failed units keep
their factor, a non-finite or non-positive factor leaves every unit as it was. A new method is a new policy class
(tens of lines) and a preset - not edits in the scheduler.

* :class:`MappedPolicy` - TempBalance's own: the mean metric of each unit through a
  :class:`~tempbalance.training.mapping.MappingOptions` mapping (TBSigmoid, TBLinearMap, rank), optionally
  normalized to mean factor 1 over the matrices (``tb_lr_normalize``). Its mapping runs on the GPU too
  (:meth:`Policy.device_mapping`).
* :class:`CompatPolicy` - a reference code's rules (:class:`~tempbalance.training.compat.Plan`): every tuned matrix
  is a unit, mapped the reference's way (ModelBalancing's two-level layer factors, ...).

docs/ARCHITECTURE.md shows a custom policy written against this seam.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..analysis.aggregate import unit_means
from .compat import Plan
from .mapping import MappingOptions, normalize_factors

METRICS = ("alpha", "spectral_norm", "stable_rank", "alpha_hat")  # the report columns a policy can follow
TARGETS = ("lr", "weight_decay")  # the param-group keys a policy can scale


class Policy:
    """What a refresh turns into values of one knob (module docstring). Subclasses override :meth:`factors` (and
    :meth:`unit_values` to aggregate otherwise). ``metric``: the report column read (one of ``METRICS``);
    ``target``: the param-group key scaled; ``backend``: where the math runs ("auto", "native", "torch").

    ``reproduces``: the compat schemes (:data:`tempbalance.training.compat.SCHEMES`) whose reference mapping this
    policy computes; ``TempBalance(compat=scheme, policy=...)`` accepts only such a policy."""

    reproduces: tuple[str, ...] = ()

    def __init__(self, *, metric: str = "alpha", target: str = "lr", backend: str = "auto"):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.metric, self.target, self.backend = metric, target, backend

    def bind(self, units: Sequence[str], blocks: Sequence[str | None], plan: Plan | None) -> None:
        """Called once by TempBalance at construction, before the first pass: the units (the order of
        :meth:`factors`' values), the adapter's block of each (``None`` outside blocks or for an adapter without
        blocks; a block unit is its own block) and the compat :class:`~tempbalance.training.compat.Plan` reproduced
        (``None``: none; ``plan.scheme.name`` is the scheme). A policy that cannot serve them raises ``ValueError``
        here, before any optimizer is touched; a policy bound again (a TempBalance built twice on it) starts afresh.
        Nothing by default."""

    def unit_values(self, values: np.ndarray, unit_index: np.ndarray, n_units: int) -> np.ndarray:
        """Per unit, the value its factor follows, from the per-matrix ``values`` (NaN: not usable). Default: the
        mean of the finite values (NaN for a unit without one: it is not tuned, factor 1)."""
        return unit_means(values, unit_index, n_units, backend=self.backend)

    def factors(self, unit_values: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        """The factor of every unit from its value (NaN: untuned, factor 1). ``matrices[u]``: how many analysed
        matrices unit ``u`` has (for means over the matrices). Must not change its inputs."""
        raise NotImplementedError

    def device_mapping(self) -> MappingOptions | None:
        """The mapping, when the CUDA core's ``unit_factors`` kernel computes exactly :meth:`factors` of
        :meth:`unit_values` (so a refresh on the GPU never visits the host), else None."""
        return None

    # --- between refreshes: how committed factors reach the groups (override for a transition) -------------------
    def committed(self, factors: dict[str, float], step: int, groups: Any) -> None:
        """A refresh committed ``factors`` (unit -> factor) at ``step``; ``groups`` is the scheduler's
        :class:`~tempbalance.training.groupset.GroupSet` (None during the first pass, before the groups exist).
        Nothing to do for a policy whose factors act at once."""

    def write(self, book: Any, factors: dict[str, float], step: int) -> None:
        """Write this policy's knob into one optimizer's groups (a :class:`~tempbalance.training.groups.
        FactoredGroups` of ``target``) at ``step``: ``base(t) x factor`` by default."""
        book.apply(factors)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs of this policy (a transition in progress); empty for a stateless one."""
        return {}

    def check_state(self, state: Any) -> None:
        """``ValueError`` saying why ``state`` (a checkpoint's part) does not fit this policy; nothing changes.
        By default: a state for a policy that keeps none (one with its own ``load_state_dict`` checks it there)."""
        if state and type(self).load_state_dict is Policy.load_state_dict:
            raise ValueError(f"{type(self).__name__} keeps no state, the checkpoint holds {sorted(state)}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)

    def describe(self) -> str:
        return f"{type(self).__name__}(metric={self.metric}, target={self.target})"


class MappedPolicy(Policy):
    """TempBalance's policy: unit means of ``metric`` through ``mapping``; ``normalize``: factors divided by their
    mean over the analysed matrices (a unit's factor counts once per matrix)."""

    def __init__(self, mapping: MappingOptions | None = None, *, normalize: bool = False, **policy: Any):
        super().__init__(**policy)
        self.mapping = MappingOptions() if mapping is None else mapping
        self.normalize = normalize

    def factors(self, unit_values: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        factors = self.mapping.factors(unit_values, backend=self.backend)
        if self.normalize:
            factors = normalize_factors(factors, matrices.astype(np.float64), backend=self.backend)
        return factors

    def device_mapping(self) -> MappingOptions | None:
        return None if self.normalize else self.mapping

    def describe(self) -> str:
        return (f"MappedPolicy(metric={self.metric}, target={self.target}, mapping={self.mapping.mapping}"
                f"{', normalize' if self.normalize else ''})")


class CompatPolicy(Policy):
    """A reference code's mapping (:meth:`Plan.factors`): its units are the tuned matrices, one value each."""

    def __init__(self, plan: Plan, mapping: MappingOptions, **policy: Any):
        super().__init__(**policy)
        self.plan, self.mapping = plan, mapping

    def factors(self, unit_values: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        return self.plan.factors(unit_values, options=self.mapping, backend=self.backend)

    def describe(self) -> str:
        return f"CompatPolicy({self.plan.scheme.name}, metric={self.metric}, target={self.target})"
