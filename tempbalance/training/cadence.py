"""When TempBalance re-analyses the weights (SPEC §4): every N steps, every epoch, or adaptively.

A cadence is asked after every optimizer step (:meth:`Cadence.due_after_step`) and at every epoch end
(:meth:`Cadence.due_at_epoch_end`), and is told what each refresh found and cost (:meth:`Cadence.observe`), so an
adaptive cadence can space refreshes out while the alphas hold still (:class:`Adaptive`) or keep the spectral
work within a share of the training time (:class:`Budget`). All but :class:`Budget` are deterministic (they never
look at the clock), so a resumed run refreshes at the same steps as an uninterrupted one; every cadence's state
is in ``state_dict`` (with its type, so a state saved with another cadence is refused by ``check_state``).
"""
from __future__ import annotations

import math
from typing import Any


class Cadence:
    """Base class: never refreshes after the initial analysis."""

    per_epoch = False

    def due_after_step(self, step: int) -> bool:
        """``step``: optimizer steps taken so far (1 after the first). True = analyse now."""
        return False

    def due_at_epoch_end(self, epoch: int) -> bool:
        """``epoch``: epochs completed so far. True = analyse now."""
        return False

    def missed_epoch_end(self, step: int) -> bool:
        """Asked before each optimizer step (``step``: steps taken so far): True = a whole epoch passed without
        ``epoch_end()``; count it and analyse now (``due_at_epoch_end`` is not asked for it)."""
        return False

    def observe(self, step: int, drift: float, *, blocking_seconds: float = math.nan,
                step_seconds: float = math.nan) -> None:
        """A refresh at ``step`` was applied. ``drift``: the largest change of a unit's mean alpha (metric) since
        the refresh before it (NaN for the first); ``blocking_seconds``: what it held the training loop up;
        ``step_seconds``: the mean wall time of a training step since the refresh before it (NaN if unknown)."""

    _state_keys: tuple[str, ...] = ()  # the attributes a resumed run needs

    def state_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **{k: getattr(self, k) for k in self._state_keys}}

    def check_state(self, state: Any) -> None:
        """``ValueError`` saying what differs when ``state`` was not saved by a cadence like this one."""
        if not isinstance(state, dict) or state.get("type") != type(self).__name__:
            saved = state.get("type") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"cadence: saved with {saved}, this object has {type(self).__name__} "
                             f"({self.describe()}); build it with the interval of the saved run")
        missing = [k for k in self._state_keys if k not in state]
        if missing:
            raise ValueError(f"cadence {type(self).__name__}: the saved state lacks {missing}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        for k in self._state_keys:
            setattr(self, k, type(getattr(self, k))(state[k]))

    def describe(self) -> str:
        return type(self).__name__


class EveryN(Cadence):
    """Every ``n`` optimizer steps."""

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"interval must be None or 'epoch' (per epoch), 'adaptive', a Cadence or an integer >= 1, "
                             f"got {n!r}")
        self.n = n

    def due_after_step(self, step: int) -> bool:
        return step % self.n == 0

    def describe(self) -> str:
        return f"every {self.n} steps"


class BeforeEveryN(EveryN):
    """Right before every ``n``-th optimizer step: after steps ``n - 1``, ``2n - 1``, ... so that updates ``n``,
    ``2n``, ... (counted from 1) are the first to run with the new factors. AlphaDecay's reference re-reads the
    spectra when ``(update_step + 1) % n == 0``, before that update (torchrun_main.py:421); :class:`EveryN` refreshes
    one step later."""

    def due_after_step(self, step: int) -> bool:
        return (step + 1) % self.n == 0

    def describe(self) -> str:
        return f"before every {self.n}th update (after steps {self.n - 1}, {2 * self.n - 1}, ...)"


class PerEpoch(Cadence):
    """At every :meth:`TempBalance.epoch_end` (the papers' cadence for fine-tuning).

    ``steps_per_epoch``: when the epoch length is known (integrations know it), a loop that never calls
    ``epoch_end()`` is still refreshed once an epoch: when a multiple of ``steps_per_epoch`` steps has passed
    without one, before the next optimizer step - until the first ``epoch_end()``, after which the loop's epochs
    count. A loop that calls ``epoch_end()`` at the end of each epoch never sees the difference; one that does not
    gets no pass after its last epoch (no optimizer step follows it).
    """

    per_epoch = True
    _state_keys = ("epoch_seen", "missed_at")

    def __init__(self, steps_per_epoch: int | None = None):
        if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                                            or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be None or an integer >= 1, got {steps_per_epoch!r}")
        self.steps_per_epoch = steps_per_epoch
        self.epoch_seen = False
        self.missed_at = 0  # the step of the last epoch end counted without epoch_end()

    def missed_epoch_end(self, step: int) -> bool:
        if (self.steps_per_epoch is None or self.epoch_seen or step <= self.missed_at
                or step % self.steps_per_epoch):
            return False
        self.missed_at = step
        return True

    def due_at_epoch_end(self, epoch: int) -> bool:
        self.epoch_seen = True
        return True

    def describe(self) -> str:
        return "every epoch" + (f" ({self.steps_per_epoch} steps)" if self.steps_per_epoch else "")


