"""The numbers behind the ESD plots: log-spaced histograms, the fitted power-law tail density, and the eigenvalues
of the layers a :class:`~tempbalance.Report` describes (recomputed: a report keeps metrics, not spectra).

No matplotlib here, so these are usable (and tested) on their own.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..adapters import MatrixSpec, get_adapter, specs_from_named_weights
from ..analysis import spectra
from ..analysis.report import LayerResult, Report
from .progress import progress


def positive_finite(eigenvalues: Any) -> np.ndarray:
    """``eigenvalues`` as a float64 1-d array of its finite, strictly positive entries (what a log axis shows)."""
    if isinstance(eigenvalues, torch.Tensor):
        eigenvalues = eigenvalues.detach().cpu().to(torch.float64).numpy()
    lam = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    return lam[np.isfinite(lam) & (lam > 0)]


def log_bins(eigenvalues: Any, n_bins: int = 60) -> np.ndarray:
    """``n_bins + 1`` log-spaced edges spanning the positive eigenvalues (a decade around a single value)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    lam = positive_finite(eigenvalues)
    if lam.size == 0:
        raise ValueError("no positive finite eigenvalues to bin")
    lo, hi = float(lam.min()), float(lam.max())
    if hi <= lo * (1 + 1e-12):  # one distinct value: centre a decade on it
        lo, hi = lo / math.sqrt(10), hi * math.sqrt(10)
    edges = np.logspace(math.log10(lo), math.log10(hi), n_bins + 1)
    edges[0], edges[-1] = lo, hi  # exact ends: a rounded-down last edge would drop lambda_max from the histogram
    return edges


def auto_bins(n: int) -> int:
    """Histogram bins for ``n`` eigenvalues: about ``2 sqrt(n)``, between 10 and 80 (sparse spectra get wide bins)."""
    return int(min(80, max(10, round(2 * math.sqrt(max(n, 1))))))


