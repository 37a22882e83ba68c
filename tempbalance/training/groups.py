"""Param-group bookkeeping of TempBalance: the optimizer side of ``lr = base_lr(t) x factor`` (SPEC §3).

TempBalance decides the factors; this module edits the optimizer. Two pure functions and one small owner:

* :func:`split_by_unit` - every param group split so that each holds the parameters of one key (all
  hyper-parameters copied, the splits right after their source, never merged); also says which source group each
  new group came from.
* :func:`remap_per_group` - a scheduler's per-group lists (``base_lrs``, ``lr_lambdas``, ...) built over the source
  groups, extended to the split ones (everything checked before anything is written).
* :class:`FactoredGroups` - owns the groups of one optimizer for one TempBalance: the key of every group, its
  un-factored value of the target hyper-parameter (``scheduled``: what the user's schedule says now; not torch's
  ``base_lrs``, which are the *initial* LRs), the value it last wrote, with :meth:`~FactoredGroups.restore_base`,
  :meth:`~FactoredGroups.capture_base`, :meth:`~FactoredGroups.sync_external`, :meth:`~FactoredGroups.apply` and its
  own ``state_dict``. One optimizer has at most one live owner: a new one takes the groups over from the un-factored
  values and the old one is released (its TempBalance then refuses to step).

A key is any string, looked up per *parameter* (``owner`` maps each parameter to one key), and ``apply`` takes a
factor per key. TempBalance's keys are units (a block, a layer); a finer scheme needs no change here: a factor per
parameter is a key per parameter, and a norm that borrows the LR of the weight before it maps to that weight's key.
"""
from __future__ import annotations

import copy
import math
import weakref
from typing import Any, Iterable, Mapping, Sequence

import torch

from .._warn import warn
from .commit import group_values

UNIT_KEY = "tb_unit"      # informational group key: the key (unit) whose factor the group follows
FACTOR_KEY = "tb_factor"  # informational group key: the factor last applied
# scheduler attributes that hold one entry per param group (torch's schedulers; transformers' are LambdaLRs)
PER_GROUP_ATTRS = ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs", "max_lrs", "base_momentums", "max_momentums")
_INPLACE_KEYS = ("lr", "weight_decay")  # written in place when tensors: every group needs its own


def read(group: dict, key: str) -> float:
    """``group[key]`` as a float (fused/capturable optimizers hold tensors)."""
    v = group[key]
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def write(group: dict, key: str, value: float) -> None:
    """Set ``group[key]``; a tensor value is filled in place (the optimizer holds that tensor)."""
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


def copy_hparams(group: dict) -> dict:
    """Every hyper-parameter of ``group`` (tensors cloned), without its params."""
    return {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)) for k, v in group.items()
            if k != "params"}


def schedulers_in(sched: Any) -> list[Any]:
    """``sched`` and, recursively, the schedulers it chains (SequentialLR, ChainedScheduler)."""
    out = [sched]
    for s in getattr(sched, "_schedulers", []) or []:
        out.extend(schedulers_in(s))
    return out


def split_by_unit(groups: Sequence[dict], owner: Mapping[int, str]) -> tuple[list[dict], list[int]]:
    """``groups`` split by key: ``owner`` maps ``id(param)`` to its key (absent: no key, factor 1).

    Returns the new groups and, for each, the index of its source group. A group whose parameters share one key is
    kept as a shallow copy; a mixed one becomes one group per key in first-seen order, each with a copy of every
    hyper-parameter (tensor hyper-parameters cloned, so in-place writes of one group's ``lr`` never reach another).
    The inputs are not modified. Each new group has ``UNIT_KEY`` set.
    """
    out: list[dict] = []
    src: list[int] = []
    for gi, g in enumerate(groups):
        buckets: dict[str | None, list] = {}
        for p in g["params"]:
            buckets.setdefault(owner.get(id(p)), []).append(p)
        if not buckets:
            buckets[None] = []  # an empty group keeps its place
        for k, (key, params) in enumerate(buckets.items()):
            ng = dict(g) if k == 0 else copy_hparams(g)
            ng["params"], ng[UNIT_KEY] = params, key
            out.append(ng)
            src.append(gi)
    seen: set[int] = set()
    for g in out:
        for key in _INPLACE_KEYS:
            v = g.get(key)
            if isinstance(v, torch.Tensor):
                if id(v) in seen:
                    g[key] = v = v.clone()
                seen.add(id(v))
    return out, src


