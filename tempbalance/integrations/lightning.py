"""PyTorch Lightning: a TempBalance is an LR scheduler Lightning accepts as users write it::

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
        tb = tempbalance.TempBalance(self, opt, base_scheduler=get_linear_schedule_with_warmup(opt, 10, 100))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": tb, "interval": "step"}}

Lightning steps it once per optimizer step (``"interval": "step"``) and checkpoints its ``state_dict``. With a
per-epoch cadence (the default) TempBalance follows the trainer's epochs itself (:func:`epoch_source`): the refresh
of an epoch runs before the next epoch's first optimizer step, as after ``tb.epoch_end()`` in a plain loop. Nothing
here imports Lightning.
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
