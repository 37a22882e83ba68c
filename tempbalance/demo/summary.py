"""FT vs TB results per training size: mean +- STD over seeds, the paired difference and its significance, the
block-wise STD of alpha (the papers' Fig. 2 diagnosis), as records, a markdown table and console lines."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from .finetune import RunResult

ARMS = ("FT", "TB")


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | None]:
    """Paired comparison of ``b - a`` over seeds: mean and STD (ddof 1) of the differences, two-sided paired
    t-test p-value, Wilcoxon signed-rank p-value (exact; with 5 pairs it cannot go below 0.0625), and how many
    pairs ``b`` wins. p-values are None without scipy or with fewer than 2 pairs / all differences zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    d = b - a
    out: dict[str, float | None] = dict(
        n=int(d.size), diff_mean=float(d.mean()) if d.size else math.nan,
        diff_std=float(d.std(ddof=1)) if d.size > 1 else math.nan,
        wins=int((d > 0).sum()), ties=int((d == 0).sum()), losses=int((d < 0).sum()), t_p=None, wilcoxon_p=None)
    if d.size < 2 or not np.any(d != 0):
        return out
    try:
        from scipy import stats
    except ImportError:
        return out
    if np.std(d) > 0:
        out["t_p"] = float(stats.ttest_rel(b, a).pvalue)
    out["wilcoxon_p"] = float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
    return out


