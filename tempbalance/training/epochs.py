"""Where a training loop's epochs come from when nobody calls ``tb.epoch_end()``: a framework's trainer.

:func:`epoch_source` gives, for a PyTorch Lightning module, a function reading its trainer's ``current_epoch``, so
a per-epoch cadence (:mod:`tempbalance.training.cadence`) follows the trainer's epochs by itself. Nothing here
imports Lightning: it only looks at the modules a program has imported already.
"""
from __future__ import annotations

import sys
from typing import Any, Callable


def epoch_source(model: Any) -> Callable[[], int | None] | None:
    """For a LightningModule, a function giving its trainer's ``current_epoch`` (None while it has no trainer);
    None for any other model. Only looks at Lightning if the program imported it."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        module = sys.modules.get(name)
        base = getattr(module, "LightningModule", None)
        if base is not None and isinstance(model, base):
            return lambda: int(model.current_epoch) if getattr(model, "_trainer", None) is not None else None
    return None