def esd_density(eigenvalues: Any, n_bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """``(edges, density)``: histogram of the positive eigenvalues on :func:`log_bins`, normalised so that
    ``sum(density * diff(edges)) == 1`` (a probability density in lambda, comparable with
    :func:`power_law_tail_density`)."""
    lam = positive_finite(eigenvalues)
    edges = log_bins(lam, n_bins)
    counts, _ = np.histogram(lam, bins=edges)
    return edges, counts / (lam.size * np.diff(edges))


def power_law_tail_density(lam: Any, *, alpha: float, xmin: float, tail_fraction: float = 1.0) -> np.ndarray:
    """The fitted tail as a density over the whole ESD: ``tail_fraction * (alpha-1)/xmin * (lam/xmin)^-alpha`` for
    ``lam >= xmin``, NaN below.

    ``(alpha-1)/xmin * (lam/xmin)^-alpha`` is the Pareto density on ``[xmin, inf)`` (integrates to 1) whose
    maximum-likelihood exponent is the Hill estimate; ``tail_fraction`` (the report's ``n_tail`` over the number of
    eigenvalues in the histogram) scales it so it overlays a histogram normalised over *all* eigenvalues.
    """
    for arg, v in (("alpha", alpha), ("xmin", xmin), ("tail_fraction", tail_fraction)):
        if not isinstance(v, (int, float, np.floating)) or not math.isfinite(v):
            raise ValueError(f"{arg} must be a finite number, got {v!r}")
    if alpha <= 1:
        raise ValueError(f"alpha must be > 1 for a normalisable power-law tail, got {alpha!r}")
    if xmin <= 0:
        raise ValueError(f"xmin must be > 0, got {xmin!r}")
    if not 0 < tail_fraction <= 1:
        raise ValueError(f"tail_fraction must be in (0, 1], got {tail_fraction!r}")
    x = np.asarray(lam, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pdf = tail_fraction * (alpha - 1.0) / xmin * (x / xmin) ** (-alpha)
    return np.where(x >= xmin, pdf, np.nan)


def tail_share(n_tail: int, n_shown: int) -> float:
    """The ``tail_fraction`` of :func:`power_law_tail_density`: the share of the ``n_shown`` histogrammed eigenvalues
    that the fit's tail holds (at most 1; NaN when either count is not positive)."""
    if n_shown <= 0 or n_tail <= 0:
        return math.nan
    return min(1.0, n_tail / n_shown)


def select_rows(report: Report, layers: str | Sequence[str] | None = None) -> list[LayerResult]:
    """The report's rows whose name matches ``layers``: a regular expression (``re.search``), a list of exact
    names, or ``None`` for all. Unknown names and bad expressions raise ``ValueError``."""
    if layers is None:
        return list(report.rows)
    if isinstance(layers, str):
        try:
            pattern = re.compile(layers)
        except re.error as e:
            raise ValueError(f"layers: {layers!r} is not a valid regular expression ({e})") from None
        rows = [r for r in report.rows if pattern.search(r.name)]
        if not rows:
            raise ValueError(f"layers: no layer of the report matches {layers!r} (e.g. {report.rows[0].name!r})"
                             if report.rows else "layers: the report has no rows")
        return rows
    rows = []
    for name in layers:
        rows.append(report[name])  # KeyError naming the layer and near matches
    return rows


def _specs_by_name(source: Any, adapter: Any) -> dict[str, MatrixSpec]:
    if isinstance(source, nn.Module):
        specs = get_adapter(source, adapter).enumerate(source, include_embeddings=True)
    elif isinstance(source, Mapping):
        specs, _ = specs_from_named_weights(list(source.items()), include_embeddings=True)
    elif isinstance(source, Iterable) and not isinstance(source, (str, bytes, torch.Tensor)):
        items = list(source)
        if all(isinstance(s, MatrixSpec) for s in items):
            specs = items
        elif all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in items):
            specs, _ = specs_from_named_weights(items, include_embeddings=True)
        else:
            raise TypeError("source must be an nn.Module, a mapping name -> tensor, (name, tensor) pairs or "
                            "MatrixSpec objects")
    else:
        raise TypeError("source must be an nn.Module, a mapping name -> tensor, (name, tensor) pairs or MatrixSpec "
                        f"objects, got {type(source).__name__}")
    return {s.name: s for s in specs}


def _esd_options(report: Report, backend: str | None) -> dict[str, Any]:
    st = report.settings or {}
    dtype = st.get("dtype", "float32")
    return dict(dtype=(None if dtype == "auto" else getattr(torch, dtype)) if isinstance(dtype, str) else dtype,
                backend=backend or st.get("backend", "auto"), conv_mode=st.get("conv_mode", "slices"),
                conv_scale=float(st.get("conv_scale", 1.0)))


def layer_eigenvalues(
    report: Report,
    source: Any,
    *,
    layers: str | Sequence[str] | None = None,
    adapter: Any = "auto",
    backend: str | None = None,
    show_progress: bool = True,
) -> dict[str, np.ndarray | str]:
    """Recompute the ESD of the report's layers from the weights, with the report's analysis settings (dtype,
    conv_mode, conv_scale, backend).

    Args:
        report: the :class:`Report` whose rows are plotted.
        source: what the report analysed: the ``nn.Module`` (its adapter finds the matrices, embeddings included so
            any row can be found), a state_dict-like mapping, ``(name, tensor)`` pairs, or ``MatrixSpec`` s.
        layers: regular expression or list of names (see :func:`select_rows`); ``None`` = every row.
        adapter: the adapter for an ``nn.Module`` source (as given to :func:`tempbalance.analyze`).
        backend: override the report's backend ("torch", "native", "auto").
        show_progress: a tqdm bar on stderr when there are many layers (and tqdm is installed).

    Returns:
        ``{layer name: float64 ascending eigenvalues}``, or for a layer whose spectrum cannot be computed (not in
        ``source``, NaN weights, ...) a string saying why - a plot shows it instead of failing.
    """
    rows = select_rows(report, layers)
    specs = _specs_by_name(source, adapter)
    options = _esd_options(report, backend)
    out: dict[str, np.ndarray | str] = {}
    for row in progress(rows, desc="spectra", unit="layer", enabled=show_progress):
        spec = specs.get(row.name)
        if spec is None:
            out[row.name] = f"layer '{row.name}' is not in the given weights"
            continue
        try:
            with torch.no_grad():
                eigs = spectra.esd(spec.weight(), kind=row.kind, **options)
            out[row.name] = eigs.to(torch.float64).numpy()
        except Exception as e:  # noqa: BLE001 - a bad layer gets an explanatory panel, not a crash
            out[row.name] = f"layer '{row.name}': {type(e).__name__}: {e}"
    return out
