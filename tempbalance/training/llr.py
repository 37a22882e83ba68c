"""LLR - "One LR Doesn't Fit All: Heavy-Tail Guided Layerwise Learning Rates for LLMs" (arXiv 2605.22297): TempBalance
for pretraining, with AdamW or with Muon + AdamW, as a policy.

Every refresh maps each analysed matrix's alpha linearly onto ``[lr_min_ratio, lr_max_ratio]`` (the smallest alpha
gets ``lr_min_ratio``, the largest ``lr_max_ratio``: less heavy-tailed layers learn faster), the embedding and the
LM head get ``edge_factor`` (``lr_max_ratio`` by default), and the new learning rates are reached linearly over
``linear_steps`` updates. One :class:`LLR` serves both ways TempBalance can run it:

* **default** (``TempBalance(model, opts, policy=LLR(...), unit="layer", interval=100)``): every factor moves
  linearly from the one in force to the new one over ``linear_steps`` updates, always multiplied onto the base
  schedule (``lr = base(t) x factor(t)``: never compounding, the schedule followed during a transition too); the
  first refresh ramps from factor 1. Units whose name contains an ``edge_names`` part (with ``adapter="generic",
  include_embeddings=True``: ``model.embed_tokens``, ``lm_head``) get ``edge_factor`` and stay out of the map's
  range.
* **reference** (``compat="llr"``, what the ``llr-*`` presets set): the reference code update by update
  (``hed-ucas/Layer-wise-Learning-Rate@bbd0dcf``, ``olmo/LRUnbalance.py`` (LU), ``olmo/train.py`` (TR),
  ``galore_utils/training_utils.py`` (GU)). Its units are the plan's (:func:`tempbalance.training.compat.edge_plan`):
  the tuned matrices, the embedding and head, and the rest (norms: :data:`~tempbalance.training.compat.REST_UNIT`).
  A refresh at update ``s`` starts a transition of ``n = linear_steps + 1`` updates (``linear_steps`` at the first
  refresh, LU:347-350): update ``s + j`` runs at ``B + (T - B) (j + 1) / n``, where ``B`` is the learning rate of
  update ``s - 1`` (a transition interrupted by the next refresh included) and ``T`` the new factor times the base
  schedule at update ``s + n - 1`` (LU:264-291, 334-359; GU:110-131); the rest's ``T`` is the smallest ``T`` of
  all listed layers (LU:339). After the transition every group is back on the base schedule times its factor, the
  rest at factor 1 (TR:1086-1105). Before the first update the groups run at ``first_from`` x their base (the
  reference's warmup starts at 0).

The pass timing of the reference - a refresh at update 1 and at every ``unbalancedlr_every``-th update, on the
weights after the update before it, only while ``update <= stop_at * LLR_ratio`` - is :class:`LLRCadence`. The
reference steps its base scheduler before each update (TR:1130-1138), so update ``t`` runs at ``lambda(t)``;
TempBalance steps it after: give it ``LambdaLR(opt, lambda k: f(k + 1))`` to run the reference's schedule ``f``.
docs/COMPAT.md lists what differs and why.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np

from .._warn import warn
from .cadence import Cadence
from .compat import REST_UNIT, Plan
from .policies import Policy


def _count(arg: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{arg} must be an integer >= {lo}, got {v!r}")
    return v


def _positive(arg: str, v: Any, *, zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (v == 0 and not zero):
        raise ValueError(f"{arg} must be a finite number {'>= 0' if zero else '> 0'}, got {v!r}")
    return float(v)


class LLRCadence(Cadence):
    """LLR's refresh steps (TR:1070-1084): the reference analyses at the top of update 1 and of every ``every``-th
    update, while the update is ``<= until`` (``stop_at * LLR_ratio``; None: always). Its pass at update ``s``
    reads the weights after update ``s - 1``: after TempBalance's step ``s - 1``. (The pass at update 1 is
    TempBalance's pass at construction.)"""

    def __init__(self, every: int, *, until: int | None = None):
        self.every = _count("every", every, 1)
        self.until = None if until is None else _count("until", until, 1)

    def due_after_step(self, step: int) -> bool:
        update = step + 1
        return update % self.every == 0 and (self.until is None or update <= self.until)

    def describe(self) -> str:
        return f"LLR: every {self.every} updates" + (f" up to update {self.until}" if self.until else "")


