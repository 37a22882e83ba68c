"""The analysis half: weights -> spectra -> alphas, with no optimizer in sight.

``specs`` (what a matrix to analyse is) -> ``spectra`` (the slice stacks whose Gram eigenvalues form a layer's ESD;
``cuda_backend`` and ``streams`` on a GPU) -> ``hill`` (PL_Alpha_Hill and the other metrics) -> ``report``
(:class:`Report`); ``spectral_pass`` runs all of it for many matrices at once, with the ``options`` of
:class:`AnalysisOptions`; ``aggregate`` averages per unit; ``cost`` says what a matrix's pass costs. A model's
matrices come from its adapter: :func:`tempbalance.analyze`.
"""
from .options import DEFAULT_MIN_EIGS, AnalysisOptions, HillOptions
from .report import LayerResult, Report
from .spectral_pass import DEFAULT_CHUNK_BYTES, SpectralPass, analyze_specs, start_pass

__all__ = ["DEFAULT_CHUNK_BYTES", "DEFAULT_MIN_EIGS", "AnalysisOptions", "HillOptions", "LayerResult", "Report",
           "SpectralPass", "analyze_specs", "start_pass"]
