"""What the analysis takes: one matrix of a model (:class:`MatrixSpec`), as an adapter describes it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class MatrixSpec:
    """One analysed matrix.

    ``weight()`` returns the stored weight (LoRA: the effective ``W + s * B @ A``), detached; its layout is
    described by ``kind`` ("linear" | "conv" | "conv1d_hf" | "spectral" | "lora" | "embedding", see
    :mod:`tempbalance.spectra`). ``unit`` is the block the matrix belongs to (the layer name when the adapter
    knows no blocks); ``params`` are the parameters its layer drives in "layer" mode (frozen ones included: a
    parameter's unit follows the model's structure, not ``requires_grad`` at one moment).
    """

    name: str
    kind: str
    weight: Callable[[], torch.Tensor]
    unit: str
    params: list[nn.Parameter] = field(default_factory=list)
