"""Following the training loop around a TempBalance: the optimizer's steps and the epochs a framework ends.

:class:`StepWatch` owns a global optimizer step pre-hook (``torch.optim.Optimizer`` runs it before every step), so
TempBalance can count the updates (``tb.step()`` called more than once per update is refused, before it changes
anything), run a refresh that fell due at an epoch's end right before the next update, and notice the epochs a
LightningModule's trainer ended (:mod:`tempbalance.training.epochs`). Its state: the counters and the last epoch
seen (TempBalance saves that one in its checkpoint part ``"progress"``).
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..adapters import unwrap_model
from .epochs import epoch_source

# tb.step() calls in a row without an optimizer step between them, after this many optimizer steps in a row that
# each saw more than one, is a loop that steps TempBalance twice per update (a single extra call is allowed: a
# GradScaler skips optimizer.step() on overflow and the schedule still advances, as torch's schedulers do)
REPEATS_TOLERATED = 2
# tb.step() calls in a row with no optimizer step at all between them: a GradScaler skips optimizer.step() while it
# lowers its scale (one halving per skip: 2**16 reaches 1 in 16 skips, Megatron's 2**32 in 32); far more is a loop
# whose optimizer never steps (forgotten, or another optimizer than this TempBalance's), not an overflow
SKIPS_TOLERATED = 64


def steps_through_torch(optimizer: Any) -> bool:
    """Whether ``optimizer`` (or the optimizer a wrapper holds as ``.optimizer``, as accelerate's does) is a
    ``torch.optim.Optimizer`` whose ``step`` runs the global step pre-hooks on these very param groups."""
    opt, groups = optimizer, optimizer.param_groups
    for _ in range(4):
        if (isinstance(opt, torch.optim.Optimizer) and getattr(type(opt).step, "hooked", False)
                and opt.param_groups is groups):
            return True
        opt = getattr(opt, "optimizer", None)
        if opt is None or not hasattr(opt, "param_groups"):
            return False
    return False


class StepWatch:
    """The optimizer steps and framework epochs of one TempBalance.

    ``before_update(optimizer)`` is called (through a weak reference: an abandoned TempBalance is still collected,
    and its hook removed) before every step of any torch optimizer; it decides whether the step is its own. Without
    a hook (an optimizer that does not step through ``torch.optim.Optimizer``) :attr:`hooked` is False and the
    owner looks after each ``tb.step()`` instead.
    """

    def __init__(self, model: Any, optimizers: list[Any], before_update: Callable[[Any], None]):
        self.calls_since_update = 0  # tb.step() calls since the optimizer last stepped
        self.repeats = 0  # optimizer steps in a row that were each followed by more than one tb.step()
        self.source = epoch_source(unwrap_model(model))
        self.source_epoch: int | None = None
        self._hook = None
        if all(steps_through_torch(opt) for opt in optimizers):
            callback = weakref.WeakMethod(before_update)

            def hook(opt: Any, args: Any, kwargs: Any) -> None:
                fn = callback()
                if fn is not None:
                    fn(opt)

            self._hook = register_optimizer_step_pre_hook(hook)

    @property
    def hooked(self) -> bool:
        """Whether the optimizer's steps are seen."""
        return self._hook is not None

    def update(self) -> None:
        """An optimizer is about to step: count it (another optimizer's step right after one - several optimizers
        step once each per iteration - says nothing about the calls)."""
        if self.calls_since_update > 1:
            self.repeats += 1
        elif self.calls_since_update == 1:
            self.repeats = 0
        self.calls_since_update = 0

    def check_call(self) -> None:
        """``tb.step()`` was called: refuse a loop that calls it more than once per optimizer step, or again and again
        with no optimizer step at all (before it changes anything; needs the hook)."""
        if self._hook is not None and self.calls_since_update >= SKIPS_TOLERATED:
            raise RuntimeError(
                f"TempBalance.step() was called {self.calls_since_update} times in a row with no optimizer step "
                "in between (since TempBalance was built or the optimizer last stepped): every call advances the base "
                "schedule and the refresh interval by one step while nothing trains. Call optimizer.step() before "
                "each tb.step(), on the optimizer TempBalance was built with (a new optimizer needs a new "
                "TempBalance); to resume a run, use tb.load_state_dict(...) instead of stepping it forward")
        if self._hook is not None and self.calls_since_update >= 1 and self.repeats >= REPEATS_TOLERATED:
            raise RuntimeError(
                f"TempBalance.step() was called more than once after each of the last {self.repeats} "
                "optimizer steps: every call advances the base schedule and the refresh interval by one step. "
                "Call it once per optimizer.step(): don't combine auto_step(tb) with explicit tb.step() calls, don't "
                "pass TempBalance to a framework that steps it and step it yourself too (under accelerate with "
                "several processes, a prepared scheduler is stepped once per process: don't pass TempBalance to "
                "accelerator.prepare(), call tb.step() after each optimizer update)")

    def count_call(self) -> None:
        self.calls_since_update += 1

    def epochs_ended(self) -> int:
        """How many epochs the framework's loop ended since the last look (0 without a framework)."""
        if self.source is None or (now := self.source()) is None:
            return 0
        if self.source_epoch is None:
            self.source_epoch = now
        ended = max(now - self.source_epoch, 0)
        self.source_epoch = max(self.source_epoch, now)
        return ended

    def hand_back_epochs(self) -> None:
        """The loop calls ``epoch_end()`` itself: stop following a framework's epochs."""
        self.source = None

    def restore(self, source_epoch: int | None) -> None:
        """Resume: the last epoch seen as saved; the step counters start afresh."""
        self.source_epoch = source_epoch
        self.calls_since_update = self.repeats = 0

    def remove(self) -> None:
        """Remove the hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
