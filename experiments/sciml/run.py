"""SciML experiment: FNO and UNet trained from scratch on generated PDE data at several subsample ratios,
baseline (Adam + step decay) vs TempBalance (the same + TBSigmoid per-layer factors), test nRMSE.

One command::

    flock /tmp/tb/heavy.lock python3 experiments/sciml/run.py            # default (~20 min on 2 CPU threads)
    python3 experiments/sciml/run.py --smoke --out /tmp/sciml-smoke       # CI check (< 1 min)

Protocol, for every (PDE, model, subsample ratio, arm): train seed 0 at every learning rate of the grid, keep the
one with the lowest validation nRMSE, train the other seeds at it; report the test nRMSE of all seeds (mean +/- std)
and a paired comparison (same seed = same training subset, initial weights and batch order in both arms).
``--search all``: every seed trains at every learning rate, the LR with the lowest mean validation nRMSE over the
seeds is chosen, and the test nRMSE of every grid point is reported too (baseline vs TB at equal LR). Both arms
get the same LR grid, optimizer, schedule, step budget and seeds; TB's own hyper-parameters are fixed, not searched.
Writes ``results.json`` (everything), ``runs.csv`` (one row per training run), ``summary.csv``, ``results.md``
(the table), ``nrmse_vs_ratio.png`` and ``alpha_std.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.sciml import metrics, pde_data  # noqa: E402
from experiments.sciml.models import ModelConfig, build  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("darcy", "burgers")
MODELS = ("fno", "unet")
ARMS = ("baseline", "tb")


def _floats(s: str) -> list[float]:
    try:
        out = [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not out or any(not math.isfinite(v) or v <= 0 for v in out):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {s!r}")
    return out


def _names(allowed: tuple[str, ...]):
    def parse(s: str) -> list[str]:
        out = [v.strip() for v in s.split(",") if v.strip()]
        bad = [v for v in out if v not in allowed]
        if not out or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {allowed}, got {s!r}")
        return out
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny data, models and budget: a < 1 min end-to-end check")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default {RESULTS}; --smoke: a temp dir)")
    p.add_argument("--cache", type=Path, default=pde_data.DEFAULT_CACHE, help="generated-data cache folder")
    p.add_argument("--tasks", type=_names(TASKS), default=list(TASKS))
    p.add_argument("--models", type=_names(MODELS), default=list(MODELS))
    p.add_argument("--ratios", type=_floats, default=[0.025, 0.1, 0.25, 1.0],
                   help="fractions of the training pool (default 0.025,0.1,0.25,1)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pool", type=int, default=400, help="training pool size (100%% ratio)")
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--darcy-n", type=int, default=32, help="Darcy grid (multiple of 16 for the UNet)")
    p.add_argument("--burgers-n", type=int, default=128, help="Burgers stored grid (multiple of 16)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per training run (both arms)")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--decay-every", type=int, default=None, help="StepLR step size (default steps // 4)")
    p.add_argument("--gamma", type=float, default=0.5, help="StepLR decay factor (the paper's 0.5)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--lr-fno", type=_floats, default=[3e-3, 1e-2], help="LR grid for the FNO (both arms)")
    p.add_argument("--lr-unet", type=_floats, default=[1e-3, 4e-3], help="LR grid for the UNet (both arms)")
    p.add_argument("--search", choices=("seed0", "all"), default="seed0",
                   help="LR search on seed 0 only (default), or every seed at every LR (chosen on the mean "
                        "validation nRMSE; every grid point reported)")
    p.add_argument("--tb-s", type=float, default=1.0, help="TBSigmoid s for both sides (s_lo = s_hi)")
    p.add_argument("--tb-tau", type=float, default=10.0)
    p.add_argument("--tb-refreshes", type=int, default=15, help="spectral refreshes per run (interval = steps // this)")
    p.add_argument("--workers", type=int, default=2,
                   help="parallel training processes (each on --threads torch threads); 1 = in this process")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--resume", action="store_true",
                   help="keep the cells already in <out>/runs.partial.jsonl (same settings) and run only the rest")
    a = p.parse_args(argv)
    if a.smoke:
        a.ratios, a.seeds, a.pool, a.n_val, a.n_test = [0.25, 1.0], 2, 24, 8, 8
        a.steps, a.batch, a.tb_refreshes = 12, 4, 3
        a.lr_fno, a.lr_unet, a.workers = a.lr_fno[:1], a.lr_unet[:1], 1
        if a.out is None:
            a.out = Path(tempfile.mkdtemp(prefix="sciml-smoke-"))
    if a.out is None:
        a.out = RESULTS
    if min(a.seeds, a.steps, a.batch, a.pool, a.workers, a.threads) < 1:
        p.error("--seeds, --steps, --batch, --pool, --workers and --threads must be >= 1")
    if any(r > 1 for r in a.ratios):
        p.error("--ratios are fractions of the pool, at most 1")
    if a.darcy_n % 16 or a.burgers_n % 16:
        p.error("--darcy-n and --burgers-n must be multiples of 16 (the UNet halves the grid 4 times)")
    return a


def model_config(args: argparse.Namespace) -> ModelConfig:
    if args.smoke:
        return ModelConfig(fno_hidden=12, fno_modes_2d=4, fno_modes_1d=6, fno_layers=2, unet_features=(4, 4, 8, 8, 16, 4))
    return ModelConfig()


# --- data ----------------------------------------------------------------------------------------------------------
def load_task(name: str, args: argparse.Namespace) -> dict:
    """pool / val / test tensors (batch, 1, *grid) of one PDE, generated once and cached."""
    count = args.pool + args.n_val + args.n_test
    if name == "darcy":
        cfg = pde_data.DarcyConfig(n=args.darcy_n, count=count)
    else:
        cfg = pde_data.BurgersConfig(n=args.burgers_n, n_solve=max(256, args.burgers_n), count=count)
    t0 = time.perf_counter()
    x, y = pde_data.load(cfg, args.cache)
    x, y = torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y).unsqueeze(1)
    p, v = args.pool, args.pool + args.n_val
    return dict(name=name, dim=x.ndim - 2, config=asdict(cfg), tag=cfg.tag(), seconds=time.perf_counter() - t0,
                pool=(x[:p], y[:p]), val=(x[p:v], y[p:v]), test=(x[v:], y[v:]))


def subset(pool: tuple[torch.Tensor, torch.Tensor], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n of a seed-dependent permutation of the pool (nested across ratios for one seed)."""
    idx = torch.randperm(len(pool[0]), generator=torch.Generator().manual_seed(10_000 + seed))[:n]
    return pool[0][idx], pool[1][idx]


