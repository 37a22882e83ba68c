"""HF ``Trainer`` without forking it: TempBalance *is* the Trainer's LR scheduler.

The Trainer calls ``lr_scheduler.step()`` once per optimizer step (after gradient accumulation, never on
accumulation micro-steps), saves ``lr_scheduler.state_dict()`` to ``scheduler.pt`` and reloads it on resume,
and logs ``get_last_lr()[0]``. :class:`~tempbalance.TempBalance` has that interface and advances the Trainer's
schedule (linear/cosine warmup, ...) as its base scheduler, so the factors survive the schedule rewriting ``lr``::

    opt, tb = tempbalance_optimizers(model, args, num_training_steps, interval=50)
    trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, tb),
                      callbacks=[TempBalanceCallback(tb)])

``tempbalance_optimizers`` builds what the Trainer would (its optimizer class and kwargs from ``args.optim``,
weight decay off for biases and norms, ``args.lr_scheduler_type`` with ``args`` warmup) and wraps it. Or build your
own ``opt`` and ``sched`` and pass ``(opt, TempBalance(model, opt, base_scheduler=sched))``.

With the per-epoch cadence (the default) and no callback, nothing would call ``tb.epoch_end()``: the epoch length
(``num_training_steps / args.num_train_epochs``, or ``steps_per_epoch=``) stands in for it
(:class:`~tempbalance.cadence.PerEpoch`), with one warning; :class:`TempBalanceCallback` refreshes at the Trainer's
true epoch ends.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

from torch import nn
from transformers import Trainer, TrainerCallback, get_scheduler

from ..training import compat, presets
from ..training.cadence import PerEpoch
from ..training.scheduler import TempBalance


def tempbalance_optimizers(model: nn.Module, args: Any, num_training_steps: int, *,
                           steps_per_epoch: int | None = None, **tb_kwargs: Any):
    """``(optimizer, TempBalance)`` for ``Trainer(optimizers=...)``, built as the Trainer would build its own.

    ``num_training_steps``: optimizer steps of the run (``args.max_steps`` or epochs x steps per epoch).
    ``steps_per_epoch``: optimizer steps per epoch, for the per-epoch cadence without :class:`TempBalanceCallback`
    (default: ``num_training_steps / args.num_train_epochs`` when ``args.max_steps`` is not set).
    ``tb_kwargs`` go to :class:`TempBalance` (``interval``, ``unit``, ``s_lo``, ...); with ``preset=`` (and its
    choice, ``ratio=``, ...) a preset whose reference derives the interval from the data loader gets it as the
    reference's Trainer does: ``min(100, max(1, steps_per_epoch // 10))``, or with gradient accumulation
    ``min(100, num_training_steps // 20)``.
    """
    preset = tb_kwargs.pop("preset", None)
    if preset is not None:
        if presets.PRESETS.get(preset) is not None and presets.PRESETS[preset].interval_rule == "reference" \
                and "interval" not in tb_kwargs:
            tb_kwargs["interval"] = _reference_interval(args, num_training_steps, steps_per_epoch)
        tb_kwargs = presets.get(preset, **tb_kwargs)
    interval = tb_kwargs.get("interval")
    if interval is None or interval == "epoch":
        if steps_per_epoch is None and (args.max_steps is None or args.max_steps <= 0) and args.num_train_epochs:
            steps_per_epoch = max(1, math.ceil(num_training_steps / args.num_train_epochs))
        if steps_per_epoch is None:
            warnings.warn("tempbalance_optimizers: with args.max_steps the epoch length is unknown here; pass "
                          "steps_per_epoch= or add callbacks=[TempBalanceCallback(tb)] to the Trainer, else the "
                          "per-epoch cadence never refreshes", UserWarning, stacklevel=2)
        tb_kwargs["interval"] = PerEpoch(steps_per_epoch=steps_per_epoch)
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    optimizer = cls(groups, **kwargs)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(num_training_steps),
        num_training_steps=num_training_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
    )
    return optimizer, TempBalance(model, optimizer, base_scheduler=scheduler, **tb_kwargs)


def _reference_interval(args: Any, num_training_steps: int, steps_per_epoch: int | None) -> int:
    """ModelBalancing's analysis interval for this run (its trainer.py:1680-1684)."""
    accum = args.gradient_accumulation_steps
    if accum > 1:
        return compat.reference_interval(steps_per_epoch or 1, grad_accum=accum, max_steps=num_training_steps)
    if steps_per_epoch is None and (args.max_steps is None or args.max_steps <= 0) and args.num_train_epochs:
        steps_per_epoch = max(1, math.ceil(num_training_steps / args.num_train_epochs))
    if steps_per_epoch is None:
        raise ValueError("tempbalance_optimizers: the preset's reference analyses every min(100, max(1, "
                         "len(train_dataloader) // 10)) steps and args.max_steps hides the epoch length; pass "
                         "steps_per_epoch=len(train_dataloader) or interval=")
    return compat.reference_interval(steps_per_epoch)


class TempBalanceCallback(TrainerCallback):
    """Optional companion: ``tb.epoch_end()`` at each epoch's end (a per-epoch cadence, ``interval=None``, re-analyses there) and
    TempBalance's numbers in the Trainer's logs (``tb/alpha_std``, ``tb/factor_min``, ``tb/factor_max``)."""

    def __init__(self, tb: TempBalance):
        self.tb = tb

    def on_epoch_end(self, args, state, control, **kwargs):
        self.tb.epoch_end()  # refreshes when the cadence is per epoch, else only counts the epoch

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        f = list(self.tb.factors.values()) or [1.0]
        extra = {"tb/alpha_std": self.tb.alpha_std, "tb/factor_min": min(f), "tb/factor_max": max(f)}
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
