"""Diagnostics users can look at: plots of an analysis and of a training run, and a per-refresh training log.

* :mod:`.plots` (needs matplotlib): :func:`alpha_bars`, :func:`esd_plot`, :func:`esd_grid`, :func:`esd_plots`,
  :func:`alpha_over_training` - each writes a PNG (or a folder of them) and returns the path(s).
* :mod:`.training_log`: :class:`TrainingLog` (CSV / TensorBoard / callback per refresh), :func:`flatten_history`.
* :mod:`.esd_data`: the numbers behind the ESD plots (:func:`layer_eigenvalues`, :func:`esd_density`,
  :func:`power_law_tail_density`).

Importing this package does not import matplotlib; the plot functions load it on first use.
"""
from __future__ import annotations

from typing import Any

from .esd_data import esd_density, layer_eigenvalues, log_bins, power_law_tail_density
from .training_log import CSV_COLUMNS, LAYER_CSV_COLUMNS, TrainingLog, flatten_history

_PLOTS = ("alpha_bars", "esd_plot", "esd_grid", "esd_plots", "alpha_over_training")


def __getattr__(name: str) -> Any:
    if name in _PLOTS:
        try:
            from . import plots
        except ImportError as e:
            raise ImportError(f"tempbalance.diagnostics.{name} needs matplotlib: pip install 'tempbalance[plots]' "
                              f"({e})") from e
        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "alpha_bars", "esd_plot", "esd_grid", "esd_plots", "alpha_over_training",
    "TrainingLog", "flatten_history", "CSV_COLUMNS", "LAYER_CSV_COLUMNS",
    "layer_eigenvalues", "esd_density", "log_bins", "power_law_tail_density",
]
