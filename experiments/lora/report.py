"""Statistics, tables and plots of the LoRA experiment: mean ± std over seeds, paired tests, JSON / CSV / markdown."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

ARMS = ("lora", "lora+tb")
LABELS = {"lora": "LoRA", "lora+tb": "LoRA+TB"}


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    a = np.asarray(xs, dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan


def paired_tests(lora: Sequence[float], tb: Sequence[float]) -> dict[str, float]:
    """Seed-paired comparison of two arms: mean difference (TB - LoRA), paired t-test p, TB wins / ties / losses."""
    a, b = np.asarray(lora, dtype=np.float64), np.asarray(tb, dtype=np.float64)
    d = b - a
    p = float(stats.ttest_rel(b, a).pvalue) if d.size > 1 and np.any(d != d[0]) else math.nan
    if d.size > 1 and np.all(d == 0):
        p = 1.0
    return dict(mean_diff=float(d.mean()) if d.size else math.nan, t_test_p=p, wins=int((d > 0).sum()),
                ties=int((d == 0).sum()), losses=int((d < 0).sum()))


def mcnemar(lora_correct: Sequence[Sequence[bool]], tb_correct: Sequence[Sequence[bool]]) -> dict[str, float]:
    """Exact McNemar test on per-question correctness, pooled over seed-paired runs: ``b`` questions only TB gets
    right, ``c`` only LoRA; two-sided binomial p of b among b + c."""
    b = c = 0
    for x, y in zip(lora_correct, tb_correct):
        x, y = np.asarray(x, dtype=bool), np.asarray(y, dtype=bool)
        b += int((~x & y).sum())
        c += int((x & ~y).sum())
    p = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return dict(only_tb=b, only_lora=c, p=p)


def summarise(runs: list[dict[str, Any]], sizes: Sequence[int], norm: str) -> list[dict[str, Any]]:
    """One row per training size: both arms' mean ± std accuracy, the LRs chosen, the paired tests."""
    rows = []
    for n in sizes:
        by_arm = {arm: sorted((r for r in runs if r["n_train"] == n and r["arm"] == arm), key=lambda r: r["seed"])
                  for arm in ARMS}
        row: dict[str, Any] = dict(n_train=n)
        for arm in ARMS:
            accs = [r["eval_acc"][norm] for r in by_arm[arm]]
            row[f"{arm}_mean"], row[f"{arm}_std"] = mean_std(accs)
            row[f"{arm}_lr"] = by_arm[arm][0]["lr"] if by_arm[arm] else math.nan
            row[f"{arm}_seeds"] = len(accs)
        seeds = sorted({r["seed"] for r in by_arm["lora"]} & {r["seed"] for r in by_arm["lora+tb"]})
        pick = {arm: {r["seed"]: r for r in by_arm[arm]} for arm in ARMS}
        row.update(paired_tests([pick["lora"][s]["eval_acc"][norm] for s in seeds],
                                [pick["lora+tb"][s]["eval_acc"][norm] for s in seeds]))
        mc = mcnemar([pick["lora"][s]["correct"] for s in seeds], [pick["lora+tb"][s]["correct"] for s in seeds])
        row.update({f"mcnemar_{k}": v for k, v in mc.items()})
        rows.append(row)
    return rows


def _fmt(x: float, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def markdown_table(rows: list[dict[str, Any]], zero_shot: float, n_eval: int, norm: str,
                   dataset: str = "ARC-Easy") -> str:
    """The results table: accuracy (%) mean ± std over seeds, the difference and its paired tests."""
    out = [f"{dataset} accuracy (%) on {n_eval} held-out questions, ranked by {norm.replace('_', '-')}-normalised "
           "log-likelihood; mean ± std over seeds; LR chosen on the dev split per arm.", "",
           "| train questions | LoRA | LoRA+TB | TB − LoRA | paired t p | TB wins/ties/losses | McNemar (only TB / only LoRA, p) | LR LoRA / TB |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|",
           f"| 0 (zero-shot base) | {_fmt(zero_shot)} | — | — | — | — | — | — |"]
    for r in rows:
        out.append(
            f"| {r['n_train']} | {_fmt(r['lora_mean'])} ± {_fmt(r['lora_std'])} | {_fmt(r['lora+tb_mean'])} ± "
            f"{_fmt(r['lora+tb_std'])} | {r['mean_diff']:+.2f} | {_fmt(r['t_test_p'], 3)} | "
            f"{r['wins']}/{r['ties']}/{r['losses']} | {r['mcnemar_only_tb']} / {r['mcnemar_only_lora']}, "
            f"{_fmt(r['mcnemar_p'], 3)} | {r['lora_lr']:.0e} / {r['lora+tb_lr']:.0e} |")
    return "\n".join(out) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    return x


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(_json_safe(payload), indent=1, allow_nan=False))


