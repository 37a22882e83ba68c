"""LoRA vs LoRA + TempBalance on a LLaMA-style decoder (SmolLM2-135M-Instruct) at several training-set sizes.

    flock /tmp/tb/heavy.lock python3 experiments/lora/run.py            # the default (about 20 min on 2 cores)
    python3 experiments/lora/run.py --smoke                              # CI: tiny random Llama, synthetic data
    python3 experiments/lora/run.py --sizes 64 256 1024 --seeds 5        # larger settings are flags

Protocol (both arms identical except TempBalance): for every training size N, each arm searches the same LR grid
with seed 0 and keeps the LR with the best dev accuracy (ARC-Easy validation questions); then every seed trains at
that LR and is scored once on the held-out evaluation questions. A seed fixes the training draw, the LoRA init,
the batch order and dropout, so the arms are paired by seed. Writes results.json, runs.csv, summary.csv,
summary.md and PNG plots to --out.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `experiments.lora` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "experiments.lora"

import torch

from . import data as D
from . import report as R
from . import train as T

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny random Llama + synthetic questions (< 1 min, no model "
                   "or data package needed)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="training-set sizes (default 32 128)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm and size (default 3)")
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="LR grid searched on dev for each arm and size "
                   "(default 5e-4 2e-3)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run, the same at every N (default 16; "
                   "N=32 then sees 4 epochs, N=128 one)")
    p.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of a fixed step count")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-len", type=int, default=96, help="max tokens of question + answer (prompt cut from the left)")
    p.add_argument("--n-eval", type=int, default=None, help="held-out test questions scored (default 150)")
    p.add_argument("--n-dev", type=int, default=None, help="dev (validation) questions for the LR search (default 60)")
    p.add_argument("--norm", choices=D.NORMS, default="per_char", help="answer-ranking normalisation reported")
    p.add_argument("--tb-interval", type=int, default=None, help="TempBalance re-analyses every k optimizer steps "
                   "(default 4)")
    p.add_argument("--tb-s-lo", type=float, default=2.0)
    p.add_argument("--tb-s-hi", type=float, default=1.0)
    p.add_argument("--no-track-alpha", action="store_true", help="skip the LoRA arm's per-epoch spectral pass")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="output folder (default experiments/lora/results, or a "
                   "temporary folder with --smoke)")
    a = p.parse_args(argv)
    small = a.smoke
    a.sizes = a.sizes or ([8, 16] if small else [32, 128])
    a.seeds = a.seeds or (2 if small else 3)
    a.lrs = a.lrs or ([1e-3] if small else [5e-4, 2e-3])
    if a.epochs is None:
        a.steps = a.steps or (4 if small else 16)
    elif a.steps is not None:
        p.error("--steps and --epochs exclude each other")
    a.tb_interval = a.tb_interval or (2 if small else 4)
    a.n_eval = a.n_eval or (12 if small else 150)
    a.n_dev = a.n_dev or (8 if small else 60)
    if a.out is None:
        if small:
            import tempfile
            a.out = Path(tempfile.mkdtemp(prefix="lora-smoke-"))
        else:
            a.out = HERE / "results"
    return a


def synthetic_questions(n: int, seed: int) -> list[D.Question]:
    """Smoke-run data: 'Which number is larger?' questions with four numeric answers."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        nums = rng.sample(range(10, 99), 4)
        gold = max(range(4), key=lambda k: nums[k])
        out.append(D.Question(f"syn-{seed}-{i}", f"Question: Which is largest: {', '.join(map(str, nums))}?\nAnswer:",
                              tuple(str(x) for x in nums), gold))
    return out