def _per_group_lists(scheduler: Any) -> list[tuple[Any, str, list]]:
    return [(s, attr, lst) for s in schedulers_in(scheduler) for attr in PER_GROUP_ATTRS
            if isinstance(lst := getattr(s, attr, None), list)]


def _remap_changes(scheduler: Any, src: Sequence[int], n_old: int) -> list[tuple[Any, str, list]]:
    n_new = len(src)
    changes = []
    for s, attr, lst in _per_group_lists(scheduler):
        if len(lst) == n_old and n_old != n_new:
            changes.append((s, attr, [lst[i] for i in src]))
        elif len(lst) != n_new and attr == "base_lrs":
            raise ValueError(
                f"base_scheduler {type(s).__name__} has {len(lst)} base_lrs, but the optimizer had {n_old} param "
                f"groups (TempBalance splits them by unit into {n_new}); build the scheduler on the same optimizer")
    return changes


def remap_per_group(scheduler: Any, src: Sequence[int], n_old: int) -> None:
    """Extend ``scheduler``'s per-group lists (and those of the schedulers it chains) from the ``n_old`` source
    groups to the groups ``src`` describes (``src[j]``: source of group ``j``). Lists that already have one entry
    per new group are left alone. A ``base_lrs`` of any other length is a ``ValueError``, raised before any list
    changes."""
    for s, attr, lst in _remap_changes(scheduler, src, n_old):
        setattr(s, attr, lst)


def check_groups(groups: Sequence[dict], target: str, optimizer: Any = None, start: int = 0) -> None:
    """Raise ``ValueError`` naming the first group TempBalance cannot scale (``start``: index of ``groups[0]``)."""
    for i, g in enumerate(groups, start=start):
        if target not in g:
            raise ValueError(f"optimizer param group {i} has no {target!r}"
                             + (" (target='weight_decay' needs it in every group)" if target != "lr" else ""))
        if target == "lr" and g.get("relative_step", False):
            raise ValueError(
                f"optimizer param group {i}: Adafactor with relative_step=True computes its own learning rate "
                "and ignores 'lr'; use relative_step=False with a fixed lr, or target='weight_decay'")


def _single_group_only(optimizer: Any) -> str | None:
    """The name of the optimizer (or of the one a wrapper holds) that supports one param group only."""
    for _ in range(4):
        if isinstance(optimizer, torch.optim.LBFGS):
            return type(optimizer).__name__
        optimizer = getattr(optimizer, "optimizer", None)
        if optimizer is None:
            return None
    return None


def check_base_scheduler(optimizer: Any, scheduler: Any) -> None:
    """A base scheduler TempBalance can step: one with ``step()``, built on ``optimizer`` (or on none, as a
    ``LambdaLR`` wrapper may be). Without one, an optimizer whose groups have ``initial_lr`` gets a warning: a
    scheduler stepped outside TempBalance overwrites or compounds the factors."""
    if scheduler is None:
        if any("initial_lr" in g for g in optimizer.param_groups):
            warn("TempBalance: the optimizer's groups have 'initial_lr', so an LR scheduler seems attached; pass it as "
                 "base_scheduler= so TempBalance steps it (a scheduler stepped outside TempBalance overwrites or "
                 "compounds the factors)")
        return
    if not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"base_scheduler must have a step() method, got {type(scheduler).__name__}")
    for sub in schedulers_in(scheduler):
        opt = getattr(sub, "optimizer", None)
        if opt is not None and opt is not optimizer and opt.param_groups is not optimizer.param_groups:
            raise ValueError(f"base_scheduler ({type(sub).__name__}) was built on a different optimizer than the one "
                             "given to TempBalance")


