"""PyTorch Lightning: a TempBalance is an LR scheduler Lightning accepts as users write it::

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
        tb = tempbalance.TempBalance(self, opt, base_scheduler=get_linear_schedule_with_warmup(opt, 10, 100))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": tb, "interval": "step"}}

Lightning steps it once per optimizer step (``"interval": "step"``) and checkpoints its ``state_dict``. With a
per-epoch cadence (the default) TempBalance follows the trainer's epochs itself
(:func:`tempbalance.training.epochs.epoch_source`): the refresh of an epoch runs before the next epoch's first
optimizer step, as after ``tb.epoch_end()`` in a plain loop. Nothing here imports Lightning.
"""
from __future__ import annotations

from ..training.epochs import epoch_source

__all__ = ["epoch_source"]