def log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)

    if a.smoke:
        base, tok = T.tiny_llama(seed=0)
        splits = D.Splits(eval=synthetic_questions(a.n_eval, 1), pool=synthetic_questions(200, 2),
                          dev=synthetic_questions(a.n_dev, 3))
        model_name = "tiny random LlamaForCausalLM (smoke)"
    else:
        base, tok = T.load_smollm2()
        splits = D.make_splits(a.n_eval, a.n_dev)
        model_name = f"SmolLM2-135M-Instruct ({T.SMOLLM2_GGUF}, Q4_1 dequantised to float32)"
    log(f"model: {model_name}; eval {len(splits.eval)}, dev {len(splits.dev)}, pool {len(splits.pool)}", t0)

    def score(model, qs):
        return D.accuracy(model, tok, qs, a.max_len)

    def score_detail(model, qs):
        ok = D.correctness(model, tok, qs, a.max_len)
        return {k: 100.0 * sum(v) / len(v) for k, v in ok.items()}, ok[a.norm]

    zero_eval, _ = score_detail(base, splits.eval)
    zero_dev = score(base, splits.dev)
    log(f"zero-shot: eval {zero_eval}, dev {zero_dev}", t0)

    model = T.add_lora(base)
    cfg = T.RunConfig(steps=a.steps, epochs=a.epochs or 0, batch_size=a.batch_size, max_len=a.max_len,
                      tb_interval=a.tb_interval, tb_s_lo=a.tb_s_lo, tb_s_hi=a.tb_s_hi, track_alpha=not a.no_track_alpha)
    search: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    chosen: dict[int, dict[str, float]] = {}
    for n in a.sizes:
        chosen[n] = {}
        for arm in R.ARMS:
            # LR search: seed 0 at every LR, dev accuracy decides; the winner's weights are kept as seed 0's run
            best = None
            for lr in a.lrs:
                res = T.train_lora(model, tok, D.sample_train(splits.pool, n, 0), arm=arm, lr=lr, seed=0, cfg=cfg)
                dev = score(model, splits.dev)
                search.append(dict(n_train=n, arm=arm, lr=lr, dev_acc=dev, train_seconds=res.train_seconds))
                log(f"search N={n} {arm} lr={lr:g}: dev {dev[a.norm]:.1f} (train {res.train_seconds:.0f}s)", t0)
                if best is None or dev[a.norm] > best[0]:
                    best = (dev[a.norm], lr, res, T.lora_state(model))
            _, lr, res0, state0 = best
            chosen[n][arm] = lr
            for seed in range(a.seeds):
                if seed == 0:
                    T.load_lora_state(model, state0)
                    res = res0
                else:
                    res = T.train_lora(model, tok, D.sample_train(splits.pool, n, seed), arm=arm, lr=lr, seed=seed,
                                       cfg=cfg)
                acc, correct = score_detail(model, splits.eval)
                row = asdict(res)
                row.update(n_train=n, eval_acc=acc, correct="".join("1" if c else "0" for c in correct))
                runs.append(row)
                log(f"run N={n} {arm} seed={seed} lr={lr:g}: eval {acc[a.norm]:.1f} "
                    f"(train {res.train_seconds:.0f}s, spectral {res.spectral_seconds:.1f}s)", t0)
                write_outputs(a, runs, search, chosen, cfg, model_name, zero_eval, zero_dev, t0, final=False)

    payload = write_outputs(a, runs, search, chosen, cfg, model_name, zero_eval, zero_dev, t0, final=True)
    print(payload["table"], flush=True)
    return payload


def write_outputs(a: argparse.Namespace, runs: list[dict[str, Any]], search: list[dict[str, Any]],
                  chosen: dict[int, dict[str, float]], cfg: T.RunConfig, model_name: str, zero_eval: dict[str, float],
                  zero_dev: dict[str, float], t0: float, final: bool) -> dict[str, Any]:
    """results.json, runs.csv, summary.csv, summary.md (after every run, so a stopped run leaves its results;
    ``partial`` says so) and, at the end, the plots."""
    sizes = [n for n in a.sizes if any(r["n_train"] == n for r in runs)]
    rows = R.summarise([dict(r, correct=[c == "1" for c in r["correct"]]) for r in runs], sizes, a.norm)
    table = R.markdown_table(rows, zero_eval[a.norm], a.n_eval, a.norm,
                             dataset="synthetic (smoke)" if a.smoke else "ARC-Easy")
    payload = dict(
        config=dict({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, model=model_name,
                    lora=dict(r=8, alpha=16, dropout=0.05, targets=list(T.LORA_TARGETS)), run=asdict(cfg),
                    torch=torch.__version__, threads=torch.get_num_threads()),
        zero_shot=dict(eval=zero_eval, dev=zero_dev), lr_search=search, chosen_lr=chosen, summary=rows, runs=runs,
        wall_seconds=time.perf_counter() - t0, partial=not final, table=table)
    R.write_json(a.out / "results.json", payload)
    R.write_csv(a.out / "runs.csv", [dict(n_train=r["n_train"], arm=r["arm"], seed=r["seed"], lr=r["lr"],
                                          **{f"acc_{k}": v for k, v in r["eval_acc"].items()},
                                          train_seconds=round(r["train_seconds"], 2),
                                          spectral_seconds=round(r["spectral_seconds"], 2),
                                          final_loss=r["losses"][-1] if r["losses"] else None,
                                          unit_alpha_std_end=r["alpha_track"][-1]["unit_alpha_std"]
                                          if r["alpha_track"] else None) for r in runs])
    R.write_csv(a.out / "summary.csv", rows)
    (a.out / "summary.md").write_text(table)
    if final:
        plots = R.plot_all(a.out, runs, rows, zero_eval[a.norm], a.norm)
        log(f"wrote {a.out}: results.json runs.csv summary.csv summary.md {' '.join(plots)}", t0)
    return payload

if __name__ == "__main__":
    main()
