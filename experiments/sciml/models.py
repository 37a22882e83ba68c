"""The two networks of the experiment, built from the installed packages (no custom layers).

FNO: ``neuralop.models.FNO`` (neuraloperator 2.0; complex spectral weights, which the tempbalance FNO adapter
analyses per retained mode). UNet: ``monai.networks.nets.BasicUNet`` (4 down / 4 up stages, so the grid size must
be a multiple of 16).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    fno_hidden: int = 24
    fno_modes_2d: int = 8
    fno_modes_1d: int = 16
    fno_layers: int = 4
    unet_features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)


def build(kind: str, dim: int, cfg: ModelConfig = ModelConfig()) -> nn.Module:
    """A 1-in / 1-out ``"fno"`` or ``"unet"`` for ``dim``-dimensional fields (1 or 2)."""
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 or 2, got {dim!r}")
    if kind == "fno":
        from neuralop.models import FNO

        modes = (cfg.fno_modes_2d,) * 2 if dim == 2 else (cfg.fno_modes_1d,)
        return FNO(n_modes=modes, hidden_channels=cfg.fno_hidden, in_channels=1, out_channels=1,
                   n_layers=cfg.fno_layers)
    if kind == "unet":
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=dim, in_channels=1, out_channels=1, features=tuple(cfg.unet_features))
    raise ValueError(f"model kind must be 'fno' or 'unet', got {kind!r}")
