"""UNets (MONAI ``BasicUNet`` / ``UNet`` / ``DynUNet`` / ``AttentionUnet``, or a plain PyTorch model whose class
name contains "UNet"): every conv (and transposed conv) layer, unit ``"layer"`` by default.

In ``"block"`` mode a unit is the conv's parent module - in MONAI a ``Convolution`` (the conv with its norm and
activation), in a plain UNet the ``Sequential`` the conv sits in - and drives all of its parameters.

``min_eigs = 32``: SciML UNets are narrow (16-32 channels at the top level), and a 16-channel kernel-3 conv
pools only 3 x 16 = 48 eigenvalues; the transformer/CNN default of 50 would leave half of a 1D UNet untuned.
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .blocks import BlockAdapter


class UNetAdapter(BlockAdapter):
    name = "unet"
    default_unit = "layer"
    min_eigs = 32

    def find_blocks(self, model: nn.Module) -> list[str]:
        from .generic import GenericAdapter

        parents = []
        for s in GenericAdapter(lora_scaling=self.lora_scaling).enumerate(model):
            parent = s.name.rsplit(".", 1)[0] if "." in s.name else s.name
            if parent not in parents:
                parents.append(parent)
        return parents


def detect(model: nn.Module) -> bool:
    return "unet" in type(model).__name__.lower()


register_adapter("unet", detect, UNetAdapter, priority=5)
