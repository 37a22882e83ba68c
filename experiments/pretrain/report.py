"""Tables, paired statistics and plots of the pretraining experiment, from the stored runs (one dict per run, as in
runs.jsonl).

Per comparison (an arm against its baseline, e.g. AdamW + LLR against AdamW), on the seeds both finished: the final
validation perplexity of each, the paired difference (arm − baseline; negative = the arm is better) with a paired t
test and the Wilcoxon signed-rank test over seeds, and one sentence on what the numbers support. Plus the
validation curves, the spectral pass's share of each spectral run's wall time, and the cost of a run.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tempbalance.demo.summary import paired_test

# (arm, baseline, what the comparison asks): only those whose both arms have runs are reported
COMPARISONS = (
    ("muon", "adamw", "Muon (hidden matrices) + AdamW vs AdamW"),
    ("adamw+llr", "adamw", "LLR on AdamW"),
    ("muon+llr", "muon", "LLR on Muon + AdamW"),
    ("adamw+alphadecay", "adamw", "AlphaDecay on AdamW"),
    ("adamw+llr+alphadecay", "adamw", "LLR + AlphaDecay (one pass) on AdamW"),
    ("adamw+llr+alphadecay", "adamw+llr", "adding AlphaDecay to LLR"),
    ("adamw+llr+alphadecay", "adamw+alphadecay", "adding LLR to AlphaDecay"),
)
COLORS = {"adamw": "#7F8C8D", "muon": "#2C3E50", "adamw+llr": "#C0392B", "muon+llr": "#8E44AD",
          "adamw+alphadecay": "#2471A3", "adamw+llr+alphadecay": "#D68910"}


class Runs:
    """The runs indexed by (arm, seed)."""

    def __init__(self, runs: Iterable[dict[str, Any]]):
        self.by = {(r["arm"], r["seed"]): r for r in runs}
        self.arms = sorted({a for a, _ in self.by}, key=lambda a: (list(COLORS).index(a) if a in COLORS else 99, a))

    def seeds(self, arm: str) -> set[int]:
        return {s for a, s in self.by if a == arm}

    def get(self, arm: str, seeds: Iterable[int]) -> list[dict[str, Any]]:
        return [self.by[arm, s] for s in sorted(seeds)]


def _ms(values: Iterable[float]) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=np.float64)
    return (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan) if v.size else (math.nan, math.nan)


def per_arm(runs: Runs) -> list[dict[str, Any]]:
    """Per arm: seeds, final validation perplexity and bits per byte (mean, STD over seeds), diverged runs."""
    out = []
    for arm in runs.arms:
        rs = runs.get(arm, runs.seeds(arm))
        out.append(dict(arm=arm, seeds=[r["seed"] for r in rs], ppl=_ms(r["final_ppl"] for r in rs),
                        bpb=_ms(r["final_bpb"] for r in rs), diverged=sum(bool(r.get("diverged")) for r in rs)))
    return out


def reading(arm: str, base: str, test: dict[str, Any], alpha: float = 0.05) -> str:
    """One sentence on what the paired numbers support, no more."""
    n, d = test["n"], test["diff_mean"]
    if n < 3:
        return f"{n} paired seed(s): too few to say anything about {arm} against {base}."
    better = test["losses"]  # seeds where the arm's perplexity is lower
    p = test["t_p"]
    sign = "lower" if d < 0 else "higher"
    if p is not None and p < alpha and better in (0, n):
        return (f"At this scale {arm}'s validation perplexity is {sign} than {base}'s on all {n} seeds "
                f"(mean {d:+.3f}, paired t p = {p:.3g}); a difference this size, on this budget only.")
    if p is not None and p < alpha:
        return (f"{arm}'s perplexity is {sign} than {base}'s on average ({d:+.3f}, paired t p = {p:.3g}) but not on "
                f"every seed ({better}/{n} lower): a small, not uniform difference at this scale.")
    return (f"The {n} paired seeds do not separate {arm} from {base} (mean {d:+.3f}, {better}/{n} seeds lower, paired "
            f"t p = {_f(p, '.3g')}): no difference is supported at this scale.")


def comparisons(runs: Runs) -> list[dict[str, Any]]:
    """One record per comparison with both arms present: paired seeds, perplexities, the paired test of the final
    perplexity (arm − baseline) and of the bits per byte, and the reading."""
    out = []
    for arm, base, what in COMPARISONS:
        seeds = runs.seeds(arm) & runs.seeds(base)
        if not seeds:
            continue
        a = [r["final_ppl"] for r in runs.get(arm, seeds)]
        b = [r["final_ppl"] for r in runs.get(base, seeds)]
        test = paired_test(b, a)
        bpb = paired_test([r["final_bpb"] for r in runs.get(base, seeds)],
                          [r["final_bpb"] for r in runs.get(arm, seeds)])
        out.append(dict(arm=arm, baseline=base, what=what, seeds=sorted(seeds), arm_ppl=_ms(a), base_ppl=_ms(b),
                        diffs=list(np.subtract(a, b)), ppl=test, bpb=bpb, reading=reading(arm, base, test)))
    return out


def spectral_share(runs: Runs) -> list[dict[str, Any]]:
    """Per spectral arm: refreshes per run, spectral seconds, wall seconds, and the spectral pass's share of the
    wall time (``spectral_seconds / seconds`` of each run; mean, min, max over its seeds)."""
    out = []
    for arm in runs.arms:
        rs = [r for r in runs.get(arm, runs.seeds(arm)) if r.get("refreshes", 0) > 0]
        if not rs:
            continue
        share = [100.0 * r["spectral_seconds"] / r["seconds"] for r in rs]
        out.append(dict(arm=arm, runs=len(rs), refreshes=float(np.mean([r["refreshes"] for r in rs])),
                        spectral_s=float(np.mean([r["spectral_seconds"] for r in rs])),
                        seconds=float(np.mean([r["seconds"] for r in rs])),
                        per_refresh_s=float(np.mean([r["spectral_seconds"] / r["refreshes"] for r in rs])),
                        share_pct=float(np.mean(share)), share_min=float(min(share)), share_max=float(max(share))))
    return out


def cost(runs: Runs) -> list[dict[str, Any]]:
    """Mean wall, CPU, training and evaluation seconds of a run, per arm."""
    out = []
    for arm in runs.arms:
        rs = runs.get(arm, runs.seeds(arm))
        out.append(dict(arm=arm, runs=len(rs), **{k: float(np.mean([r[k] for r in rs])) for k in
                                                   ("seconds", "cpu_seconds", "train_seconds", "eval_seconds")}))
    return out


def mean_curve(rs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tokens and the validation perplexity (mean, min, max over runs) at the evaluations every run reached."""
    n = min(len(r["curve"]) for r in rs)
    tokens = np.array([p["tokens"] for p in rs[0]["curve"][:n]], dtype=np.float64)
    ppl = np.array([[p["val_ppl"] for p in r["curve"][:n]] for r in rs], dtype=np.float64)
    return tokens, ppl.mean(axis=0), ppl.min(axis=0), ppl.max(axis=0)


