"""PNG plots of an analysis and of a training run: alpha per layer / block, ESD histograms with the fitted tail,
alpha and factors over training.

Every function takes data and a path, writes one PNG (or a folder of them) and returns where it wrote. Figures are
built on matplotlib's object API with the Agg canvas: pyplot is never imported, no global backend is switched, and
nothing stays open after a call (safe in notebooks, servers and training jobs).
"""
from __future__ import annotations

import math
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib import colormaps

from ..analysis.report import LayerResult, Report
from .esd_data import (auto_bins, esd_density, layer_eigenvalues, positive_finite, power_law_tail_density, select_rows,
                       tail_share)
from .progress import progress

_BAR = "#4C72B0"
_BAR_ALT = "#7EA6D8"
_FAIL = "#C0392B"
_MEAN = "#222222"
_BAND = "#F0B429"
_STD = "#7D3C98"


# --- figure plumbing ----------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    # No layout engine: constrained layout re-measures every log tick label and costs seconds per figure; ESD
    # figures get fixed margins, the others a single tight-bbox pass when saved.
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: no pyplot, no global backend
    return fig


def _save(fig: Figure, path: str | os.PathLike[str], dpi: int, tight: bool = True) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight" if tight else None, pad_inches=0.08)
    fig.clear()
    return out


