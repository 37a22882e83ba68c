"""Plots that compare the FT and TB arms (the per-model plots - alpha bars, alpha over training - come from
:mod:`tempbalance.diagnostics.plots`). Matplotlib's object API on the Agg canvas: no pyplot, no global state."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .finetune import RunResult, block_name_index

COLORS = {"FT": "#7F8C8D", "TB": "#C0392B"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight", pad_inches=0.08)
    fig.clear()
    return out


def by_size(summary: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, metric: str = "acc",
            title: str | None = None) -> Path:
    """FT vs TB against the training size (log axis), mean ± STD over seeds as error bars. ``metric="acc"``:
    test accuracy (%); ``"alpha_std"``: block-wise STD of PL_Alpha_Hill after fine-tuning (paper Fig. 2)."""
    if metric not in ("acc", "alpha_std"):
        raise ValueError(f"metric must be 'acc' or 'alpha_std', got {metric!r}")
    sizes = np.array([r["size"] for r in summary], dtype=np.float64)
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for k, arm in enumerate(("FT", "TB")):
        mean = np.array([r[f"{arm}_{metric}_mean"] for r in summary], dtype=np.float64)
        std = np.array([r[f"{arm}_{metric}_std"] for r in summary], dtype=np.float64)
        ax.errorbar(sizes * (1 + 0.04 * (2 * k - 1)), mean, yerr=std, color=COLORS[arm], marker="o", capsize=3,
                    label=arm)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(int(s)) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training sentences")
    ax.set_ylabel("SST-2 validation accuracy (%)" if metric == "acc" else "STD of block PL_Alpha_Hill")
    ax.set_title(title or ("accuracy: FT vs TempBalance (mean ± STD over seeds)" if metric == "acc"
                           else "layer imbalance after fine-tuning (mean ± STD over seeds)"))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def paired_accuracy(results: Sequence[RunResult], path: str | os.PathLike[str], *, metric: str = "test") -> Path:
    """Per seed, FT and TB accuracy joined by a line (one training size): shows the paired differences."""
    fig = _figure(4.5, 4.0)
    ax = fig.add_subplot()
    by = {(r.arm, r.seed): 100 * r.eval[metric] for r in results}
    seeds = sorted({s for a, s in by if a == "FT"} & {s for a, s in by if a == "TB"})
    for s in seeds:
        ax.plot([0, 1], [by["FT", s], by["TB", s]], color="#555555", alpha=0.6, marker="o")
    for k, arm in enumerate(("FT", "TB")):
        v = np.array([by[arm, s] for s in seeds])
        ax.errorbar([k + 0.12 * (2 * k - 1)], [v.mean()], yerr=[v.std(ddof=1) if v.size > 1 else 0.0],
                    color=COLORS[arm], marker="D", capsize=4, markersize=8)
    ax.set_xticks([0, 1], ["FT", "TB"])
    ax.set_xlim(-0.5, 1.5)
    sizes = sorted({r.size for r in results})
    ax.set_ylabel("SST-2 validation accuracy (%)")
    ax.set_title(f"{', '.join(map(str, sizes))} training sentences, {len(seeds)} seeds (lines pair a seed)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def block_alpha_compare(results: Sequence[RunResult], path: str | os.PathLike[str]) -> Path:
    """Mean PL_Alpha_Hill per transformer block after fine-tuning, FT vs TB (mean over runs, STD as error
    bars); the legend gives each arm's block-wise STD of alpha (mean over runs)."""
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    blocks = sorted({b for r in results for b in r.block_alpha}, key=block_name_index)
    x = np.arange(len(blocks))
    for k, arm in enumerate(("FT", "TB")):
        runs = [r for r in results if r.arm == arm]
        if not runs:
            continue
        vals = np.array([[r.block_alpha.get(b, np.nan) for b in blocks] for r in runs], dtype=np.float64)
        std_alpha = np.nanmean([r.block_alpha_std for r in runs])
        ax.bar(x + 0.4 * (k - 0.5), np.nanmean(vals, 0), width=0.4, yerr=np.nanstd(vals, 0), capsize=2,
               color=COLORS[arm], label=f"{arm} (STD across blocks {std_alpha:.3f})")
    ax.set_xticks(x, [f"block {block_name_index(b)}" for b in blocks])
    lo = np.nanmin([v for r in results for v in r.block_alpha.values()] or [0.0])
    ax.set_ylim(bottom=max(0.0, lo - 0.5))
    ax.set_ylabel("mean PL_Alpha_Hill of the block")
    ax.set_title("alpha per block after fine-tuning")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return _save(fig, path)
