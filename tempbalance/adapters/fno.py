"""Fourier neural operators (``neuraloperator`` 2.x FNO / TFNO / UNO, or any model with ``SpectralConv*`` layers).

Analysed: the complex spectral weight of every ``SpectralConv`` (shape (in, out, m1, ..., md), the last mode
stored as m//2+1; one (in, out) complex slice per retained mode, pooled - SPEC §1; factorized weights (Tucker,
CP, TT) are densified with ``.to_tensor()`` first) - the reference code never analysed these - plus the real
lifting / projection / skip / channel-MLP layers (1x1 convs), as the generic adapter finds them.

Units: ``"layer"`` by default (each matrix its own unit). ``"block"`` groups FNO block ``i`` - ``convs.i``,
``fno_skips.i``, ``channel_mlp.i``, ``channel_mlp_skips.i`` - under ``<prefix>.fno_blocks.i``; lifting and
projection are a unit each.

``min_eigs = 10``: an FNO's 1x1 convs are only ``hidden_channels`` wide (often 16-64, the channel MLP half of
that), so the transformer/CNN default of 50 would leave every real layer untuned; 10 eigenvalues leave a 5-point
tail at the median, the fewest this adapter fits a power law to. The lifting layer's input side (in_channels +
grid dims) and the projection's output (out_channels) stay below it and keep factor 1.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from . import register_adapter
from .base import Adapter, MatrixSpec, unique_params
from .blocks import block_of
from .generic import GenericAdapter

_FNO_PART = re.compile(r"^(?P<pre>(?:.*\.)?fno_blocks)\.(?:convs|fno_skips|channel_mlp|channel_mlp_skips)\.(?P<i>\d+)(?:\.|$)")


def _is_spectral_conv(mod: nn.Module) -> bool:
    return type(mod).__name__.startswith("SpectralConv") and hasattr(mod, "weight")


def _dense_weight(mod: nn.Module) -> torch.Tensor:
    w = mod.weight
    if hasattr(w, "to_tensor"):
        w = w.to_tensor()
    return w.detach()


def _block_unit(name: str) -> str:
    m = _FNO_PART.match(name)
    if m:
        return f"{m['pre']}.{m['i']}"
    return name.split(".", 1)[0]  # lifting, projection, ...


class FNOAdapter(Adapter):
    name = "fno"
    min_eigs = 10
    default_unit = "layer"

    def __init__(self, lora_scaling: bool = True):
        self.lora_scaling = lora_scaling

    def enumerate(self, model: nn.Module, include_embeddings: bool = False) -> list[MatrixSpec]:
        specs: list[MatrixSpec] = []
        spectral: list[str] = []
        for name, mod in model.named_modules():
            if _is_spectral_conv(mod):
                spectral.append(name)
                specs.append(MatrixSpec(name, "spectral", lambda m=mod: _dense_weight(m), _block_unit(name),
                                        list(mod.parameters())))
        for s in GenericAdapter(lora_scaling=self.lora_scaling).enumerate(model, include_embeddings):
            if block_of(s.name, spectral) is None:
                s.unit = _block_unit(s.name)
                specs.append(s)
        return specs

    def unit_params(self, model: nn.Module, specs: list[MatrixSpec], unit: str = "block") -> dict[str, list[nn.Parameter]]:
        if unit != "block":
            return super().unit_params(model, specs, unit)
        units = {s.unit for s in specs}
        out: dict[str, list[nn.Parameter]] = {u: [] for u in units}
        for pname, p in model.named_parameters():
            u = _block_unit(pname.rsplit(".", 1)[0])
            if u in out:
                out[u].append(p)
        return {k: unique_params(v) for k, v in out.items()}


def detect(model: nn.Module) -> bool:
    return any(_is_spectral_conv(m) for m in model.modules())


register_adapter("fno", detect, FNOAdapter, priority=20)