# --- formatting --------------------------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _pm(ms: tuple[float, float], spec: str = ".3f") -> str:
    return f"{_f(ms[0], spec)} ± {_f(ms[1], spec)}"


def markdown(runs: Runs, arms, comps, share, costs, meta: dict[str, Any], smoke: bool) -> str:
    cfg = meta.get("config", {})
    m = cfg.get("model", {})
    params = meta.get("params", {})
    md = [f"# Small LLaMA-style pretraining: AdamW / Muon ± spectral methods{' (smoke)' if smoke else ''}", ""]
    if meta:
        md += [f"Corpus: {meta['corpus']} ({meta['corpus_file']}), UTF-8 bytes as tokens; train "
               f"{meta['train_bytes']:,} bytes ({meta['train_articles']} articles), validation {meta['val_bytes']:,} "
               f"bytes ({meta['val_articles']} articles). Model: LlamaForCausalLM, hidden {m.get('hidden')}, "
               f"{m.get('layers')} blocks, {m.get('heads')} heads, SwiGLU {m.get('ffn')}, context {m.get('seq_len')}; "
               f"{params.get('total', 0):,} parameters ({params.get('hidden_matrices', 0):,} in the blocks' "
               f"matrices). Budget: {cfg.get('steps')} steps x {cfg.get('batch')} x {m.get('seq_len')} = "
               f"{meta['tokens']:,} tokens; peak lr {cfg.get('lr')}, warmup {cfg.get('warmup')} steps then cosine to "
               f"{cfg.get('min_lr_ratio')} x, weight decay {cfg.get('weight_decay')}, clip {cfg.get('clip')}. "
               f"Perplexity is per byte, on {cfg.get('final_windows')} held-out windows at the end.", ""]
    md += ["## Final validation perplexity per arm and seed", "",
           "| arm | seeds | ppl mean ± STD | bits/byte | " + " | ".join(f"seed {s}" for s in _all_seeds(runs)) + " |",
           "|---|---|---|---|" + "---|" * len(_all_seeds(runs))]
    for a in arms:
        cells = [_f(runs.by[a["arm"], s]["final_ppl"]) if (a["arm"], s) in runs.by else "" for s in _all_seeds(runs)]
        md.append(f"| {a['arm']} | {len(a['seeds'])} | {_pm(a['ppl'])} | {_pm(a['bpb'])} | " + " | ".join(cells)
                  + " |")
    if comps:
        md += ["", "## Paired comparisons (arm − baseline, same seeds; negative = the arm is better)", "",
               "| comparison | arm | baseline | seeds | arm ppl | baseline ppl | Δ ppl (mean ± STD) | arm lower | "
               "t p | Wilcoxon p | Δ bits/byte |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in comps:
            t = c["ppl"]
            md.append(f"| {c['what']} | {c['arm']} | {c['baseline']} | {len(c['seeds'])} | {_pm(c['arm_ppl'])} | "
                      f"{_pm(c['base_ppl'])} | {_f(t['diff_mean'], '+.3f')} ± {_f(t['diff_std'])} | "
                      f"{t['losses']}/{t['n']} | {_f(t['t_p'], '.3g')} | {_f(t['wilcoxon_p'], '.3g')} | "
                      f"{_f(c['bpb']['diff_mean'], '+.4f')} |")
        md += ["", "What the numbers support:", ""] + [f"- {c['what']}: {c['reading']}" for c in comps]
    if share:
        md += ["", "## The spectral pass's share of the wall time", "",
               "| arm | runs | refreshes per run | spectral s per refresh | spectral s | wall s | share % (min … max) |",
               "|---|---|---|---|---|---|---|"]
        for s in share:
            md.append(f"| {s['arm']} | {s['runs']} | {s['refreshes']:.1f} | {s['per_refresh_s']:.3f} | "
                      f"{s['spectral_s']:.1f} | {s['seconds']:.0f} | {s['share_pct']:.2f} ({s['share_min']:.2f} … "
                      f"{s['share_max']:.2f}) |")
    md += ["", f"## Cost per run ({meta.get('threads', '?')} thread(s), torch {meta.get('torch', '?')})", "",
           "| arm | runs | wall s | CPU s | training s | evaluation s |", "|---|---|---|---|---|---|"]
    for c in costs:
        md.append(f"| {c['arm']} | {c['runs']} | {c['seconds']:.0f} | {c['cpu_seconds']:.0f} | "
                  f"{c['train_seconds']:.0f} | {c['eval_seconds']:.0f} |")
    return "\n".join(md) + "\n"


def _all_seeds(runs: Runs) -> list[int]:
    return sorted({s for _, s in runs.by})


# --- plots -------------------------------------------------------------------------------------------------------
def plot_curves(runs: Runs, path: Path) -> Path:
    """Validation perplexity against tokens, one panel per optimizer family (AdamW, Muon), one line per arm (mean
    over seeds, band = min … max)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    families = [f for f in ("adamw", "muon") if any(a.split("+")[0] == f for a in runs.arms)]
    fig = Figure(figsize=(5.5 * max(1, len(families)), 4.0))
    FigureCanvasAgg(fig)
    for k, fam in enumerate(families):
        ax = fig.add_subplot(1, len(families), k + 1)
        for arm in runs.arms:
            if arm.split("+")[0] != fam:
                continue
            rs = runs.get(arm, runs.seeds(arm))
            tokens, mean, lo, hi = mean_curve(rs)
            keep = tokens > 0  # the untrained model's ~256 would flatten the plot
            ax.plot(tokens[keep], mean[keep], color=COLORS.get(arm), label=f"{arm} ({len(rs)} seeds)")
            ax.fill_between(tokens[keep], lo[keep], hi[keep], color=COLORS.get(arm), alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("training tokens (bytes)")
        ax.set_ylabel("validation perplexity per byte")
        ax.set_title({"adamw": "AdamW", "muon": "Muon + AdamW"}[fam])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


# --- everything --------------------------------------------------------------------------------------------------
def write(runs: list[dict[str, Any]], meta: dict[str, Any], out: Path, smoke: bool = False) -> dict[str, Any]:
    """Write results.md, runs.csv (every run), summary.json and curves.png into ``out``; returns the analysis."""
    R = Runs(runs)
    arms, comps, share, costs = per_arm(R), comparisons(R), spectral_share(R), cost(R)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(R, arms, comps, share, costs, meta, smoke))
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "final_ppl", "final_bpb", "final_loss", "diverged", "seconds", "cpu_seconds",
                    "spectral_seconds", "refreshes", "finished"])
        for (arm, seed), r in sorted(R.by.items()):
            w.writerow([arm, seed, r["final_ppl"], r["final_bpb"], r["final_loss"], r.get("diverged"), r["seconds"],
                        r["cpu_seconds"], r["spectral_seconds"], r["refreshes"], r.get("finished")])
    analysis = dict(arms=arms, comparisons=comps, spectral_share=share, cost=costs, runs=len(runs))
    (out / "summary.json").write_text(json.dumps(analysis, indent=1, default=float).replace("NaN", "null"))
    if R.by:
        plot_curves(R, out / "curves.png")
    return analysis