class LLR(Policy):
    """LLR's learning-rate policy (module docstring).

    ``lr_min_ratio`` / ``lr_max_ratio``: the factors of the smallest / largest alpha (LLRConfig's defaults 0.666 and
    3; the published runs 1 and 3 - 5); ``alpha_positively_with_lr=False`` maps the other way round (LU:700-703).
    ``linear_steps``: updates over which a refresh's factors are reached (>= 1; 1 = at once). ``edge_factor``:
    the factor of the embedding and LM head (None: ``lr_max_ratio``, LU:174, 203; the reference's ``embed_lr > 0``
    is ``edge_factor=embed_lr / learning_rate``); ``edge_names``: the name parts that make a unit one of them
    (OptimizerConfig's ``embed_name`` / ``head_name``; under compat the scheme's). ``first_from``: under compat,
    the learning rate before the first update as a share of the base one (0: the reference's warmup starts at 0).
    """

    reproduces = ("llr",)

    def __init__(self, *, lr_min_ratio: float = 0.666, lr_max_ratio: float = 3.0, linear_steps: int = 10,
                 edge_factor: float | None = None, alpha_positively_with_lr: bool = True,
                 edge_names: Sequence[str] = ("embed", "head"), first_from: float = 0.0, until: int | None = None,
                 backend: str = "auto"):
        super().__init__(metric="alpha", target="lr", backend=backend)
        self.lr_min_ratio = _positive("lr_min_ratio", lr_min_ratio)
        self.lr_max_ratio = _positive("lr_max_ratio", lr_max_ratio)
        self.linear_steps = _count("linear_steps", linear_steps, 1)
        self.edge_factor = self.lr_max_ratio if edge_factor is None else _positive("edge_factor", edge_factor)
        if not isinstance(alpha_positively_with_lr, bool):
            raise ValueError(f"alpha_positively_with_lr must be True or False, got {alpha_positively_with_lr!r}")
        self.positive = alpha_positively_with_lr
        if isinstance(edge_names, str) or not all(isinstance(n, str) and n for n in edge_names):
            raise ValueError(f"edge_names must be a sequence of non-empty strings, got {edge_names!r}")
        self.edge_names = tuple(edge_names)
        self.first_from = _positive("first_from", first_from, zero=True)
        self.until = None if until is None else _count("until", until, 1)
        self.units: list[str] = []
        self.reference = False
        self.edges: set[str] = set()
        self._reset()

    def _reset(self) -> None:
        """No refresh yet (a TempBalance built on this policy starts its run here)."""
        self._passes = 0
        self._phase: dict[str, Any] | None = None  # the transition of the last refresh
        self._last: dict[str, float] = {}  # reference: the lr each (optimizer, unit) got for the next update
        self._done: dict[str, float] = {}  # reference: the factors of the last transition that ran to its end
        self._open: dict[str, Any] | None = None  # reference: the transitions since then (the base scheduler idles)
        self._twins: dict[int, tuple[Any, int]] = {}  # reference, after `until`: the idle scheduler, stepped on
        self._warned = False

    # --- what a refresh maps ------------------------------------------------------------------------------------
    def bind(self, units: Sequence[str], blocks: Sequence[str | None], plan: Plan | None) -> None:
        if plan is not None and plan.scheme.name not in self.reproduces:
            raise ValueError(f"LLR reproduces compat='llr', not {plan.scheme.name!r}")
        self.units, self.reference = list(units), plan is not None
        self._reset()  # the policy of a TempBalance built again (a notebook cell run twice) starts afresh
        if self.reference:
            self.edges = set(plan.extra_units) - {REST_UNIT}
        else:
            self.edges = {u for u in units if any(part in u for part in self.edge_names)}

    def factors(self, unit_values: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        """The tuned units' alphas ``np.interp``-ed onto ``[lr_min_ratio, lr_max_ratio]`` between their smallest and
        largest (LU:630-634; all equal: ``lr_max_ratio``), the edge units ``edge_factor``, the rest 1."""
        if len(self.units) != len(unit_values):
            raise RuntimeError(f"LLR was bound to {len(self.units)} units, the pass has {len(unit_values)}")
        out = np.ones(len(unit_values), dtype=np.float64)
        tuned = np.array([u not in self.edges and u != REST_UNIT and math.isfinite(v)
                          for u, v in zip(self.units, unit_values)], dtype=bool)
        if tuned.any():
            v = np.asarray(unit_values, dtype=np.float64)[tuned]
            ratios = [self.lr_min_ratio, self.lr_max_ratio] if self.positive else [self.lr_max_ratio,
                                                                                   self.lr_min_ratio]
            out[tuned] = np.interp(v, [v.min(), v.max()], ratios)
        for k, u in enumerate(self.units):
            if u in self.edges:
                out[k] = self.edge_factor
        return out

    # --- how the factors reach the groups -----------------------------------------------------------------------
    def committed(self, factors: dict[str, float], step: int, groups: Any) -> None:
        first = self._passes == 0
        self._passes += 1
        if not self.reference:  # from the factors in force (1 before the first refresh)
            before = dict(self._phase["now"]) if self._phase else {u: 1.0 for u in factors}
            self._phase = dict(start=step, before=before, now=dict(before))
            return
        span = self.linear_steps if first else self.linear_steps + 1  # LU:347-350
        self._phase = dict(start=step, span=span, first=first, before=None, target=None)
        if self._open is None:  # the base scheduler stops here until a transition runs to its end (TR:1130-1138)
            self._open = dict(start=step, done=dict(self._done), schedulers=None, base=None)
        if groups is not None:  # the first pass commits before the groups exist: its ends are taken at its write
            self._ends(groups, factors)
            if self._open["schedulers"] is None:
                self._idle(groups)

    def write(self, book: Any, factors: dict[str, float], step: int) -> None:
        if not self.reference:
            self._write_default(book, factors, step)
            return
        groups = book.token  # the GroupSet that owns the book
        phase = self._phase
        if phase is not None and phase["target"] is None:
            self._ends(groups, factors)
        if self._open is not None and self._open["schedulers"] is None:
            self._idle(groups)
        i = groups.index_of(book)
        base = book.base()
        after = self.until is not None and step >= self.until and self._open is not None
        idle = self._idle_schedule(groups, book, step - self.until) if after else None
        j = None if phase is None else step - phase["start"]
        out: dict[str, float] = {}
        for u, rep in _representatives(book.units).items():
            key = f"{i}:{u}"
            if after:  # TR:1106-1107, 1136-1138: the scheduler of the last completed transition resumes
                value = self._open["done"].get(u, 1.0) * idle[rep]
            elif j is not None and j < phase["span"] and key in phase["target"]:
                b, t = phase["before"][key], phase["target"][key]
                value = b + (t - b) * (j + 1) / phase["span"]  # GU:130-131 with the LambdaLR's base target_lr
            else:  # on the base schedule (TR:1090-1105): its factor, the rest's 1
                value = base[rep] * factors.get(u, 1.0)
            if after or (j is not None and j < phase["span"]):
                if base[rep] == 0.0:
                    self._warn_zero(u, step, value)
                    value = 0.0
                out[u] = factors.get(u, 1.0) if base[rep] == 0.0 else value / base[rep]
            else:
                out[u] = factors.get(u, 1.0)
            self._last[key] = value
        if not after and j is not None and j >= phase["span"]:  # the transition ran to its end (TR:1087-1105)
            self._done, self._open = dict(factors), None
        book.apply(out)

    def _idle(self, groups: Any) -> None:
        """What the base schedulers were when the transitions since the last completed one began: the reference
        steps them no more until one completes - or, after ``until``, from there on (TR:1106-1107)."""
        self._open["schedulers"] = [copy.deepcopy(s.state_dict()) if s is not None else None
                                    for s in groups.schedulers]
        self._open["base"] = [list(next(b for b in groups.of(i) if b.target == self.target).scheduled)
                              for i in range(len(groups.optimizers))]
        self._twins = {}

    def _idle_schedule(self, groups: Any, book: Any, steps: int) -> list[float]:
        """The un-factored values of ``book``'s groups from its idle scheduler stepped ``steps`` times on: after
        ``until`` the reference steps the scheduler it left at the transitions' start again, one step an update."""
        i = groups.index_of(book)
        twin, done = self._twins.get(i, (None, 0))
        if twin is None or done > steps:
            twin, done = groups.twin(book, self._open["schedulers"][i], self._open["base"][i]), 0
        values = twin.advance(steps - done)
        self._twins[i] = (twin, steps)
        return values

    def _ends(self, groups: Any, factors: dict[str, float]) -> None:
        """Both ends of the transition of the pass just committed, for every (optimizer, unit): the learning rate
        of the update before it and the target: the factor times the base schedule ``span - 1`` updates on
        (LU:264-291, 334-344); the rest's target is the smallest of the others' (LU:339)."""
        phase = self._phase
        before: dict[str, float] = {}
        target: dict[str, float] = {}
        rest: list[str] = []
        books = [b for b in groups.books if b.target == self.target]
        for book in books:
            i = groups.index_of(book)
            ahead = groups.scheduled_after(book, phase["span"] - 1)
            now = book.base()
            for u, rep in _representatives(book.units).items():
                key = f"{i}:{u}"
                if phase["first"]:
                    before[key] = self.first_from * now[rep]
                else:
                    before[key] = self._last.get(key, now[rep] * factors.get(u, 1.0))
                if u == REST_UNIT:
                    rest.append(key)
                    target[key] = ahead[rep]
                else:
                    target[key] = ahead[rep] * factors.get(u, 1.0)
        listed = [v for k, v in target.items() if k not in rest]
        if listed:
            for key in rest:
                target[key] = self._rest_target(listed)
        phase["before"], phase["target"] = before, target

    def _rest_target(self, listed: list[float]) -> float:
        """The rest's target: the smallest of the listed layers' (LU:339, ``target_lrs.extend([min(target_lrs)] *
        ...)``)."""
        return min(listed)

    def _write_default(self, book: Any, factors: dict[str, float], step: int) -> None:
        phase = self._phase
        if phase is None:
            book.apply(factors)
            return
        w = min(1.0, (step - phase["start"] + 1) / self.linear_steps)
        now = {u: phase["before"].get(u, 1.0) + (f - phase["before"].get(u, 1.0)) * w for u, f in factors.items()}
        phase["now"] = now
        book.apply(now)

    def _warn_zero(self, unit: str, step: int, value: float) -> None:
        if not self._warned:
            self._warned = True
            warn(f"TempBalance (LLR): the base learning rate of unit {unit!r} is 0 at step {step}, so its transition's "
                 f"value {value!r} cannot be written as base x factor; it runs at 0. Under compat='llr' give the "
                 "reference's schedule one step ahead: LambdaLR(opt, lambda k: f(k + 1))", RuntimeWarning)

    # --- checkpoint -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return dict(mode="reference" if self.reference else "default", passes=self._passes,
                    phase=_copy(self._phase), last=dict(self._last), done=dict(self._done),
                    open=copy.deepcopy(self._open))

    def check_state(self, state: Any) -> None:
        mode = "reference" if self.reference else "default"
        if not isinstance(state, dict) or not {"mode", "passes", "phase", "last", "done", "open"} <= set(state):
            raise ValueError("LLR: the checkpoint's policy part lacks some of 'mode', 'passes', 'phase', 'last', "
                             "'done', 'open'")
        if state["mode"] != mode:
            raise ValueError(f"LLR: saved with the {state['mode']} transitions, this object runs the {mode} ones "
                             "(compat='llr' or not)")
        phase = state["phase"]
        keys = ({"start", "span", "first", "before", "target"} if self.reference else {"start", "before", "now"})
        if phase is not None and (not isinstance(phase, dict) or set(phase) != keys):
            raise ValueError(f"LLR: the saved transition must have {sorted(keys)}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self._passes, self._phase, self._last = int(state["passes"]), _copy(state["phase"]), dict(state["last"])
        self._done, self._open, self._twins = dict(state["done"]), copy.deepcopy(state["open"]), {}

    def describe(self) -> str:
        return (f"LLR(lr {self.lr_min_ratio}..{self.lr_max_ratio}, linear_steps={self.linear_steps}, edges x"
                f"{self.edge_factor}{', reference' if self.reference else ''})")


def _representatives(units: Sequence[str | None]) -> dict[str, int]:
    """The first param group of every unit (it stands for the unit's groups: they share one schedule)."""
    out: dict[str, int] = {}
    for k, u in enumerate(units):
        if u is not None and u not in out:
            out[u] = k
    return out


def _copy(phase: dict[str, Any] | None) -> dict[str, Any] | None:
    if phase is None:
        return None
    return {k: dict(v) if isinstance(v, dict) else v for k, v in phase.items()}