# --- training ------------------------------------------------------------------------------------------------------
def alpha_std_of(model: torch.nn.Module) -> float:
    """STD of PL_Alpha_Hill over the analysable matrices, as TempBalance.alpha_std defines it."""
    from tempbalance import analyze

    rep = analyze(model)
    a = np.array([r.alpha for r in rep.rows if r.ok and math.isfinite(r.alpha)])
    return float(a.std()) if a.size else math.nan


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor], norm: dict) -> float:
    model.eval()
    x, y = data
    pred = torch.cat([model((xb - norm["xm"]) / norm["xs"]) for xb in x.split(50)]) * norm["ys"] + norm["ym"]
    model.train()
    return metrics.nrmse(pred, y)


def train_one(task: dict, kind: str, n_train: int, arm: str, seed: int, lr: float, args: argparse.Namespace) -> dict:
    """One training run; returns its record (val/test nRMSE, timings, alpha STD, TB history)."""
    from tempbalance import TempBalance

    x, y = subset(task["pool"], n_train, seed)
    norm = dict(xm=x.mean(), xs=x.std().clamp_min(1e-12), ym=y.mean(), ys=y.std().clamp_min(1e-12))
    xn, yn = (x - norm["xm"]) / norm["xs"], (y - norm["ym"]) / norm["ys"]
    torch.manual_seed(seed)
    model = build(kind, task["dim"], model_config(args))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.decay_every or max(1, args.steps // 4), gamma=args.gamma)
    tb = None
    if arm == "tb":
        tb = TempBalance(model, opt, base_scheduler=sched, unit="layer", mapping="sigmoid", tau=args.tb_tau,
                         s_lo=args.tb_s, s_hi=args.tb_s, interval=max(1, args.steps // args.tb_refreshes))
    gen = torch.Generator().manual_seed(20_000 + seed)
    bs = min(args.batch, n_train)
    order, pos, diverged = torch.randperm(n_train, generator=gen), 0, False
    t0 = time.perf_counter()
    for _ in range(args.steps):
        if pos + bs > n_train:
            order, pos = torch.randperm(n_train, generator=gen), 0
        b = order[pos:pos + bs]
        pos += bs
        loss = torch.nn.functional.mse_loss(model(xn[b]), yn[b])
        if not torch.isfinite(loss):
            diverged = True
            break
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        (tb.step if tb is not None else sched.step)()
    train_s = time.perf_counter() - t0
    rec = dict(task=task["name"], model=kind, ratio=n_train / len(task["pool"][0]), n_train=n_train, arm=arm,
               seed=seed, lr=lr, diverged=diverged, train_seconds=train_s,
               val_nrmse=math.inf if diverged else evaluate(model, task["val"], norm),
               test_nrmse=math.inf if diverged else evaluate(model, task["test"], norm),
               alpha_std_end=alpha_std_of(model), final_loss=float(loss.detach()))
    if tb is not None:
        f = list(tb.factors.values())
        rec.update(spectral_seconds=tb.spectral_seconds, n_refresh=len(tb.history), factor_min=min(f), factor_max=max(f),
                   alpha_std_history=[[h["step"], h["alpha_std"]] for h in tb.history])
    return rec


def run_cell(task: dict, kind: str, ratio: float, arm: str, args: argparse.Namespace, log) -> list[dict]:
    """LR search on seed 0 (validation nRMSE), then the remaining seeds at the chosen LR; or (``--search all``)
    every seed at every LR, the LR with the lowest mean validation nRMSE chosen."""
    n_train = max(1, round(ratio * len(task["pool"][0])))
    grid = args.lr_fno if kind == "fno" else args.lr_unet
    if args.search == "all":
        runs = [train_one(task, kind, n_train, arm, s, lr, args) for lr in grid for s in range(args.seeds)]
        val = {lr: np.mean([_num(r["val_nrmse"], math.inf) for r in runs if r["lr"] == lr]) for lr in grid}
        best = min(grid, key=lambda lr: (val[lr], lr))
        for r in runs:
            r["phase"], r["chosen"] = "grid", r["lr"] == best
        log(f"{task['name']:8s} {kind:5s} ratio {ratio:<6g} n={n_train:<4d} {arm:8s} lr={best:g} test nRMSE "
            f"{np.mean([r['test_nrmse'] for r in runs if r['chosen']]):.4g} ({sum(r['train_seconds'] for r in runs):.1f}s)")
        return runs
    search = [train_one(task, kind, n_train, arm, 0, lr, args) for lr in grid]
    best = min(search, key=lambda r: r["val_nrmse"])
    for r in search:
        r["phase"], r["chosen"] = "search", r is best
    runs = [best] + [train_one(task, kind, n_train, arm, s, best["lr"], args) for s in range(1, args.seeds)]
    for r in runs[1:]:
        r["phase"], r["chosen"] = "seed", True
    log(f"{task['name']:8s} {kind:5s} ratio {ratio:<6g} n={n_train:<4d} {arm:8s} lr={best['lr']:g} "
        f"test nRMSE {np.mean([r['test_nrmse'] for r in runs]):.4g} ({sum(r['train_seconds'] for r in search + runs[1:]):.1f}s)")
    return search + runs[1:]


# --- summary, table, plots -----------------------------------------------------------------------------------------
def _num(v: float | None, missing: float = math.nan) -> float:
    """A record's number; JSON stores NaN and Inf as null (a diverged run's error is Inf)."""
    return missing if v is None else float(v)


def summarize(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per (task, model, ratio): both arms' mean/std test nRMSE and the paired tests; per (task, model): pooled."""
    rows, pooled = [], []
    chosen = [r for r in records if r["chosen"]]
    keys = sorted({(r["task"], r["model"]) for r in chosen}, key=lambda k: (TASKS.index(k[0]), MODELS.index(k[1])))
    for task, kind in keys:
        all_b, all_t = [], []
        for ratio in sorted({r["ratio"] for r in chosen if r["task"] == task and r["model"] == kind}):
            arm = {a: sorted((r for r in chosen if (r["task"], r["model"], r["ratio"], r["arm"]) == (task, kind, ratio, a)),
                             key=lambda r: r["seed"]) for a in ARMS}
            b = [_num(r["test_nrmse"], math.inf) for r in arm["baseline"]]
            t = [_num(r["test_nrmse"], math.inf) for r in arm["tb"]]
            if not b or len(b) != len(t):
                continue
            all_b += b
            all_t += t
            bm, bs = metrics.mean_std(b)
            tm, ts = metrics.mean_std(t)
            rows.append(dict(task=task, model=kind, ratio=ratio, n_train=arm["baseline"][0]["n_train"],
                             lr_baseline=arm["baseline"][0]["lr"], lr_tb=arm["tb"][0]["lr"],
                             baseline_mean=bm, baseline_std=bs, tb_mean=tm, tb_std=ts,
                             alpha_std_baseline=float(np.mean([_num(r["alpha_std_end"]) for r in arm["baseline"]])),
                             alpha_std_tb=float(np.mean([_num(r["alpha_std_end"]) for r in arm["tb"]])),
                             **metrics.paired_tests(b, t)))
        if all_b:
            pooled.append(dict(task=task, model=kind, **metrics.paired_tests(all_b, all_t)))
    return rows, pooled


def grid_summary(records: list[dict]) -> list[dict]:
    """Every grid point of a ``--search all`` run: per (task, model, ratio, LR) both arms' mean/std test nRMSE over
    the seeds, whether each arm chose the LR, and the paired comparison at that LR."""
    rows = []
    grid = [r for r in records if r.get("phase") == "grid"]
    for key in sorted({(r["task"], r["model"], r["ratio"], r["lr"]) for r in grid},
                      key=lambda k: (TASKS.index(k[0]), MODELS.index(k[1]), k[2], k[3])):
        arm = {a: sorted((r for r in grid if (r["task"], r["model"], r["ratio"], r["lr"], r["arm"]) == (*key, a)),
                         key=lambda r: r["seed"]) for a in ARMS}
        b = [_num(r["test_nrmse"], math.inf) for r in arm["baseline"]]
        t = [_num(r["test_nrmse"], math.inf) for r in arm["tb"]]
        if not b or [r["seed"] for r in arm["baseline"]] != [r["seed"] for r in arm["tb"]]:
            continue
        bm, bs = metrics.mean_std(b)
        tm, ts = metrics.mean_std(t)
        rows.append(dict(task=key[0], model=key[1], ratio=key[2], lr=key[3], baseline_mean=bm, baseline_std=bs,
                         tb_mean=tm, tb_std=ts, baseline_val=float(np.mean([_num(r["val_nrmse"], math.inf)
                                                                            for r in arm["baseline"]])),
                         tb_val=float(np.mean([_num(r["val_nrmse"], math.inf) for r in arm["tb"]])),
                         baseline_chosen=arm["baseline"][0]["chosen"], tb_chosen=arm["tb"][0]["chosen"],
                         **metrics.paired_tests(b, t)))
    return rows


def _fmt(m: float, s: float) -> str:
    return f"{m:.4f} ± {s:.4f}" if math.isfinite(s) else f"{m:.4f}"


def _p(p: float) -> str:
    return "–" if not math.isfinite(p) else f"{p:.2g}"


def markdown(rows: list[dict], pooled: list[dict], args: argparse.Namespace, grid: list[dict] | None = None) -> str:
    lines = ["| PDE | model | ratio | n_train | LR base / TB | baseline nRMSE | TB nRMSE | Δ (TB better +) | TB better | "
             "paired t p | α-STD base / TB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['model']} | {100 * r['ratio']:g}% | {r['n_train']} | {r['lr_baseline']:g} / "
                     f"{r['lr_tb']:g} | {_fmt(r['baseline_mean'], r['baseline_std'])} | {_fmt(r['tb_mean'], r['tb_std'])} "
                     f"| {r['reduction_pct']:+.1f}% | {r['tb_better']}/{r['n_pairs']} | {_p(r['t_p'])} | "
                     f"{r['alpha_std_baseline']:.3f} / {r['alpha_std_tb']:.3f} |")
    lines += ["", "Pooled over ratios and seeds (paired, per PDE and model):", "",
              "| PDE | model | pairs | TB better | mean Δ | Wilcoxon p (log ratio) |", "|---|---|---|---|---|---|"]
    for r in pooled:
        lines.append(f"| {r['task']} | {r['model']} | {r['n_pairs']} | {r['tb_better']}/{r['n_pairs']} | "
                     f"{r['reduction_pct']:+.1f}% | {_p(r['wilcoxon_p'])} |")
    lines += ["", f"{args.seeds} seeds; {args.steps} Adam steps, batch {args.batch}, StepLR γ={args.gamma} every "
              f"{args.decay_every or max(1, args.steps // 4)} steps, weight decay {args.weight_decay:g}; LR grid FNO "
              f"{args.lr_fno}, UNet {args.lr_unet} (chosen on validation nRMSE, seed 0, per arm); TB: TBSigmoid, "
              f"per layer, τ={args.tb_tau:g}, s_lo=s_hi={args.tb_s:g}, {args.tb_refreshes} refreshes per run. "
              "Δ = relative reduction of mean test nRMSE; α-STD = STD of PL_Alpha_Hill across layers at the end."]
    if args.search == "all":
        lines[-1] = lines[-1].replace("chosen on validation nRMSE, seed 0, per arm", "every seed at every LR; the LR "
                                      "with the lowest mean validation nRMSE chosen per arm")
    if grid:
        lines += ["", "Every grid point (test nRMSE, mean ± std over seeds; * = the LR that arm chose on validation; "
                  "Δ and the tests compare the arms at the same LR):", "",
                  "| PDE | model | ratio | LR | baseline val / test | TB val / test | Δ (TB better +) | TB better | "
                  "paired t p |", "|---|---|---|---|---|---|---|---|---|"]
        for r in grid:
            lines.append(f"| {r['task']} | {r['model']} | {100 * r['ratio']:g}% | {r['lr']:g} | "
                         f"{r['baseline_val']:.4f} / {_fmt(r['baseline_mean'], r['baseline_std'])}"
                         f"{'*' if r['baseline_chosen'] else ''} | {r['tb_val']:.4f} / {_fmt(r['tb_mean'], r['tb_std'])}"
                         f"{'*' if r['tb_chosen'] else ''} | {r['reduction_pct']:+.1f}% | {r['tb_better']}/{r['n_pairs']} "
                         f"| {_p(r['t_p'])} |")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["task"], r["model"]) for r in rows))
    if not keys:
        return []
    written = []
    for fname, ylab, series in (
            ("nrmse_vs_ratio.png", "test nRMSE (mean ± std over seeds)",
             (("baseline", "baseline_mean", "baseline_std"), ("TempBalance", "tb_mean", "tb_std"))),
            ("alpha_std.png", "STD of PL_Alpha_Hill across layers (end of training)",
             (("baseline", "alpha_std_baseline", None), ("TempBalance", "alpha_std_tb", None)))):
        ncol = min(2, len(keys))
        nrow = math.ceil(len(keys) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.8 * nrow), squeeze=False)
        for ax in axes.flat[len(keys):]:
            ax.set_visible(False)
        for ax, (task, kind) in zip(axes.flat, keys):
            sub = [r for r in rows if (r["task"], r["model"]) == (task, kind)]
            x = [100 * r["ratio"] for r in sub]
            for label, m, s in series:
                err = [r[s] if math.isfinite(r[s]) else 0 for r in sub] if s else None
                ax.errorbar(x, [r[m] for r in sub], yerr=err, marker="o", capsize=3, label=label)
            ax.set_xscale("log")
            ax.set_xticks(x, [f"{v:g}%\n(n={r['n_train']})" for v, r in zip(x, sub)])
            ax.minorticks_off()
            ax.set_title(f"{kind.upper()} on {task}")
            ax.grid(alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel(ylab if nrow == 1 else ylab.split(" (")[0])
        for ax in axes[-1]:
            ax.set_xlabel("training subsample ratio")
        axes[0][0].legend()
        fig.suptitle(ylab if nrow > 1 else "")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        written.append(fname)
    return written


def write_outputs(records: list[dict], tasks_meta: dict, args: argparse.Namespace, seconds: float) -> dict:
    import pandas as pd

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows, pooled = summarize(records)
    flat = [{k: v for k, v in r.items() if k != "alpha_std_history"} for r in records]
    pd.DataFrame(flat).to_csv(out / "runs.csv", index=False)
    pd.DataFrame(rows).to_csv(out / "summary.csv", index=False)
    grid = grid_summary(records)
    if grid:
        pd.DataFrame(grid).to_csv(out / "grid.csv", index=False)
    md = markdown(rows, pooled, args, grid)
    (out / "results.md").write_text(md)
    figs = plots(rows, out)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    res = dict(settings=settings, models=asdict(model_config(args)), data=tasks_meta, seconds=seconds,
               torch=torch.__version__, threads=torch.get_num_threads(), summary=rows, pooled=pooled, grid=grid,
               runs=records,
               figures=figs)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=lambda o: None if o is None else str(o),
                                                 allow_nan=True).replace("Infinity", "null").replace("NaN", "null"))
    return res