def _margins(fig: Figure, *, left: float = 0.75, right: float = 0.15, bottom: float = 0.55, top: float = 0.4,
             wspace: float = 0.2, hspace: float = 0.2) -> None:
    """Fixed margins in inches (cheap, unlike a layout engine); ``wspace``/``hspace`` as fractions of a panel."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, wspace=wspace,
                        hspace=hspace)


def short_names(names: Sequence[str]) -> list[str]:
    """``names`` without the dotted prefix they all share (``encoder.layer.0``, ``encoder.layer.1`` ->
    ``layer.0``, ``layer.1``: an index keeps the name before it)."""
    if len(names) < 2:
        return [n.rsplit(".", 1)[-1] if n.count(".") > 2 else n for n in names]
    parts = [n.split(".") for n in names]
    k = 0
    while all(len(p) > k + 1 for p in parts) and len({p[k] for p in parts}) == 1:
        k += 1
    if k and any(p[k].isdigit() for p in parts):  # keep the container's name: "layer.0", not "0"
        k -= 1
    return [".".join(p[k:]) for p in parts]


def _fmt(v: float, spec: str = ".3f") -> str:
    return format(v, spec) if math.isfinite(v) else "-"


def _xticks(ax, labels: list[str]) -> None:
    n = len(labels)
    every = max(1, math.ceil(n / 80))  # at most ~80 readable labels
    ticks = list(range(0, n, every))
    ax.set_xticks(ticks)
    ax.set_xticklabels([labels[i] for i in ticks], rotation=90, fontsize=7 if n > 24 else 8)
    ax.set_xlim(-0.7, n - 0.3)


def _mean_band(ax, mean: float, std: float, label: str) -> None:
    if not math.isfinite(mean):
        return
    ax.axhline(mean, color=_MEAN, lw=1.2, ls="--", label=f"mean {label}", zorder=3)
    if math.isfinite(std) and std > 0:
        ax.axhspan(mean - std, mean + std, color=_BAND, alpha=0.22, lw=0, label="± STD", zorder=0)


def _text_box(ax, text: str, loc: str = "upper left") -> None:
    x, ha = (0.01, "left") if "left" in loc else (0.99, "right")
    y, va = (0.98, "top") if "upper" in loc else (0.02, "bottom")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=8, zorder=5,
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.7", alpha=0.9))


# --- alpha per layer / block --------------------------------------------------------------------------------------
def alpha_bars(report: Report, path: str | os.PathLike[str], *, unit: str = "layer", title: str | None = None,
               dpi: int = 110) -> Path:
    """Bar chart of PL_Alpha_Hill per layer (``unit="layer"``) or per block (``unit="block"``, the mean alpha of
    each unit's fitted layers, with its layers' alphas as dots), the mean as a dashed line, a ±STD band and a text
    box with mean, STD and how many were fitted. Layers (blocks) without a valid fit get a red cross at the axis
    and their status in the tick label.

    Returns the path of the PNG written (``path``, parent folders created).
    """
    if unit not in ("layer", "block"):
        raise ValueError(f"unit must be 'layer' or 'block', got {unit!r}")
    if not isinstance(report, Report):
        raise TypeError(f"report must be a tempbalance.Report, got {type(report).__name__}")
    s = report.summary
    if unit == "layer":
        names = [r.name for r in report.rows]
        values = np.array([r.alpha if r.ok else math.nan for r in report.rows], dtype=np.float64)
        bad_status = [r.status if not r.ok else "" for r in report.rows]
        mean, std, n_ok = s["alpha_mean"], s["alpha_std"], s["n_ok"]
        block_of = [r.unit for r in report.rows]  # stripe the bars by block so the grouping shows
        colors = []
        shade, prev = 0, None
        for b in block_of:
            if prev is not None and b != prev:
                shade ^= 1
            colors.append(_BAR if shade == 0 else _BAR_ALT)
            prev = b
    else:
        unit_alpha = report.unit_alpha()
        names = list(unit_alpha)
        values = np.array(list(unit_alpha.values()), dtype=np.float64)
        bad_status = ["" if math.isfinite(v) else "no fit" for v in values]
        mean, std, n_ok = s["unit_alpha_mean"], s["unit_alpha_std"], s["n_units_ok"]
        colors = [_BAR] * len(names)
    n = len(names)
    fig = _figure(min(max(6.0, 0.2 * n + 2.5), 40.0), 4.6)
    ax = fig.add_subplot()
    x = np.arange(n)
    finite = np.isfinite(values)
    ax.bar(x[finite], values[finite], color=[c for c, f in zip(colors, finite) if f], width=0.8, zorder=2)
    top = float(np.nanmax(values)) if finite.any() else 1.0
    if unit == "block":
        pos = {u: k for k, u in enumerate(names)}
        pts = [(pos[r.unit], r.alpha) for r in report.rows if r.ok and math.isfinite(r.alpha)]
        if pts:
            px, py = zip(*pts)
            ax.scatter(px, py, s=9, color=_MEAN, alpha=0.6, zorder=4, label="its layers")
            top = max(top, max(py))
    if (~finite).any():
        ax.scatter(x[~finite], np.zeros(int((~finite).sum())), marker="x", s=40, color=_FAIL, zorder=4,
                   clip_on=False, label="no fit")
    _mean_band(ax, mean, std, "α")
    labels = short_names(names)
    labels = [f"{lab} [{st}]" if st else lab for lab, st in zip(labels, bad_status)]
    if n:
        _xticks(ax, labels)
        for tick, st in zip(ax.get_xticklabels(), [bad_status[i] for i in ax.get_xticks().astype(int)]):
            if st:
                tick.set_color(_FAIL)
    ax.set_ylim(0, max(top, (mean + std) if math.isfinite(mean + std) else 0) * 1.25 + 1e-9)
    ax.set_ylabel("PL_Alpha_Hill α" if unit == "layer" else "mean α of the block")
    ax.set_title(title or f"α per {unit} ({n} {unit}s)")
    ax.grid(axis="y", alpha=0.3, zorder=0)
    _text_box(ax, f"mean α = {_fmt(mean)}\nSTD = {_fmt(std)}\n{n_ok} of {n} {unit}s fitted")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    return _save(fig, path, dpi)


# --- ESD histograms -----------------------------------------------------------------------------------------------
def _draw_esd(ax, eigenvalues: Any, *, alpha: float | None, xmin: float | None, n_tail: int | None,
              title: str, note: str = "", n_bins: int | None = None) -> None:
    """One ESD panel: log-log density histogram, the fitted tail from xmin, xmin as a vertical line."""
    ax.set_title(title, fontsize=9)
    if isinstance(eigenvalues, str):  # the spectrum could not be computed: say why instead of failing
        ax.text(0.5, 0.5, textwrap.fill(eigenvalues, 48), transform=ax.transAxes, ha="center", va="center",
                fontsize=7, color=_FAIL)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    lam = positive_finite(eigenvalues)
    if lam.size == 0:
        ax.text(0.5, 0.5, "no positive eigenvalues", transform=ax.transAxes, ha="center", va="center", color=_FAIL)
        return
    edges, density = esd_density(lam, auto_bins(lam.size) if n_bins is None else n_bins)
    ax.stairs(density, edges, fill=True, color=_BAR, alpha=0.55, label=f"ESD ({lam.size} eigenvalues)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lines = []
    if xmin is not None and math.isfinite(xmin) and xmin > 0:
        ax.axvline(xmin, color=_FAIL, ls="--", lw=1.2, label=f"xmin = {xmin:.3g}")
    fitted = alpha is not None and math.isfinite(alpha) and alpha > 1 and xmin is not None and math.isfinite(xmin) \
        and xmin > 0
    if fitted:
        n_t = n_tail if n_tail is not None and n_tail > 0 else int((lam >= xmin).sum())
        frac = tail_share(n_t, lam.size)
        if frac > 0:
            grid = np.geomspace(xmin, max(float(lam.max()), xmin * 1.0001), 200)
            ax.plot(grid, power_law_tail_density(grid, alpha=alpha, xmin=xmin, tail_fraction=frac), color=_MEAN,
                    lw=1.6, label=f"power law α = {alpha:.2f}")
        lines.append(f"α = {alpha:.3f}")
        lines.append(f"tail {n_t} of {lam.size}")
    if note:
        lines.append(note)
    positive = density[density > 0]
    if positive.size:
        ax.set_ylim(positive.min() / 3, positive.max() * 3)
    ax.set_xlabel("eigenvalue λ", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.tick_params(labelsize=7)
    if lines:
        _text_box(ax, "\n".join(lines), loc="lower left")
    ax.legend(loc="upper right", fontsize=7, framealpha=0.9)


def esd_plot(eigenvalues: Any, path: str | os.PathLike[str], *, alpha: float | None = None,
             xmin: float | None = None, n_tail: int | None = None, title: str = "ESD", note: str = "",
             n_bins: int | None = None, dpi: int = 110) -> Path:
    """One layer's ESD as a PNG: density histogram of the positive eigenvalues on log-spaced bins (log-log axes),
    the fitted power-law tail ``∝ λ^-alpha`` from ``xmin`` (normalised to the tail's share ``n_tail / N`` of the
    eigenvalues, so it sits on the histogram), and ``xmin`` as a vertical dashed line.

    ``alpha``/``xmin`` ``None`` (or NaN: a layer without a fit) draws the histogram only; ``n_tail`` defaults to
    the number of eigenvalues ``>= xmin``. ``note`` is added to the text box (e.g. a status). ``n_bins``:
    histogram bins, ``None`` = about ``2 sqrt(N)`` (10 to 80). ``eigenvalues`` may also be a string: the panel
    then shows it as the reason there is no spectrum. Returns ``path``.
    """
    fig = _figure(6.0, 4.2)
    _margins(fig)
    _draw_esd(fig.add_subplot(), eigenvalues, alpha=alpha, xmin=xmin, n_tail=n_tail, title=title, note=note,
              n_bins=n_bins)
    return _save(fig, path, dpi, tight=False)


def _row_args(row: LayerResult) -> dict[str, Any]:
    note = f"KS = {row.ks_distance:.3f}" if row.ok and math.isfinite(row.ks_distance) else \
        ("" if row.ok else f"status: {row.status}")
    return dict(alpha=row.alpha if row.ok else None, xmin=row.xmin if math.isfinite(row.xmin) else None,
                n_tail=row.n_tail if row.ok else None, title=row.name, note=note)


def esd_grid(report: Report, source: Any, path: str | os.PathLike[str], *, layers: str | Sequence[str] | None = None,
             ncols: int = 4, max_panels: int = 64, eigenvalues: Mapping[str, Any] | None = None,
             adapter: Any = "auto", n_bins: int | None = None, dpi: int = 90, show_progress: bool = True) -> Path:
    """All (or the ``layers``-selected) ESDs of a report as one PNG grid of :func:`esd_plot` panels.

    ``source`` is what the report analysed (model, state_dict, named tensors or MatrixSpecs); the eigenvalues are
    recomputed from it with the report's settings (:func:`~tempbalance.diagnostics.layer_eigenvalues`) unless
    ``eigenvalues`` ({name: array}) is given. More than ``max_panels`` layers is a ``ValueError`` (select some with
    ``layers=``, or write one file per layer with :func:`esd_plots`). Returns ``path``.
    """
    rows = select_rows(report, layers)
    if len(rows) > max_panels:
        raise ValueError(f"{len(rows)} layers do not fit one readable grid (max_panels={max_panels}); select some with "
                         "layers='regex' or use esd_plots() for one PNG per layer")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be an integer >= 1, got {ncols!r}")
    eigs = eigenvalues if eigenvalues is not None else layer_eigenvalues(
        report, source, layers=[r.name for r in rows], adapter=adapter, show_progress=show_progress)
    ncols = min(ncols, max(1, len(rows)))
    nrows = max(1, math.ceil(len(rows) / ncols))
    fig = _figure(4.0 * ncols, 3.1 * nrows)
    _margins(fig, wspace=0.35, hspace=0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, row in zip(axes, rows):
        _draw_esd(ax, eigs.get(row.name, f"no eigenvalues given for '{row.name}'"), n_bins=n_bins, **_row_args(row))
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    return _save(fig, path, dpi, tight=False)


def esd_filename(index: int, name: str) -> str:
    """File name of a layer's ESD PNG in :func:`esd_plots`: model order first, then the layer name, file-safe."""
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"


