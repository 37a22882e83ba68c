"""tempbalance: layer-wise learning rates from the heavy-tailed spectra of weight matrices (TempBalance, HT-SR).

    tb = tempbalance.TempBalance(model, optimizer, base_scheduler=sched, interval=100)
    ...
    optimizer.step(); tb.step()

Published configurations: ``TempBalance(model, optimizer, preset="modelbalancing-glue", ratio=0.0002,
steps_per_epoch=...)`` (the arguments: :func:`tempbalance.presets.get`); ``compat=True`` reproduces the reference
code's learning rates, whose rules are pure functions in :mod:`tempbalance.compat`. Pretraining with LLR (AdamW,
or Muon + AdamW): ``TempBalance(model, [muon, adamw], preset="llr-muon-1b-20b")`` or ``policy=tempbalance.LLR(...)``.

Analysis only: ``tempbalance.analyze(model)`` returns a per-layer :class:`Report` (PL_Alpha_Hill and friends).

The package has two halves (docs/ARCHITECTURE.md): :mod:`tempbalance.analysis` (weights -> spectra -> alphas) and
:mod:`tempbalance.training` (policies, scheduler, cadence, passes, param groups, compat, presets).
"""
import sys as _sys

from . import _native
from ._version import __version__
from .analysis import cuda_backend, spectra
from .analysis.hill import alpha_hill
from .analysis.report import LayerResult, Report
from .analysis.spectra import esd
from .analysis.spectral_pass import analyze_specs
from .model_analysis import analyze
from .training import cadence, compat, presets, scheduler
from .training.cadence import Adaptive, Budget, Cadence, EveryN, PerEpoch
from .training.llrd import layer_decay_groups, layer_decay_profile
from .training.llr import LLR, LLRCadence
from .training.regularizers import SpectralNormRegularizer
from .training.scheduler import TempBalance

# Modules users import by these names (`import tempbalance.presets`, `tempbalance.cuda_backend.cuda_status()`),
# wherever they live in the package.
for _name, _module in (("presets", presets), ("compat", compat), ("cadence", cadence), ("scheduler", scheduler),
                       ("cuda_backend", cuda_backend), ("spectra", spectra)):
    _sys.modules.setdefault(f"{__name__}.{_name}", _module)


def native_available() -> bool:
    """True when the compiled spectral core is loaded (else the torch backend is used)."""
    return _native.core is not None


__all__ = [
    "esd", "alpha_hill", "analyze", "analyze_specs", "Report", "LayerResult", "TempBalance",
    "SpectralNormRegularizer", "native_available", "Cadence", "EveryN", "PerEpoch", "Adaptive", "Budget",
    "__version__", "compat", "presets", "layer_decay_groups", "layer_decay_profile", "LLR", "LLRCadence",
]