def plot_all(out: Path, runs: list[dict[str, Any]], rows: list[dict[str, Any]], zero_shot: float, norm: str) -> list[str]:
    """accuracy_vs_n.png, alpha_std.png (block alpha STD over training, both arms), tb_factors.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    colors = {"lora": "tab:blue", "lora+tb": "tab:orange"}

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ns = [r["n_train"] for r in rows]
    for k, arm in enumerate(ARMS):
        x = np.arange(len(ns)) + (k - 0.5) * 0.12
        ax.errorbar(x, [r[f"{arm}_mean"] for r in rows], yerr=[np.nan_to_num(r[f"{arm}_std"]) for r in rows],
                    fmt="o-", capsize=4, color=colors[arm], label=LABELS[arm])
        for r in runs:
            if r["arm"] == arm:
                ax.plot(x[ns.index(r["n_train"])], r["eval_acc"][norm], ".", color=colors[arm], alpha=0.4)
    ax.axhline(zero_shot, color="gray", ls="--", label="zero-shot base")
    ax.set_xticks(range(len(ns)), [str(n) for n in ns])
    ax.set_xlabel("training questions")
    ax.set_ylabel(f"accuracy % ({norm})")
    ax.set_title("LoRA vs LoRA+TB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_n.png", dpi=120)
    plt.close(fig)
    files.append("accuracy_vs_n.png")

    fig, axes = plt.subplots(1, len(ns), figsize=(4.5 * len(ns), 3.6), squeeze=False)
    for ax, n in zip(axes[0], ns):
        for arm in ARMS:
            tracks = [r["alpha_track"] for r in runs if r["arm"] == arm and r["n_train"] == n and r["alpha_track"]]
            if not tracks:
                continue
            length = min(len(t) for t in tracks)
            ep = [t["step"] for t in tracks[0][:length]]
            val = np.array([[t["unit_alpha_std"] for t in tr[:length]] for tr in tracks])
            ax.errorbar(ep, val.mean(0), yerr=val.std(0), fmt="o-", capsize=3, color=colors[arm], label=LABELS[arm])
        ax.set_title(f"N = {n}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("STD of block mean alpha")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "alpha_std.png", dpi=120)
    plt.close(fig)
    files.append("alpha_std.png")

    tb_runs = [r for r in runs if r["arm"] == "lora+tb" and r["tb_factors"]]
    if tb_runs:
        r = tb_runs[0]
        units = list(r["tb_factors"])
        idx = np.arange(len(units))
        fig, ax1 = plt.subplots(figsize=(7, 3.6))
        ax1.bar(idx, [r["tb_factors"][u] for u in units], color="tab:orange", alpha=0.6, label="LR factor")
        ax1.set_yscale("log")
        ax1.set_xlabel("decoder block")
        ax1.set_ylabel("LR factor (end of training)")
        ax2 = ax1.twinx()
        ax2.plot(idx, [r["tb_unit_alphas"].get(u, np.nan) for u in units], "k.-", label="block mean alpha")
        ax2.set_ylabel("block mean PL_Alpha_Hill")
        ax1.set_title(f"TempBalance factors, N = {r['n_train']}, seed {r['seed']}")
        fig.tight_layout()
        fig.savefig(out / "tb_factors.png", dpi=120)
        plt.close(fig)
        files.append("tb_factors.png")
    return files