def esd_plots(report: Report, source: Any, out_dir: str | os.PathLike[str], *,
              layers: str | Sequence[str] | None = None, eigenvalues: Mapping[str, Any] | None = None,
              adapter: Any = "auto", n_bins: int | None = None, dpi: int = 100,
              show_progress: bool = True) -> list[Path]:
    """One :func:`esd_plot` PNG per (selected) layer of ``report`` in ``out_dir``, named by :func:`esd_filename`
    (the layer's position in the report, so files sort in model order). Eigenvalues as in :func:`esd_grid`.
    Layers without a fit get their histogram and status; layers whose spectrum cannot be computed get a panel
    saying why. Returns the paths written, in report order."""
    rows = select_rows(report, layers)
    position = {r.name: k for k, r in enumerate(report.rows)}
    eigs = eigenvalues if eigenvalues is not None else layer_eigenvalues(
        report, source, layers=[r.name for r in rows], adapter=adapter, show_progress=show_progress)
    out = Path(out_dir)
    written = []
    for row in progress(rows, desc="ESD plots", unit="plot", enabled=show_progress):
        args = _row_args(row)
        written.append(esd_plot(eigs.get(row.name, f"no eigenvalues given for '{row.name}'"),
                                out / esd_filename(position[row.name], row.name), n_bins=n_bins, dpi=dpi, **args))
    return written


