"""The ``--plot DIR`` part of ``tempbalance analyze``: its arguments and the files it writes."""
from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from typing import Any

from ..analysis.report import Report

ALPHA_LAYERS_PNG = "alpha_layers.png"
ALPHA_BLOCKS_PNG = "alpha_blocks.png"
ESD_DIR = "esd"


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    """``--plot DIR`` and ``--plot-layers REGEX`` on the analyze parser."""
    p.add_argument("--plot", metavar="DIR",
                   help=f"write PNG plots into DIR: {ALPHA_LAYERS_PNG}, {ALPHA_BLOCKS_PNG} (alpha with mean and "
                        f"STD) and {ESD_DIR}/NNN_<layer>.png (ESD with the fitted power-law tail) per layer")
    p.add_argument("--plot-layers", metavar="REGEX", default=None,
                   help="only these layers get an ESD plot (regular expression on the layer name)")


def check_plot_arguments(args: argparse.Namespace) -> None:
    """Fail before the (possibly long) analysis: a bad ``--plot-layers`` expression, or no matplotlib."""
    if getattr(args, "plot_layers", None) is not None:
        if not args.plot:
            raise ValueError("--plot-layers needs --plot DIR")
        try:
            re.compile(args.plot_layers)
        except re.error as e:
            raise ValueError(f"--plot-layers: {args.plot_layers!r} is not a valid regular expression ({e})") from None
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'tempbalance[plots]'")


def plots_summary(paths: list[Path], out_dir: str | Path) -> str:
    """One line saying where the plots went."""
    n_esd = sum(1 for p in paths if p.parent.name == ESD_DIR)
    out = Path(out_dir)
    return (f"plots: {out / ALPHA_LAYERS_PNG}, {out / ALPHA_BLOCKS_PNG}, "
            f"{n_esd} ESD plot{'s' if n_esd != 1 else ''} in {out / ESD_DIR}")


def write_plots(report: Report, target: Any, out_dir: str | Path, *, layers: str | None = None,
                show_progress: bool = True) -> list[Path]:
    """Alpha bars per layer and per block, and one ESD PNG per (selected) layer, into ``out_dir``; returns every
    path written. ``target`` is what the report analysed (model or state_dict) - the ESDs are recomputed from it.
    Raises ``ValueError`` for a ``layers`` expression that is invalid or matches nothing."""
    from . import plots  # matplotlib only when plots are asked for

    out = Path(out_dir)
    written = [plots.alpha_bars(report, out / ALPHA_LAYERS_PNG, unit="layer"),
               plots.alpha_bars(report, out / ALPHA_BLOCKS_PNG, unit="block")]
    written += plots.esd_plots(report, target, out / ESD_DIR, layers=layers, show_progress=show_progress)
    return written