_WORKER_TASKS: dict[str, dict] = {}
_T0 = time.perf_counter()


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def _init_worker(threads: int, t0_wall: float) -> None:
    global _T0
    torch.set_num_threads(threads)
    _T0 = time.perf_counter() - (time.time() - t0_wall)  # log times relative to the parent's start


def _cell_job(name: str, kind: str, ratio: float, arm: str, args: argparse.Namespace) -> list[dict]:
    """One (PDE, model, ratio, arm) cell in a worker; the data comes from the cache the parent filled."""
    if name not in _WORKER_TASKS:
        _WORKER_TASKS[name] = load_task(name, args)
    return run_cell(_WORKER_TASKS[name], kind, ratio, arm, args, _log)


def _cell_settings(args: argparse.Namespace) -> dict:
    """The settings a finished cell depends on (a resumed run only reuses cells computed with the same ones)."""
    skip = {"out", "cache", "workers", "threads", "resume", "tasks", "models", "ratios"}
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip}


def main(argv: list[str] | None = None) -> dict:
    global _T0
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    _T0, t0_wall = time.perf_counter(), time.time()
    meta = {}
    for name in args.tasks:  # generate (or read) every data set once, before any worker starts
        task = _WORKER_TASKS[name] = load_task(name, args)
        meta[name] = dict(config=task["config"], cache_file=task["tag"] + ".npz", load_seconds=task["seconds"],
                          pool=len(task["pool"][0]), val=len(task["val"][0]), test=len(task["test"][0]))
        _log(f"{name}: data ready ({task['seconds']:.1f}s, {task['tag']})")
    jobs = [(name, kind, ratio, arm) for name in args.tasks for kind in args.models for ratio in args.ratios
            for arm in ARMS]
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "runs.partial.jsonl"  # one line per finished cell, so an interrupted run can resume
    done: dict[tuple, list[dict]] = {}
    if args.resume and partial.exists():
        for line in partial.read_text().splitlines():
            cell = json.loads(line)
            if cell["settings"] == _cell_settings(args):
                done[tuple(cell["job"])] = cell["records"]
        _log(f"resuming: {len(done)} of {len(jobs)} cells already done")
    else:
        partial.write_text("")
    todo = [job for job in jobs if tuple(job) not in done]

    def finished(job: tuple, recs: list[dict]) -> None:
        done[tuple(job)] = recs
        with partial.open("a") as f:
            f.write(json.dumps(dict(job=list(job), settings=_cell_settings(args), records=recs)) + "\n")

    if args.workers == 1:
        for job in todo:
            finished(job, _cell_job(*job, args))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(args.threads, t0_wall)) as pool:
            for job, fut in [(job, pool.submit(_cell_job, *job, args)) for job in todo]:
                finished(job, fut.result())
    records = [r for job in jobs for r in done[tuple(job)]]
    res = write_outputs(records, meta, args, time.perf_counter() - _T0)
    partial.unlink()  # everything is in results.json now
    _log(f"done: {len(records)} training runs; results in {args.out}")
    print((args.out / "results.md").read_text())
    return res


if __name__ == "__main__":
    main()