# --- over training ------------------------------------------------------------------------------------------------
_RECORD_KEYS = ("step", "unit_values", "factors", "alpha_std")


def _history(history: Any) -> list[dict]:
    recs = getattr(history, "history", history)  # a TempBalance object or its history list
    if not isinstance(recs, (list, tuple)) or not recs:
        raise ValueError("history must be a non-empty list of TempBalance refresh records (tb.history)")
    for k, rec in enumerate(recs):
        missing = [key for key in _RECORD_KEYS if not isinstance(rec, Mapping) or key not in rec]
        if missing:
            raise ValueError(f"history[{k}] is not a TempBalance refresh record: missing {missing}")
    return list(recs)


def _x_axis(recs: list[dict], x: str) -> tuple[np.ndarray, str]:
    if x not in ("auto", "step", "epoch", "refresh"):
        raise ValueError(f"x must be 'auto', 'step', 'epoch' or 'refresh', got {x!r}")
    steps = np.array([r["step"] for r in recs], dtype=np.float64)
    epochs = np.array([r.get("epoch", 0) for r in recs], dtype=np.float64)
    if x == "auto":  # per-step refreshes -> step; per-epoch use without steps -> epoch; else the refresh count
        x = "step" if len(set(steps)) == len(steps) else ("epoch" if len(set(epochs)) == len(epochs) else "refresh")
    if x == "step":
        return steps, "step"
    if x == "epoch":
        return epochs, "epoch"
    return np.arange(len(recs), dtype=np.float64), "refresh"


