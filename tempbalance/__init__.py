"""tempbalance: per-layer ESD -> PL_Alpha_Hill -> per-layer learning rates (placeholder, replaced by the lead)."""
from .analysis import analyze, analyze_specs
from .hill import alpha_hill
from .report import LayerResult, Report
from .spectra import esd

__all__ = ["esd", "alpha_hill", "analyze", "analyze_specs", "Report", "LayerResult"]
