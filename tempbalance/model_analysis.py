"""analyze(): every analysable matrix of a model (found by its adapter) in one batched spectral pass, into a
:class:`~tempbalance.analysis.report.Report`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable

import torch
from torch import nn

from .adapters import get_adapter, specs_from_named_weights, unanalysed, unwrap_model
from .analysis.options import DEFAULT_MIN_EIGS, AnalysisOptions
from .analysis.report import Report
from .analysis.spectral_pass import analyze_specs


def _named_pairs(obj: Any) -> list[tuple[str, Any]] | None:
    if isinstance(obj, Mapping):
        return list(obj.items())
    if isinstance(obj, (str, bytes, torch.Tensor)):
        return None
    if isinstance(obj, Iterable):
        pairs = list(obj)
        if all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
            return pairs
    return None


def analyze(
    model_or_named_weights: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    options: AnalysisOptions | None = None,
    *,
    include_embeddings: bool = False,
    adapter: Any = "auto",
    **overrides: Any,
) -> Report:
    """Spectral analysis (ESD -> PL_Alpha_Hill and friends) of every analysable matrix, in one batched pass.

    Args:
        model_or_named_weights: an ``nn.Module`` (matrices found by its adapter), a state_dict-like mapping, or an
            iterable of ``(name, tensor)`` (then every floating 2-d+ tensor except biases and embeddings).
        options: an :class:`~tempbalance.analysis.options.AnalysisOptions`, or its fields as keywords
            (``overrides``, applied over ``options``): ``xmin_pos`` (the tail starts at index ``floor(N /
            xmin_pos)`` of the ascending spectrum; 2 = median), ``xmin_rule`` ("median", "fit", "peak",
            "peak_compat"), ``min_eigs`` (layers with fewer eigenvalues are reported, not fitted; default: the
            adapter's, 50 for transformers/CNNs), ``dtype`` (``torch.float32`` / ``torch.float64``; default: each
            weight's precision), ``backend`` ("native", "torch", "auto"), ``filter_zeros``, ``zero_tol``,
            ``zero_rel``, ``zero_rtol``, ``num_threads``, ``chunk_bytes``, ``conv_mode`` ("slices" / "flatten"),
            ``conv_scale``.
        include_embeddings: analyse embedding matrices too.
        adapter: "auto", a registered adapter name, or an :class:`~tempbalance.adapters.Adapter`.

    Returns:
        A :class:`Report`. A layer that cannot be analysed (NaN/Inf weights, empty, too few eigenvalues, flat
        tail, ...) gets a row with a non-"ok" status and a reason naming it; weights of a model that no adapter
        rule analyses (recurrent weights, embeddings not asked for, bare 2-d parameters) are named with a reason
        in ``Report.skipped``; bad options raise ``ValueError``. Weights are read under ``torch.no_grad`` and
        never modified.
    """
    if not isinstance(include_embeddings, bool):
        raise ValueError(f"include_embeddings must be True or False, got {include_embeddings!r}")
    skipped: list[tuple[str, str]] = []
    default_min = DEFAULT_MIN_EIGS
    if isinstance(model_or_named_weights, nn.Module):
        chosen = get_adapter(model_or_named_weights, adapter)
        default_min = getattr(chosen, "min_eigs", DEFAULT_MIN_EIGS)
    if overrides.get("min_eigs", 0 if options is not None else None) is None:
        overrides = dict(overrides, min_eigs=default_min)  # min_eigs=None or not given: the adapter's
    options = AnalysisOptions.of(options, overrides)  # bad options: an error before any work
    if isinstance(model_or_named_weights, nn.Module):
        specs = chosen.enumerate(model_or_named_weights, include_embeddings=include_embeddings)
        skipped = unanalysed(unwrap_model(model_or_named_weights), specs)
    else:
        pairs = _named_pairs(model_or_named_weights)
        if pairs is None:
            raise TypeError(
                "model_or_named_weights must be an nn.Module, a mapping name -> tensor, or an iterable of "
                f"(name, tensor) pairs, got {type(model_or_named_weights).__name__}"
            )
        specs, skipped = specs_from_named_weights(pairs, include_embeddings=include_embeddings)
    return analyze_specs(specs, options, skipped=skipped)