class _Spaced(Cadence):
    """A cadence that places each next refresh ``interval`` steps after the last one, within ``[min, max]``."""

    def __init__(self, name: str, start: int, lo: int, hi: int):
        for arg, v in (("start", start), ("min", lo), ("max", hi)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: {arg} must be an integer >= 1, got {v!r}")
        if not lo <= start <= hi:
            raise ValueError(f"{name}: need min <= start <= max, got {lo}, {start}, {hi}")
        self.min, self.max = lo, hi
        self.interval = start
        self.next_step = start

    def due_after_step(self, step: int) -> bool:
        return step >= self.next_step

    _state_keys = ("interval", "next_step")

    def _place_next(self, step: int, interval: int) -> None:
        self.interval = int(min(max(interval, self.min), self.max))
        self.next_step = step + self.interval


class Adaptive(_Spaced):
    """Refresh often while the alphas move, rarely once they settle.

    Starts at ``start`` steps between refreshes. After each refresh the interval doubles (up to ``max``) if no
    unit's mean alpha moved more than ``tol / 2`` since the previous refresh, and halves (down to ``min``) if one
    moved more than ``tol``. The result: the factors lag the weights by roughly ``tol`` in alpha at most, at the
    smallest number of passes that keeps them there.
    """

    def __init__(self, start: int = 10, *, min: int = 1, max: int = 1000, tol: float = 0.02):  # noqa: A002
        super().__init__("Adaptive", start, min, max)
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"Adaptive: tol must be a finite number > 0, got {tol!r}")
        self.tol = float(tol)

    def observe(self, step: int, drift: float, *, blocking_seconds: float = math.nan,
                step_seconds: float = math.nan) -> None:
        interval = self.interval
        if math.isfinite(drift):
            if drift <= self.tol / 2:
                interval = 2 * interval
            elif drift > self.tol:
                interval = interval // 2
        self._place_next(step, interval)

    def describe(self) -> str:
        return f"adaptive (now every {self.interval} steps, tol {self.tol:g} in alpha)"


class Budget(_Spaced):
    """Keep the spectral work at most ``max_overhead`` of the training time.

    After each refresh the next one is placed ``ceil(blocking / (max_overhead * step_seconds))`` steps later
    (within ``[min, max]``), where ``blocking`` is what the refresh held the loop up and ``step_seconds`` the mean
    measured step time since the previous refresh; until a step time is known the interval is ``start``. The
    steps at which refreshes happen depend on measured times, so two runs need not refresh at the same steps
    (a resumed run continues from the saved interval).
    """

    def __init__(self, max_overhead: float = 0.05, *, start: int = 10, min: int = 1,  # noqa: A002
                 max: int = 100_000):  # noqa: A002
        super().__init__("Budget", start, min, max)
        if not (isinstance(max_overhead, (int, float)) and 0 < max_overhead <= 1):
            raise ValueError(f"Budget: max_overhead must be a number in (0, 1], got {max_overhead!r}")
        self.max_overhead = float(max_overhead)

    def observe(self, step: int, drift: float, *, blocking_seconds: float = math.nan,
                step_seconds: float = math.nan) -> None:
        interval = self.interval
        if math.isfinite(blocking_seconds) and math.isfinite(step_seconds) and step_seconds > 0:
            interval = math.ceil(blocking_seconds / (self.max_overhead * step_seconds))
        self._place_next(step, interval)

    def describe(self) -> str:
        return f"budget {100 * self.max_overhead:g}% of training time (now every {self.interval} steps)"


def as_cadence(interval: Any) -> Cadence:
    """``None`` or ``"epoch"`` -> :class:`PerEpoch`; an int -> :class:`EveryN`; ``"adaptive"`` ->
    :class:`Adaptive` with its defaults; a :class:`Cadence` is used as is."""
    if isinstance(interval, Cadence):
        return interval
    if interval is None or interval == "epoch":
        return PerEpoch()
    if interval == "adaptive":
        return Adaptive()
    return EveryN(interval)
