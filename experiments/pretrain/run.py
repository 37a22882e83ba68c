"""Small LLaMA-style pretraining on real English text (issues 26, 27): AdamW and Muon, each with and without a
spectral method, paired by seed.

    python3 experiments/pretrain/run.py --arms adamw muon --seeds 3 --resume     # the baselines
    python3 experiments/pretrain/run.py --smoke                                  # CI: a tiny model, seconds
    python3 experiments/pretrain/run.py --report-only                            # the report from runs.jsonl

Protocol. A decoder from ``transformers.LlamaConfig`` (:class:`.train.ModelConfig`: hidden 256, 4 blocks, 4
heads, SwiGLU 768, context 256 bytes) trains from scratch on the byte stream of Wikipedia's Level-4 Vital Articles
(:mod:`.data`) for a fixed token budget (:class:`.train.TrainConfig`), validation loss on the first 64 windows of
the held-out articles every ``eval_every`` steps and on 256 windows at the end (the reported perplexity, per byte).
A seed fixes the initialisation and the batch order, shared by every arm: comparisons are paired by seed. Every
arm trains with the same peak lr, schedule and weight decay; the spectral arms change only what their method
changes (per-block lr or weight-decay factors from TempBalance's spectral pass).

Every finished run is appended to ``<out>/runs.jsonl`` at once; ``--resume`` skips the (arm, seed) runs already
there with the same settings, so a stopped queue continues where it was. The report (``results.md``,
``summary.json``, ``runs.csv``, ``curves.png``; :mod:`.report`) is rebuilt from every stored run at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make `experiments.pretrain` importable (appended, so an installed
    sys.path.append(str(Path(__file__).resolve().parents[2]))  # tempbalance wins over the source tree)
    __package__ = "experiments.pretrain"

import torch

from tempbalance.demo.run import json_ready, set_threads
from tempbalance.diagnostics.progress import StepBar

from . import data as D
from . import report as R
from .train import ModelConfig, TrainConfig, param_counts, build_model, train_run

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Arm:
    """An optimizer and, for a spectral arm, the TempBalance keywords (a function of the run's config, so a preset
    can see the step budget) and what they are."""

    optimizer: str
    tb: Callable[[TrainConfig], dict[str, Any]] | None = None
    method: str = ""


# The spectral arms, scaled to this budget (every choice below is one try, not tuned here):
# - AlphaDecay: the preset of the published AdamW runs (tb_linear_map, wd ratios 0.6666 - 5, compat "alphadecay"),
#   refreshed every 50 steps: the published every 500 of a 10,000-step 60M run, as the same 5 % of our steps.
# - LLR: the preset of the published 1B/20B AdamW runs at their lr_max_ratio 3 variant (ratios 1 - 3, LLR for the
#   whole run: llr_ratio 1.0), a refresh every 100 updates and transitions of 50 as published, max_steps = ours;
#   the Muon preset with the same options.
# - LLR + AlphaDecay from one pass: both policies (their defaults' mode, not compat: two compat schemes cannot share
#   one pass) on LLR's cadence, every matrix of a block its own unit.
AD_EVERY = 50
LLR_OPTIONS = dict(lr_max_ratio=3.0, llr_ratio=1.0)


def _alphadecay(cfg: TrainConfig) -> dict[str, Any]:
    return dict(preset="alphadecay-llama-adamw", every=AD_EVERY)


def _llr(preset: str) -> Callable[[TrainConfig], dict[str, Any]]:
    return lambda cfg: dict(preset=preset, max_steps=cfg.steps, **LLR_OPTIONS)


def _llr_alphadecay(cfg: TrainConfig) -> dict[str, Any]:
    from tempbalance.training.alphadecay import AlphaDecay
    from tempbalance.training.llr import LLR, LLRCadence

    return dict(unit="layer", min_eigs=50, interval=LLRCadence(100),
                policy=[LLR(lr_min_ratio=1.0, lr_max_ratio=LLR_OPTIONS["lr_max_ratio"], linear_steps=50),
                        AlphaDecay("tb_linear_map", wd_min_ratio=0.6666, wd_max_ratio=5.0)])


ARMS: dict[str, Arm] = {
    "adamw": Arm("adamw"),
    "muon": Arm("muon"),
    "adamw+alphadecay": Arm("adamw", _alphadecay, f"AlphaDecay preset alphadecay-llama-adamw, every {AD_EVERY}"),
    "adamw+llr": Arm("adamw", _llr("llr-adamw-1b-20b"), f"LLR preset llr-adamw-1b-20b, {LLR_OPTIONS}"),
    "muon+llr": Arm("muon", _llr("llr-muon-1b-20b"), f"LLR preset llr-muon-1b-20b, {LLR_OPTIONS}"),
    "adamw+llr+alphadecay": Arm("adamw", _llr_alphadecay,
                                "LLR (1 - 3, 50-step transitions) + AlphaDecay (tb_linear_map 0.6666 - 5), one "
                                "pass every 100 steps, unit layer"),
}
SMOKE_MODEL = ModelConfig(hidden=64, layers=2, heads=2, ffn=128, seq_len=32)  # 64 eigenvalues per matrix
SMOKE = TrainConfig(model=SMOKE_MODEL, steps=12, batch=4, warmup=3, eval_every=4, val_windows=8, final_windows=16)
FULL = TrainConfig()


def run_settings(cfg: TrainConfig, arm: str) -> dict[str, Any]:
    """What a stored run must match to be reused: the config with the arm's optimizer, and its method."""
    a = ARMS[arm]
    out = replace(cfg, optimizer=a.optimizer).settings()
    out["method"] = a.method
    out["tb"] = _plain(a.tb(replace(cfg, optimizer=a.optimizer))) if a.tb is not None else None
    out["corpus"] = f"{D.PACKAGE}=={D.VERSION}:{D.FILE}"
    return json_ready(out)


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    """TempBalance keywords as JSON: plain values as they are, an object (a policy, also in a list) by its class name."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if isinstance(v, (int, float, str, bool, type(None), dict)) else type(v).__name__

    return {k: plain(v) for k, v in kwargs.items()}


def load_runs(path: Path, settings: Callable[[str], dict[str, Any]]) -> tuple[dict[tuple[str, int], dict], int]:
    """The stored runs whose settings match, by (arm, seed), and how many did not match (other settings or arms)."""
    runs, stale = {}, 0
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            if d.get("arm") in ARMS and d.get("settings") == settings(d["arm"]):
                runs[(d["arm"], d["seed"])] = d
            else:
                stale += 1
    return runs, stale


def plan(arms: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """(arm, seed) of every run, seed by seed: a stopped queue leaves whole seeds, so pairs complete early."""
    return [(a, s) for s in seeds for a in arms]


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.jsonl"
    if path.exists() and not (args.resume or args.report_only or args.overwrite):
        raise SystemExit(f"error: {path} exists; --resume continues it, --overwrite starts over (its runs are lost)")
    if args.overwrite and path.exists():
        path.unlink()
    threads = set_threads(args.threads)
    cfg: TrainConfig = args.config
    settings = lambda arm: run_settings(cfg, arm)  # noqa: E731
    done, stale = load_runs(path, settings)
    todo = [] if args.report_only else [k for k in plan(args.arms, args.seed_list) if k not in done]
    print(f"pretrain: {len(done)} runs stored ({stale} with other settings ignored), {len(todo)} to run", flush=True)
    meta_path = out / "meta.json"
    if todo:
        corpus = D.load_corpus(cfg.val_percent)
        meta = dict(corpus=f"{D.PACKAGE}=={D.VERSION}", corpus_file=D.FILE, train_bytes=int(corpus.train.numel()),
                    val_bytes=int(corpus.val.numel()), train_articles=corpus.train_articles,
                    val_articles=corpus.val_articles, params=param_counts(build_model(cfg.model, 0)),
                    tokens=cfg.tokens, config=cfg.settings(), torch=torch.__version__, threads=threads,
                    smoke=args.smoke)
        meta_path.write_text(json.dumps(json_ready(meta), indent=1))
        bar = StepBar(cfg.steps * len(todo), f"{len(todo)} runs", enabled=not args.no_progress)
        try:
            with path.open("a") as log:
                for k, (arm, seed) in enumerate(todo):
                    bar.note(f"{arm} seed={seed}")
                    a = ARMS[arm]
                    run_cfg = replace(cfg, optimizer=a.optimizer)
                    res = train_run(corpus, run_cfg, seed, a.tb(run_cfg) if a.tb is not None else None,
                                    progress=bar.update)
                    rec = dict(res.to_dict(), arm=arm, seed=seed, settings=settings(arm),
                               finished=time.strftime("%Y-%m-%d %H:%M:%S"))
                    log.write(json.dumps(json_ready(rec)) + "\n")
                    log.flush()
                    if args.no_progress:
                        print(f"[{k + 1}/{len(todo)}] {arm} seed={seed}: val ppl {res.final_ppl:.3f} "
                              f"({res.final_bpb:.3f} bits/byte), {res.seconds:.0f} s wall, {res.cpu_seconds:.0f} s "
                              f"CPU, spectral {res.spectral_seconds:.1f} s", flush=True)
        finally:
            bar.close()
        done, _ = load_runs(path, settings)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    result = R.write(list(done.values()), meta, out, smoke=args.smoke)
    result["seconds"] = time.perf_counter() - start
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny model for a few steps on the real corpus (CI)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), help="arms (default: all)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 (default 3; smoke 2)")
    p.add_argument("--seed-list", type=int, nargs="+", default=None, help="these seeds instead of --seeds")
    p.add_argument("--steps", type=int, help=f"optimizer steps (default {FULL.steps}; the token budget)")
    p.add_argument("--lr", type=float, help=f"peak lr of every arm (default {FULL.lr:g})")
    p.add_argument("--out", default=None, help="output folder (default experiments/pretrain/results; smoke: temp)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true", help="a log line per run instead of a progress bar")
    p.add_argument("--resume", action="store_true", help="keep the runs in <out>/runs.jsonl with the same settings")
    p.add_argument("--overwrite", action="store_true", help="discard <out>/runs.jsonl and start over")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from <out>/runs.jsonl, run nothing")
    args = p.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    if args.steps is not None:
        if args.steps < 1:
            p.error("--steps must be >= 1")
        cfg = replace(cfg, steps=args.steps, warmup=min(cfg.warmup, args.steps))
    if args.lr is not None:
        if not args.lr > 0:
            p.error("--lr must be > 0")
        cfg = replace(cfg, lr=args.lr)
    args.config = cfg
    args.arms = args.arms or list(ARMS)
    if args.seed_list is None:
        n = args.seeds if args.seeds is not None else (2 if args.smoke else 3)
        if n < 1:
            p.error("--seeds must be >= 1")
        args.seed_list = list(range(n))
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="pretrain-smoke-") if args.smoke else str(HERE / "results")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        out = run(args)
    except D.MissingCorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out} ({out['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