_OWNERS: "weakref.WeakSet[FactoredGroups]" = weakref.WeakSet()


class FactoredGroups:
    """The param groups of one optimizer as one TempBalance owns them.

    Construction splits the groups by ``owner`` (``id(param) -> key``, built from the model's structure, so a
    parameter frozen now gets its key's factor once it trains) and takes the current values of ``target`` as the
    un-factored ones. If another live owner holds this optimizer's groups, it is released first (its values
    restored un-factored), so two owners never compound. Invalid groups are a ``ValueError`` before any change.

    Per group: ``units[i]`` (its key or None), ``scheduled[i]`` (the un-factored value), ``written[i]`` (what
    :meth:`apply` wrote, as stored: a float32 tensor rounds), ``factors[i]`` (the factor applied).
    """

    def __init__(self, optimizer: Any, owner: Mapping[int, str], *, target: str = "lr",
                 params: Iterable[torch.Tensor] = (), scheduler: Any = None):
        groups = optimizer.param_groups
        check_groups(groups, target)
        new, src = split_by_unit(groups, owner)
        single = _single_group_only(optimizer)
        if single and len(new) > 1:
            raise ValueError(
                f"{single} supports a single param group, and TempBalance needs one group per unit ({len(new)} "
                f"groups here: units {sorted({str(g[UNIT_KEY]) for g in new})[:4]}...); use another optimizer "
                "(SGD, Adam, ...) with TempBalance")
        remap = _remap_changes(scheduler, src, len(groups)) if scheduler is not None else []
        previous = owner_of(optimizer)
        if previous is not None:
            previous.release("a newer TempBalance was built on the same optimizer and took over its param groups "
                             "from the un-factored learning rates")
            new, src = split_by_unit(groups, owner)  # the values are un-factored now
        self.optimizer, self.target = optimizer, target
        self._owner = dict(owner)
        self._params = list(params)  # keeps the ids in ``owner`` meaning these tensors
        self.released: str | None = None
        self.n_source = len(groups)
        self.src = list(src)
        self._install(new, src, 0)
        self.units: list[str | None] = [g[UNIT_KEY] for g in new]
        self.scheduled = [read(g, target) for g in new]
        self.written = list(self.scheduled)
        self.factors = [1.0] * len(new)
        self.had_initial_lr = ["initial_lr" in g for g in new]
        self.held: list[float] | None = None  # see hold()
        for sched, attr, lst in remap:
            setattr(sched, attr, lst)
        _OWNERS.add(self)

    # --- the groups ---------------------------------------------------------------------------------------------
    @property
    def groups(self) -> list[dict]:
        """The optimizer's groups now (``optimizer.load_state_dict`` replaces the list and its dicts)."""
        return self.optimizer.param_groups

    def _install(self, new: list[dict], sources: list[int], start: int) -> None:
        """``groups[start:] = new``, ``sources[j]``: index (in the groups now) of the group ``new[j]`` came from. The
        first split of a source updates that dict itself, so a user's reference to their group stays the
        optimizer's."""
        groups = self.groups
        first: set[int] = set()
        for j, s in enumerate(sources):
            if s not in first:
                first.add(s)
                groups[s].update(new[j])
                new[j] = groups[s]
        groups[start:] = new  # in place: wrappers (SAM, accelerate) share this list

    def in_sync(self) -> bool:
        """Whether the optimizer still has the groups this object manages (none added or removed)."""
        return len(self.groups) == len(self.units)

    def adopt_added(self, scheduler: Any = None) -> list[int]:
        """Take over the groups appended since (``optimizer.add_param_group``): split by key like the others,
        their current value as the un-factored one. Returns the indices of the new groups. A ``ValueError`` before
        any change when they cannot be taken: a base scheduler whose per-group lists cover only the old groups
        would never schedule them, and removed groups cannot be matched to their units."""
        groups = self.groups
        n = len(self.units)
        if len(groups) < n:
            raise RuntimeError(f"the optimizer has {len(groups)} param groups, TempBalance manages {n}: groups were "
                               "removed after TempBalance was built; build it after the optimizer is final")
        if len(groups) == n:
            return []
        if scheduler is not None:
            short = [f"{type(s).__name__}.{attr}" for s, attr, lst in _per_group_lists(scheduler) if len(lst) == n]
            if short:
                raise ValueError(
                    f"param group(s) {list(range(n, len(groups)))} were added (optimizer.add_param_group) after the "
                    f"base scheduler was built: {', '.join(short[:3])} cover(s) only the {n} groups before, so the "
                    "new groups would never be scheduled. Put every parameter into the optimizer before building the "
                    "scheduler and TempBalance (frozen ones too: a parameter gets its unit's factor once it trains)")
        check_groups(groups[n:], self.target, start=n)
        new, src = split_by_unit(groups[n:], self._owner)
        self.src += [self.n_source + s for s in src]
        self.n_source += len(groups) - n
        self._install(new, [n + s for s in src], n)
        self.units += [g[UNIT_KEY] for g in new]
        self.scheduled += [read(g, self.target) for g in new]
        self.written += self.scheduled[n:]
        self.factors += [1.0] * len(new)
        self.had_initial_lr += ["initial_lr" in g for g in new]
        return list(range(n, len(self.units)))

    # --- values -------------------------------------------------------------------------------------------------
    def restore_base(self) -> None:
        """Write the un-factored values into the groups (before a base scheduler reads and steps them)."""
        for i, (g, v) in enumerate(zip(self.groups, self.scheduled)):
            write(g, self.target, v)
            self.written[i] = read(g, self.target)

    def capture_base(self) -> None:
        """Take the groups' values as the un-factored ones (after a base scheduler stepped them)."""
        self.scheduled = [read(g, self.target) for g in self.groups[:len(self.units)]]
        self.written = list(self.scheduled)

    def external_changes(self) -> list[int]:
        """Groups whose value differs from what :meth:`apply` last wrote (set outside: manual warmup, ...)."""
        return [i for i, g in enumerate(self.groups[:len(self.units)]) if read(g, self.target) != self.written[i]]

    def sync(self, scheduler: Any, strict: bool) -> list[int] | None:
        """Bring the bookkeeping up to date with the optimizer: adopt groups added since, refuse a scheduler built on
        the factored values afterwards, take values set outside as the new un-factored ones (returns those groups).
        ``strict=False`` (inside the optimizer's step) never raises: what it cannot take is left alone (None) for
        the next strict call to refuse."""
        try:
            self.adopt_added(scheduler)
        except (ValueError, RuntimeError):
            if strict:
                raise
            return None
        late = self.scheduler_added()
        if late:
            if strict:
                raise RuntimeError(
                    f"TempBalance: param group(s) {late[:8]} got 'initial_lr' after TempBalance was built: an LR "
                    "scheduler was created on this optimizer afterwards, from the factored learning rates (base x "
                    "factor), and stepping it applies the factors twice. Build the scheduler first and pass it as "
                    "TempBalance(..., base_scheduler=sched); TempBalance steps it")
            return None
        return self.sync_external()

    def sync_external(self) -> list[int]:
        """Take values set outside since the last :meth:`apply` as the new un-factored ones (held ones too);
        returns the groups."""
        changed = self.external_changes()
        held = self.base()
        for i in changed:
            self.scheduled[i] = self.written[i] = read(self.groups[i], self.target)
            if self.held is not None:
                held[i] = self.scheduled[i]
        return changed

    def hold(self) -> None:
        """Hold the un-factored values as they are now until the next :meth:`hold` (a reference that keeps every
        learning rate between its passes, the base one included: compat="tempbalance_lm")."""
        self.held = list(self.scheduled)

    def base(self) -> list[float]:
        """The values the factors multiply: the held ones (groups added since hold the value they came with), or
        the un-factored ones."""
        if self.held is None:
            return self.scheduled
        if len(self.held) < len(self.scheduled):
            self.held += self.scheduled[len(self.held):]
        return self.held

    def scheduler_added(self) -> list[int]:
        """Groups that got ``initial_lr`` since this object took them: an LR scheduler was built on the optimizer
        afterwards, on the factored values."""
        return [i for i, g in enumerate(self.groups[:len(self.units)])
                if "initial_lr" in g and not self.had_initial_lr[i]]

    def attach_scheduler(self, scheduler: Any) -> None:
        """Take ``scheduler`` as the base scheduler after construction: its per-group lists are remapped when it was
        built on the groups before the split. One built afterwards read the factored values as its base
        (``base_lrs[i] == written[i]`` where the factor is not 1): ``ValueError``, nothing changed. Values it
        wrote when built are taken as the un-factored ones."""
        remap = _remap_changes(scheduler, self.src, self.n_source)
        if self.target == "lr":
            for s, attr, lst in _per_group_lists(scheduler):
                if attr != "base_lrs" or len(lst) != len(self.units):
                    continue
                factored = [i for i, b in enumerate(lst) if self.factors[i] != 1.0 and
                            float(b) == self.written[i] != self.scheduled[i]]
                if factored:
                    raise ValueError(
                        f"base_scheduler {type(s).__name__} was built after TempBalance: the base_lrs of param "
                        f"group(s) {factored[:8]} are TempBalance's factored learning rates (base x factor), so the "
                        "factors would apply twice. Build the scheduler before TempBalance and pass it as "
                        "TempBalance(..., base_scheduler=sched)")
        for s, attr, lst in remap:
            setattr(s, attr, lst)
        self.had_initial_lr = ["initial_lr" in g for g in self.groups[:len(self.units)]]
        self.sync_external()

    def apply(self, factors: Mapping[str, float]) -> None:
        """Write ``base()[i] x factors[key of group i]`` into every group (keys absent or None: factor 1)."""
        values, applied = group_values(self.base(), self.units, factors)
        for i, (g, v, f) in enumerate(zip(self.groups, values, applied)):
            write(g, self.target, v)
            self.written[i] = read(g, self.target)
            self.factors[i] = f
            g[FACTOR_KEY] = f

    def release(self, reason: str) -> None:
        """Stop owning the groups: they get their un-factored values back (values set outside since the last
        :meth:`apply` are kept); ``reason`` is what the former owner's TempBalance says when used."""
        if self.released is not None:
            return
        if len(self.groups) > len(self.units):
            self.adopt_added()  # groups added since: theirs are un-factored already, the others get restored
        if self.in_sync():
            self.sync_external()
            self.restore_base()
            for g in self.groups:
                g[FACTOR_KEY] = 1.0
        self.released = reason
        _OWNERS.discard(self)

    # --- checkpointing ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return dict(units=list(self.units), scheduled=list(self.scheduled))

    def check_state(self, state: Any) -> None:
        """``ValueError`` saying what differs if ``state`` does not fit these groups."""
        if not isinstance(state, dict) or not {"units", "scheduled"} <= set(state):
            raise ValueError("param groups: the saved state has no 'units' and 'scheduled'")
        units = list(state["units"])
        if units != self.units:
            raise ValueError(
                f"the param groups differ (saved {len(units)} groups for units {units[:6]}..., now "
                f"{len(self.units)} for {self.units[:6]}...); build the optimizer the same way")
        values = list(state["scheduled"])
        if len(values) != len(units) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ValueError(f"param groups: 'scheduled' must hold {len(units)} finite numbers")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the un-factored values (call :meth:`apply` to write them with the factors)."""
        self.check_state(state)
        self.scheduled = [float(v) for v in state["scheduled"]]


def owner_of(optimizer: Any) -> FactoredGroups | None:
    """The live :class:`FactoredGroups` that owns ``optimizer``'s param groups (through any wrapper that shares
    them), or None."""
    groups = optimizer.param_groups
    for book in list(_OWNERS):
        if book.released is None and book.optimizer.param_groups is groups:
            return book
    return None