def alpha_over_training(history: Any, path: str | os.PathLike[str], *, x: str = "auto", metric: str = "alpha",
                        max_legend: int = 12, title: str | None = None, dpi: int = 110) -> Path:
    """Three stacked panels over a TempBalance run: the mean ``metric`` (alpha) of every unit, the STD of alpha
    across layers, and the LR factor of every unit; refreshes where a unit's spectral pass failed are marked with
    red dotted lines.

    ``history`` is ``tb.history`` (or the TempBalance object itself). ``x``: "step", "epoch", "refresh" or
    "auto" (step when every refresh has its own step, else epoch, else the refresh count). Units are coloured
    first (blue) to last (yellow); with more than ``max_legend`` units the legend gives way to that note.
    Returns ``path``.
    """
    recs = _history(history)
    xs, xlabel = _x_axis(recs, x)
    units: list[str] = list(dict.fromkeys(u for r in recs for u in list(r["unit_values"]) + list(r["factors"])))
    cmap = colormaps["viridis"]
    colors = {u: cmap(k / max(1, len(units) - 1) * 0.9) for k, u in enumerate(units)}
    labels = dict(zip(units, short_names(units)))
    marker = "o" if len(recs) <= 30 else None
    fig = _figure(9.0, 8.0)
    _margins(fig, hspace=0.08)
    ax_a, ax_s, ax_f = fig.subplots(3, 1, sharex=True, height_ratios=[3, 1.3, 2.2])
    for u in units:
        va = np.array([r["unit_values"].get(u, math.nan) for r in recs], dtype=np.float64)
        fa = np.array([r["factors"].get(u, math.nan) for r in recs], dtype=np.float64)
        ax_a.plot(xs, va, color=colors[u], lw=1.1, marker=marker, ms=3, label=labels[u])
        ax_f.plot(xs, fa, color=colors[u], lw=1.1, marker=marker, ms=3)
    with np.errstate(all="ignore"):
        mean = np.array([np.nanmean([v for v in r["unit_values"].values() if v is not None] or [math.nan])
                         for r in recs], dtype=np.float64)
    ax_a.plot(xs, mean, color=_MEAN, lw=2.0, ls="--", label="mean over units")
    std = np.array([r["alpha_std"] for r in recs], dtype=np.float64)
    ax_s.plot(xs, std, color=_STD, lw=1.4, marker=marker, ms=3)
    ax_f.axhline(1.0, color="0.5", lw=0.8, ls=":")
    for xi, r in zip(xs, recs):
        if r.get("failed"):
            for ax in (ax_a, ax_s, ax_f):
                ax.axvline(xi, color=_FAIL, ls=":", lw=1.2)
            for u in r["failed"]:  # the failed unit kept its value and factor: cross them out
                for ax, key in ((ax_a, "unit_values"), (ax_f, "factors")):
                    v = r[key].get(u, math.nan)
                    if v is not None and math.isfinite(v):
                        ax.scatter([xi], [v], marker="x", s=36, color=_FAIL, zorder=5)
    ax_a.set_ylabel(f"unit mean {metric}")
    ax_s.set_ylabel("STD of α")
    ax_f.set_ylabel("LR factor")
    ax_f.set_xlabel(xlabel)
    for ax in (ax_a, ax_s, ax_f):
        ax.grid(alpha=0.3)
    n_failed = sum(1 for r in recs if r.get("failed"))
    ax_a.set_title(title or f"TempBalance over training: {len(units)} units, {len(recs)} refreshes"
                   + (f", {n_failed} with failed units (red)" if n_failed else ""))
    if len(units) <= max_legend:
        ax_a.legend(fontsize=7, ncol=2 if len(units) > 6 else 1, loc="best", framealpha=0.9)
    else:
        _text_box(ax_a, f"{len(units)} units, coloured first (blue) to last (yellow)\n"
                        f"{labels[units[0]]} ... {labels[units[-1]]}", loc="upper left")
    return _save(fig, path, dpi)