def _mean_std(values: Iterable[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(results: Sequence[RunResult], metric: str = "test") -> list[dict[str, Any]]:
    """One record per training size: accuracy mean/STD (in %, STD over seeds with ddof 1) of each arm, the
    chosen lr of each arm, the paired TB - FT test (pairs = same size and seed), and the block-wise STD of alpha
    after fine-tuning per arm (mean/STD over seeds). Where the runs carry macro-F1 (``scores``), the same for it
    (``FT_f1_mean``, ``f1_diff_mean``, ``f1_t_p``, ...). Only sizes with both arms are summarised."""
    out = []
    for size in sorted({r.size for r in results}):
        by_arm = {arm: {r.seed: r for r in results if r.size == size and r.arm == arm} for arm in ARMS}
        seeds = sorted(set(by_arm["FT"]) & set(by_arm["TB"]))
        if not seeds:
            continue
        rec: dict[str, Any] = dict(size=size, seeds=len(seeds))
        for arm in ARMS:
            runs = [by_arm[arm][s] for s in seeds]
            rec[f"{arm}_acc_mean"], rec[f"{arm}_acc_std"] = _mean_std(100 * r.eval[metric] for r in runs)
            rec[f"{arm}_lr"] = sorted({r.lr for r in runs})
            rec[f"{arm}_alpha_std_mean"], rec[f"{arm}_alpha_std_std"] = _mean_std(r.block_alpha_std for r in runs)
            rec[f"{arm}_train_seconds"] = float(np.mean([r.train_seconds for r in runs]))
        test = paired_test([100 * by_arm["FT"][s].eval[metric] for s in seeds],
                           [100 * by_arm["TB"][s].eval[metric] for s in seeds])
        rec.update({f"gain_{k}" if k.startswith("diff") else k: v for k, v in test.items() if k != "n"})
        if all(metric in r.scores for arm in ARMS for r in by_arm[arm].values()):
            f1 = {arm: [100 * by_arm[arm][s].scores[metric]["macro_f1"] for s in seeds] for arm in ARMS}
            for arm in ARMS:
                rec[f"{arm}_f1_mean"], rec[f"{arm}_f1_std"] = _mean_std(f1[arm])
            f1_test = paired_test(f1["FT"], f1["TB"])
            rec.update(f1_diff_mean=f1_test["diff_mean"], f1_wins=f1_test["wins"], f1_t_p=f1_test["t_p"])
        alpha_test = paired_test([by_arm["FT"][s].block_alpha_std for s in seeds],
                                 [by_arm["TB"][s].block_alpha_std for s in seeds])
        rec["alpha_std_diff_mean"], rec["alpha_std_t_p"] = alpha_test["diff_mean"], alpha_test["t_p"]
        rec["alpha_std_tb_lower"] = alpha_test["losses"]
        out.append(rec)
    return out


def verdict(rec: dict[str, Any], alpha: float = 0.05) -> str:
    """One sentence on what a demo's comparison (one size, one lr, a few seeds) supports, from its paired t-tests
    on accuracy and macro-F1: nothing either way, weak evidence (one of the two significant) or a difference at
    this one setting - never a general claim."""
    n, d, p, p_f1 = rec["seeds"], rec["gain_diff_mean"], rec["t_p"], rec.get("f1_t_p")
    fmt = lambda v: "n/a" if v is None else format(v, ".3f")  # noqa: E731
    tail = "the comparison over an lr grid and more seeds is in experiments/text (README, \"Does it help?\")."
    sig = [v is not None and v < alpha for v in (p, p_f1)]
    if n < 2 or not any(sig):
        return (f"What this supports: nothing either way - TB - FT = {d:+.2f} pp over {n} seed(s) at one learning "
                f"rate is within the seed-to-seed noise (paired t p = {fmt(p)}, macro-F1 p = {fmt(p_f1)}); {tail}")
    ahead = "ahead of" if d > 0 else "behind"
    k = rec["wins"] if d > 0 else rec["losses"]
    if not all(sig) and p_f1 is not None:
        on, off = ("macro-F1", "accuracy") if sig[1] else ("accuracy", "macro-F1")
        return (f"What this supports: weak evidence - TB {ahead} FT by {abs(d):.2f} pp in {k} of {n} seeds, "
                f"significant on {on} only (accuracy p = {fmt(p)}, macro-F1 p = {fmt(p_f1)}, uncorrected), at this one "
                f"size and learning rate; {tail}")
    return (f"What this supports: TB {ahead} FT by {abs(d):.2f} pp in {k} of {n} seeds (accuracy p = {fmt(p)}, "
            f"macro-F1 p = {fmt(p_f1)}) at this one size and learning rate - not a general claim; {tail}")


def alpha_std_line(rec: dict[str, Any], alpha: float = 0.05) -> str:
    """The STD-of-alpha reading of one size: TempBalance lowers (or raises) the layer imbalance only when the
    paired t-test over seeds says so at ``alpha``, like the accuracy line; otherwise the difference is reported
    as one the run cannot tell from zero."""
    ft, tb, p = rec["FT_alpha_std_mean"], rec["TB_alpha_std_mean"], rec.get("alpha_std_t_p")
    head = (f"STD of alpha across blocks after fine-tuning: FT {ft:.4f}, TB {tb:.4f} (TB - FT {tb - ft:+.4f}, TB "
            f"lower in {rec['alpha_std_tb_lower']} of {rec['seeds']} seeds, paired t p = {_f(p, '.3f')})")
    if p is not None and p < alpha:
        return f"{head} -> TempBalance {'lowers' if tb < ft else 'raises'} the layer imbalance here."
    return f"{head} -> no difference this run can tell from seed noise."


def _f(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _lrs(v: Sequence[float]) -> str:
    return "/".join(f"{x:.0e}" for x in v)


MARKDOWN_HEADER = ("| size | seeds | FT acc % | TB acc % | TB - FT (pp) | wins | paired t p | Wilcoxon p | "
                   "FT lr | TB lr | alpha STD FT | alpha STD TB | FT macro-F1 % | TB macro-F1 % | TB - FT F1 | F1 t p |")


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """The comparison as a markdown table (accuracy mean ± STD over seeds; alpha STD = block-wise STD of
    PL_Alpha_Hill after fine-tuning, mean ± STD over seeds)."""
    lines = [MARKDOWN_HEADER, "|" + "---|" * (MARKDOWN_HEADER.count("|") - 1)]
    for r in summary:
        lines.append(
            f"| {r['size']} | {r['seeds']} | {_f(r['FT_acc_mean'], '.2f')} ± {_f(r['FT_acc_std'], '.2f')} "
            f"| {_f(r['TB_acc_mean'], '.2f')} ± {_f(r['TB_acc_std'], '.2f')} "
            f"| {_f(r['gain_diff_mean'], '+.2f')} ± {_f(r['gain_diff_std'], '.2f')} | {r['wins']}/{r['seeds']} "
            f"| {_f(r['t_p'], '.3f')} | {_f(r['wilcoxon_p'], '.3f')} | {_lrs(r['FT_lr'])} | {_lrs(r['TB_lr'])} "
            f"| {_f(r['FT_alpha_std_mean'], '.4f')} ± {_f(r['FT_alpha_std_std'], '.4f')} "
            f"| {_f(r['TB_alpha_std_mean'], '.4f')} ± {_f(r['TB_alpha_std_std'], '.4f')} "
            f"| {_f(r.get('FT_f1_mean'), '.2f')} ± {_f(r.get('FT_f1_std'), '.2f')} "
            f"| {_f(r.get('TB_f1_mean'), '.2f')} ± {_f(r.get('TB_f1_std'), '.2f')} "
            f"| {_f(r.get('f1_diff_mean'), '+.2f')} | {_f(r.get('f1_t_p'), '.3f')} |")
    return "\n".join(lines)
