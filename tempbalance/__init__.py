"""tempbalance: layer-wise learning rates from the heavy-tailed spectra of weight matrices (TempBalance, HT-SR).

    tb = tempbalance.TempBalance(model, optimizer, base_scheduler=sched, interval=100)
    ...
    optimizer.step(); tb.step()

Published configurations: ``TempBalance(model, optimizer, preset="modelbalancing-glue", ratio=0.0002,
steps_per_epoch=...)`` (the arguments: :func:`tempbalance.presets.get`); ``compat=True`` reproduces the reference
code's learning rates, whose rules are pure functions in :mod:`tempbalance.compat`.

Analysis only: ``tempbalance.analyze(model)`` returns a per-layer :class:`Report` (PL_Alpha_Hill and friends).
"""
from . import _native, compat, presets
from .analysis import analyze, analyze_specs
from .cadence import Adaptive, Budget, Cadence, EveryN, PerEpoch
from .hill import alpha_hill
from .llrd import layer_decay_groups, layer_decay_profile
from .regularizers import SpectralNormRegularizer
from .report import LayerResult, Report
from .scheduler import TempBalance
from .spectra import esd

__version__ = "0.1.0"


def native_available() -> bool:
    """True when the compiled spectral core is loaded (else the torch backend is used)."""
    return _native.core is not None


__all__ = [
    "esd", "alpha_hill", "analyze", "analyze_specs", "Report", "LayerResult", "TempBalance",
    "SpectralNormRegularizer", "native_available", "Cadence", "EveryN", "PerEpoch", "Adaptive", "Budget",
    "__version__", "compat", "presets", "layer_decay_groups", "layer_decay_profile",
]
