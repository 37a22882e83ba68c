"""Tables, statistics and plots of the text experiment, from the stored runs (one dict per run, as in runs.jsonl).

Per size, each TB arm is compared with FT on the seeds that both finished at every lr (paired by seed): the lr of
each arm selected on the mean dev macro-F1 (ties: the smaller lr), and every grid point at equal lr. Plus the trend
of the selected gain against log10(size), the movement of the block alphas during fine-tuning (the papers' Fig. 2
and what it means for refreshing), the Adaptive-cadence check, the profile controls (TB-paper's factors permuted
across blocks, or sorted up them) with the dose-response of the shuffled profiles (how top-heavy a permutation
is against its gain over FT), the layer-wise-lr-decay baseline (LLRD-0.85 on the grid; LLRD-tuned: the decay
rate 0.75 / 0.85 / 0.95 chosen on dev at LLRD-0.85's lr) against TB-paper, the main comparisons with a Holm
correction, and the cost of a run. :func:`verdict` applies one Holm correction over the main comparisons of
several results folders (``python3 -m experiments.text.report`` rebuilds every folder and the verdict).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tempbalance.demo.summary import paired_test

LLRD_ARM = "LLRD-0.85"  # FT with layer-wise lr decay 0.85, a grid arm like TB's
LLRD_RATES = {"LLRD-0.75": 0.75, LLRD_ARM: 0.85, "LLRD-0.95": 0.95}  # the LLRD-tuned arm's choices
MAIN_ARMS = ("FT", "TB-default", "TB-paper", LLRD_ARM)
TB_ARMS = MAIN_ARMS[1:]  # the arms compared with FT (TB's two settings and LLRD-0.85)
CADENCE_ARM = "TB-paper-adaptive"
CONTROL_ARMS = ("TB-paper-shuffled", "TB-paper-sorted")  # FT with TB-paper's pretrained factors, fixed
COLORS = {"FT": "#7F8C8D", "TB-default": "#C0392B", "TB-paper": "#2471A3", LLRD_ARM: "#27AE60"}
RESULTS = Path(__file__).resolve().parent / "results"


class Runs:
    """The runs indexed by (size, arm, lr, seed)."""

    def __init__(self, runs: Iterable[dict[str, Any]]):
        self.by = {(r["size"], r["arm"], r["lr"], r["seed"]): r for r in runs}
        self.sizes = sorted({k[0] for k in self.by})

    def lrs(self, size: int, arm: str) -> list[float]:
        return sorted({k[2] for k in self.by if k[0] == size and k[1] == arm})

    def complete_seeds(self, size: int, arm: str, lrs: list[float]) -> set[int]:
        """Seeds that finished every lr of ``lrs`` in ``arm``."""
        seeds = {k[3] for k in self.by if k[0] == size and k[1] == arm}
        return {s for s in seeds if all((size, arm, lr, s) in self.by for lr in lrs)}

    def get(self, size: int, arm: str, lr: float, seeds: Iterable[int]) -> list[dict[str, Any]]:
        return [self.by[size, arm, lr, s] for s in sorted(seeds)]


def score(run: dict[str, Any], split: str, metric: str) -> float:
    """A run's score in % (``metric``: acc, macro_f1 or balanced_acc)."""
    return 100.0 * run["scores"][split][metric]


def select_lr(runs: Runs, size: int, arm: str, lrs: list[float], seeds: set[int]) -> float:
    """The lr with the highest mean dev macro-F1 over ``seeds`` (ties: the smaller lr)."""
    return max(lrs, key=lambda lr: (np.mean([score(r, "dev", "macro_f1") for r in runs.get(size, arm, lr, seeds)]),
                                    -lr))


def _ms(values: Iterable[float]) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=np.float64)
    return (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan) if v.size else (math.nan, math.nan)


def comparisons(runs: Runs) -> list[dict[str, Any]]:
    """One record per (size, TB arm): the seeds, the selected lrs, the paired selected comparison (accuracy and
    macro-F1), and per lr the paired comparison at equal lr."""
    out = []
    for n in runs.sizes:
        lrs = runs.lrs(n, "FT")
        for arm in TB_ARMS:
            if not lrs or runs.lrs(n, arm) != lrs:
                continue
            seeds = runs.complete_seeds(n, "FT", lrs) & runs.complete_seeds(n, arm, lrs)
            if len(seeds) < 2:
                continue
            sel = {a: select_lr(runs, n, a, lrs, seeds) for a in ("FT", arm)}
            rec: dict[str, Any] = dict(size=n, arm=arm, seeds=sorted(seeds), lrs=lrs, FT_lr=sel["FT"], TB_lr=sel[arm])
            for metric in ("acc", "macro_f1"):
                ft = [score(r, "test", metric) for r in runs.get(n, "FT", sel["FT"], seeds)]
                tb = [score(r, "test", metric) for r in runs.get(n, arm, sel[arm], seeds)]
                rec[metric] = dict(FT=_ms(ft), TB=_ms(tb), gains=list(np.subtract(tb, ft)), **paired_test(ft, tb))
            rec["grid"] = []
            for lr in lrs:
                row: dict[str, Any] = dict(lr=lr)
                for metric in ("acc", "macro_f1"):
                    ft = [score(r, "test", metric) for r in runs.get(n, "FT", lr, seeds)]
                    tb = [score(r, "test", metric) for r in runs.get(n, arm, lr, seeds)]
                    row[metric] = paired_test(ft, tb)
                rec["grid"].append(row)
            out.append(rec)
    return out


def _sizes(comps: list[dict[str, Any]]):
    """Per size with comparisons: (size, arms with FT first, lr grid, seeds common to them all, its comparisons)."""
    for n in sorted({c["size"] for c in comps}):
        mine = [c for c in comps if c["size"] == n]
        seeds = set(mine[0]["seeds"]).intersection(*[set(c["seeds"]) for c in mine])
        yield n, ("FT",) + tuple(c["arm"] for c in mine), mine[0]["lrs"], seeds, mine


def grid_rows(runs: Runs, comps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (size, lr, arm) grid point on the seeds of its comparison: dev macro-F1, test accuracy, macro-F1 and
    balanced accuracy (mean, STD over seeds), whether the arm selected it, and for TB arms the paired difference
    with FT at the same lr."""
    rows = []
    for n, arms, lrs, seeds, mine in _sizes(comps):
        for lr in lrs:
            for arm in arms:
                rs = runs.get(n, arm, lr, seeds)
                row: dict[str, Any] = dict(size=n, lr=lr, arm=arm, seeds=len(rs))
                row["dev_f1"] = _ms(score(r, "dev", "macro_f1") for r in rs)
                for metric in ("acc", "macro_f1", "balanced_acc"):
                    row[metric] = _ms(score(r, "test", metric) for r in rs)
                comp = next((c for c in mine if c["arm"] == arm), mine[0])
                row["selected"] = lr == (comp["FT_lr"] if arm == "FT" else comp["TB_lr"])
                if arm != "FT":
                    ft = runs.get(n, "FT", lr, seeds)
                    for metric in ("acc", "macro_f1"):
                        row[f"vs_FT_{metric}"] = paired_test([score(r, "test", metric) for r in ft],
                                                             [score(r, "test", metric) for r in rs])
                rows.append(row)
    return rows


def trend(comps: list[dict[str, Any]], arm: str, metric: str = "acc") -> dict[str, Any]:
    """Does TB's selected gain grow as data shrinks? The per-seed gains (pp) regressed on log10(size): a negative
    slope says yes; also Spearman's rho and the pooled one-sample t-test."""
    pairs = [(c["size"], g) for c in comps if c["arm"] == arm for g in c[metric]["gains"]]
    out: dict[str, Any] = dict(pairs=len(pairs), sizes=sorted({p[0] for p in pairs}), slope=None, slope_p=None,
                               rho=None, rho_p=None, pooled=None, pooled_p=None)
    if len(pairs) < 3:
        return out
    from scipy import stats

    x, y = np.log10([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    out["pooled"] = float(y.mean())
    if np.std(y) > 0:
        out["pooled_p"] = float(stats.ttest_1samp(y, 0.0).pvalue)
    if np.ptp(x) > 0 and np.ptp(y) > 0:
        lr = stats.linregress(x, y)
        rho = stats.spearmanr(x, y)
        out.update(slope=float(lr.slope), slope_p=float(lr.pvalue), rho=float(rho.statistic), rho_p=float(rho.pvalue))
    return out


def alpha_movement(run: dict[str, Any], pretrained: dict[str, float]) -> dict[str, float]:
    """How far fine-tuning moved the block alphas: the largest and the mean |alpha_block(end) - pretrained|; for
    TB runs also how far its factors moved between the first and the last refresh (largest |df| over units)."""
    d = [abs(run["block_alpha"][b] - a) for b, a in pretrained.items() if b in run["block_alpha"]]
    out = dict(max_shift=max(d) if d else math.nan, mean_shift=float(np.mean(d)) if d else math.nan,
               std_after=run["block_alpha_std"], factor_shift=math.nan, factor_range=math.nan, refreshes=0)
    hist = run.get("tb_history") or []
    if hist:
        f0, f1 = hist[0]["factors"], hist[-1]["factors"]
        out.update(factor_shift=max(abs(f1[u] - f0[u]) for u in f0), factor_range=max(f0.values()) - min(f0.values()),
                   refreshes=len(hist))
    return out


def diagnosis(runs: Runs, comps: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (size, arm, lr): block-wise STD of alpha after fine-tuning (vs pretrained) and the alpha / factor
    movement, median and largest over the comparison's seeds."""
    pre = meta["pretrained"]["block_alpha"]
    rows = []
    for n, arms, lrs, seeds, _ in _sizes(comps):
        for arm in arms:
            for lr in lrs:
                mv = [alpha_movement(r, pre) for r in runs.get(n, arm, lr, seeds)]
                row = dict(size=n, arm=arm, lr=lr, seeds=len(mv), std_after=_ms(m["std_after"] for m in mv),
                           max_shift_median=float(np.median([m["max_shift"] for m in mv])),
                           max_shift_max=float(np.max([m["max_shift"] for m in mv])))
                if arm != "FT":
                    row.update(factor_shift_max=float(np.max([m["factor_shift"] for m in mv])),
                               factor_range=float(np.median([m["factor_range"] for m in mv])))
                rows.append(row)
    return rows


def cadence_check(runs: Runs) -> list[dict[str, Any]]:
    """Per size: TB-paper refreshed every epoch vs with ``Adaptive``, same lr and seeds: refreshes, spectral
    time as a share of the training time, the paired test-accuracy difference and the largest final factor gap."""
    out = []
    for n in runs.sizes:
        keys = [k for k in runs.by if k[0] == n and k[1] == CADENCE_ARM and (n, "TB-paper", k[2], k[3]) in runs.by]
        if not keys:
            continue
        pairs = [(runs.by[n, "TB-paper", lr, s], runs.by[k]) for k in sorted(keys) for (_, _, lr, s) in [k]]
        rec: dict[str, Any] = dict(size=n, lr=sorted({k[2] for k in keys}), seeds=len(pairs))
        for name, idx in (("epoch", 0), ("adaptive", 1)):
            rs = [p[idx] for p in pairs]
            rec[name] = dict(refreshes=float(np.mean([len(r["tb_history"]) for r in rs])),
                             spectral_s=float(np.mean([r["spectral_seconds"] for r in rs])),
                             train_s=float(np.mean([r["train_seconds"] for r in rs])),
                             overhead_pct=float(100 * np.mean([r["spectral_seconds"] / r["train_seconds"] for r in rs])))
        rec["acc"] = paired_test([score(p[0], "test", "acc") for p in pairs], [score(p[1], "test", "acc") for p in pairs])
        rec["factor_gap"] = float(max(
            abs(p[0]["tb_history"][-1]["factors"][u] - p[1]["tb_history"][-1]["factors"][u])
            for p in pairs for u in p[0]["tb_history"][-1]["factors"]))
        out.append(rec)
    return out


def _top_heaviness(profile: dict[str, float]) -> float:
    """Spearman rho of a per-block factor against the block index (+1: rises with depth)."""
    from scipy import stats

    from tempbalance.demo.finetune import block_name_index

    blocks = sorted(profile, key=block_name_index)
    return float(stats.spearmanr(range(len(blocks)), [profile[b] for b in blocks])[0])


def profile_controls(runs: Runs) -> list[dict[str, Any]]:
    """Per control arm, size and lr, on the seeds where FT, TB-paper and the control all ran: test accuracy and
    macro-F1 of the three, TB-paper − control and control − FT (paired), and how top-heavy the control's
    profiles were (Spearman rho of factor against block index; TB-paper's own profile beside it)."""
    out = []
    for n, control, lr in sorted({k[:3] for k in runs.by if k[1] in CONTROL_ARMS}):
        seeds = sorted(k[3] for k in runs.by if k[:3] == (n, control, lr)
                       and (n, "FT", lr, k[3]) in runs.by and (n, "TB-paper", lr, k[3]) in runs.by)
        if not seeds:
            continue
        rs = {arm: runs.get(n, arm, lr, seeds) for arm in ("FT", "TB-paper", control)}
        rec: dict[str, Any] = dict(size=n, arm=control, lr=lr, seeds=len(seeds))
        for metric in ("acc", "macro_f1"):
            v = {arm: [score(r, "test", metric) for r in rr] for arm, rr in rs.items()}
            rec[metric] = dict(means={arm: _ms(x) for arm, x in v.items()},
                               tb_vs_control=paired_test(v[control], v["TB-paper"]),
                               control_vs_ft=paired_test(v["FT"], v[control]))
        rec["control_rho"] = [_top_heaviness(r["block_lr_scale"]) for r in rs[control]]
        rec["tb_rho"] = _top_heaviness(rs["TB-paper"][0]["tb_history"][0]["factors"])
        out.append(rec)
    return out


def _top_mean(profile: dict[str, float], k: int = 3) -> float:
    """Mean factor of the last ``k`` blocks: how much of the boost a profile gives the top of the encoder."""
    from tempbalance.demo.finetune import block_name_index

    blocks = sorted(profile, key=block_name_index)
    return float(np.mean([profile[b] for b in blocks[-k:]]))


def _correlations(points: list[dict[str, float]]) -> dict[str, Any]:
    """Spearman and Pearson correlation (with p) of the gain with rho, and Spearman of the gain with the top-3
    mean factor; None where an input is constant."""
    from scipy import stats

    x, t, y = (np.array([p[k] for p in points]) for k in ("rho", "top3", "gain"))
    out: dict[str, Any] = dict(n=len(points), spearman=None, spearman_p=None, pearson=None, pearson_p=None,
                               top3_spearman=None, top3_spearman_p=None)
    if len(points) < 3 or np.ptp(y) == 0:
        return out
    if np.ptp(x) > 0:
        sp, pe = stats.spearmanr(x, y), stats.pearsonr(x, y)
        out.update(spearman=float(sp.statistic), spearman_p=float(sp.pvalue), pearson=float(pe.statistic),
                   pearson_p=float(pe.pvalue))
    if np.ptp(t) > 0:
        sp = stats.spearmanr(t, y)
        out.update(top3_spearman=float(sp.statistic), top3_spearman_p=float(sp.pvalue))
    return out


def dose_response(runs: Runs) -> list[dict[str, Any]]:
    """The shuffled control's dose-response: per (size, lr), on the seeds where FT ran too, each seed's permuted
    profile's top-heaviness (Spearman rho of factor against block index; the mean factor of the last three
    blocks) against its test-accuracy gain over FT at the same lr and seed (pp), with their correlations. A last
    pooled row (size None) when there are several series: its points are not independent (a seed's permutation
    is the same at every size and lr)."""
    arm = CONTROL_ARMS[0]
    out: list[dict[str, Any]] = []
    pooled: list[dict[str, float]] = []
    for n, lr in sorted({(k[0], k[2]) for k in runs.by if k[1] == arm}):
        seeds = sorted(k[3] for k in runs.by if k[:3] == (n, arm, lr) and (n, "FT", lr, k[3]) in runs.by)
        pts = []
        for s in seeds:
            ctl = runs.by[n, arm, lr, s]
            pts.append(dict(seed=s, rho=_top_heaviness(ctl["block_lr_scale"]), top3=_top_mean(ctl["block_lr_scale"]),
                            gain=score(ctl, "test", "acc") - score(runs.by[n, "FT", lr, s], "test", "acc")))
        if len(pts) >= 3:
            out.append(dict(size=n, lr=lr, points=pts, **_correlations(pts)))
            pooled += pts
    if len(out) > 1:
        out.append(dict(size=None, lr=None, points=pooled, **_correlations(pooled)))
    return out


def _comp(comps: list[dict[str, Any]], size: int, arm: str) -> dict[str, Any] | None:
    return next((c for c in comps if c["size"] == size and c["arm"] == arm), None)


def _accs(runs: Runs, size: int, arm: str, lr: float, seeds: Iterable[int], metric: str = "acc") -> list[float]:
    return [score(r, "test", metric) for r in runs.get(size, arm, lr, seeds)]


def llrd_vs_tb(runs: Runs, comps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size with both TB-paper and LLRD-0.85 compared with FT: TB-paper − LLRD-0.85, each at the lr it
    selected on dev (paired by seed; accuracy and macro-F1), and at every equal lr; plus LLRD-tuned: at
    LLRD-0.85's selected lr, the decay rate of 0.75 / 0.85 / 0.95 with the best mean dev macro-F1 over the seeds
    where all three ran (ties: 0.85, the rate fixed before any result), its test accuracy against FT's and
    TB-paper's selected runs, and every rate's dev and test scores (7 grid points in all, TB's search has 5)."""
    out = []
    for n in runs.sizes:
        tb, ll = _comp(comps, n, "TB-paper"), _comp(comps, n, LLRD_ARM)
        if tb is None or ll is None:
            continue
        seeds = sorted(set(tb["seeds"]) & set(ll["seeds"]))
        if len(seeds) < 2:
            continue
        rec: dict[str, Any] = dict(size=n, seeds=seeds, TB_lr=tb["TB_lr"], LLRD_lr=ll["TB_lr"], FT_lr=tb["FT_lr"],
                                   tb_profile=runs.get(n, "TB-paper", tb["TB_lr"], seeds[:1])[0]["tb_history"][0]["factors"])
        for metric in ("acc", "macro_f1"):
            rec[metric] = paired_test(_accs(runs, n, LLRD_ARM, ll["TB_lr"], seeds, metric),
                                      _accs(runs, n, "TB-paper", tb["TB_lr"], seeds, metric))
        rec["grid"] = [dict(lr=lr, acc=paired_test(_accs(runs, n, LLRD_ARM, lr, seeds),
                                                   _accs(runs, n, "TB-paper", lr, seeds)))
                       for lr in tb["lrs"]]
        lr = ll["TB_lr"]
        tuned = [s for s in seeds if all((n, a, lr, s) in runs.by for a in LLRD_RATES)]
        rec["tuned"] = None
        if len(tuned) >= 2:
            rates = {a: dict(decay=d, dev=float(np.mean([score(r, "dev", "macro_f1") for r in runs.get(n, a, lr, tuned)])),
                             acc=_ms(_accs(runs, n, a, lr, tuned))) for a, d in LLRD_RATES.items()}
            chosen = max(LLRD_RATES, key=lambda a: (rates[a]["dev"], a == LLRD_ARM))
            acc = _accs(runs, n, chosen, lr, tuned)
            rec["tuned"] = dict(seeds=tuned, lr=lr, rates=rates, chosen=chosen, decay=LLRD_RATES[chosen],
                                acc=_ms(acc), vs_FT=paired_test(_accs(runs, n, "FT", tb["FT_lr"], tuned), acc),
                                tb_vs=paired_test(acc, _accs(runs, n, "TB-paper", tb["TB_lr"], tuned)))
        out.append(rec)
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values: the k-th smallest of m (k = 1 ... m) times m − k + 1, kept from falling
    below the one before, capped at 1. None (no test) stays None and does not count in m."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    out: list[float | None] = [None] * len(pvalues)
    running, m = 0.0, len(idx)
    for k, i in enumerate(idx):
        running = max(running, min(1.0, (m - k) * float(pvalues[i])))
        out[i] = running
    return out


def main_tests(comps: list[dict[str, Any]], h2h: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The main comparisons of a report, per size: TB-paper − FT, LLRD-0.85 − FT (selected on dev), TB-paper −
    LLRD-0.85 and TB-paper − LLRD-tuned (paired t-test on test accuracy), with Holm's correction over them."""
    rows = []
    for n in sorted({c["size"] for c in comps}):
        for arm in ("TB-paper", LLRD_ARM):
            if (c := _comp(comps, n, arm)) is not None:
                rows.append(dict(size=n, test=f"{arm} − FT", **c["acc"]))
        for h in (h for h in h2h if h["size"] == n):
            rows.append(dict(size=n, test=f"TB-paper − {LLRD_ARM}", **h["acc"]))
            if h["tuned"] is not None:
                rows.append(dict(size=n, test="TB-paper − LLRD-tuned", **h["tuned"]["tb_vs"]))
    for r, p in zip(rows, holm([r["t_p"] for r in rows])):
        r["holm_p"] = p
        r.pop("gains", None)
    return rows


def count_paired_tests(obj: Any) -> int:
    """How many paired tests an analysis holds (every dict with a t-test p and a win count)."""
    if isinstance(obj, dict):
        return int("t_p" in obj and "wins" in obj) + sum(count_paired_tests(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(count_paired_tests(v) for v in obj)
    return 0


def cost(runs: Runs) -> list[dict[str, Any]]:
    """Mean wall and CPU seconds of a run (training, evaluation of dev + test, analysis) per size and arm."""
    out = []
    order = MAIN_ARMS + (CADENCE_ARM,) + CONTROL_ARMS + tuple(LLRD_RATES)
    for n in runs.sizes:
        for arm in dict.fromkeys(order + tuple(sorted({k[1] for k in runs.by}))):
            rs = [r for k, r in runs.by.items() if k[0] == n and k[1] == arm]
            if rs:
                out.append(dict(size=n, arm=arm, runs=len(rs), seconds=float(np.mean([r["seconds"] for r in rs])),
                                cpu_seconds=float(np.mean([r["cpu_seconds"] for r in rs])),
                                train_seconds=float(np.mean([r["train_seconds"] for r in rs])),
                                spectral_seconds=float(np.mean([r["spectral_seconds"] for r in rs])),
                                total_hours=float(np.sum([r["cpu_seconds"] for r in rs]) / 3600)))
    return out


# --- formatting --------------------------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _p(v: float | None) -> str:
    """A p-value: three decimals, or < 0.001."""
    return "-" if v is None else "< 0.001" if v < 0.001 else f"{v:.3f}"


def _pm(ms: tuple[float, float], spec: str = ".2f") -> str:
    return f"{_f(ms[0], spec)} ± {_f(ms[1], spec)}"


def _lr(v: float) -> str:
    return f"{v:.0e}".replace("e-0", "e-")


def _intro(meta: dict[str, Any]) -> str:
    """What the pool, dev and test sets are (SST-2 unless the meta names another task)."""
    if meta.get("task", "sst2") == "sst2":
        return (f"Pool {meta['pool']} Rotten Tomatoes snippets (deduplicated against SST-2 validation); dev "
                f"{meta['dev']} sentences held out of the pool, class-balanced {tuple(meta['dev_classes'])}, used only "
                f"to select the lr (mean dev macro-F1 over seeds); test = SST-2 validation ({meta['test']}, classes "
                f"{tuple(meta['test_classes'])}), evaluated for every run.")
    return (f"Task: {meta['task_description']}. Pool {meta['pool']} texts; dev {meta['dev']} held out of the pool, "
            f"class-balanced {tuple(meta['dev_classes'])}, used only to select the lr (mean dev macro-F1 over seeds); "
            f"test {meta['test']} held out before anything (classes {tuple(meta['test_classes'])}), evaluated for "
            "every run.")


def markdown(comps, grid, trends, diag, cad, control, costs, meta, smoke: bool, h2h=(), dose=(), main=(),
             n_tests: int = 0) -> str:
    pre = meta["pretrained"]
    title = "SST-2" if meta.get("task", "sst2") == "sst2" else meta["task"]
    md = [f"# Low-data {title}: {meta['description']}, FT vs TempBalance vs LLRD{' (smoke)' if smoke else ''}", "",
          _intro(meta) + " Arms: FT; TB-default (TBSigmoid s_lo 2, s_hi 1, xmin at N/2); TB-paper (s_lo = s_hi = "
          "1.25, xmin at N/1.5); both block units, tau 10, one analysis before training and one after every epoch; "
          f"{LLRD_ARM} (FT with layer-wise lr decay 0.85: block l of L at lr·0.85^(L−1−l), embeddings 0.85^L, head "
          "1×). Each arm has FT's lr grid; comparisons are paired by seed (subsample, head init, batch order, "
          "dropout).", ""]
    md += ["## Selected on dev: test accuracy and macro-F1 (%), mean ± STD over seeds", "",
           "| size | seeds | arm | lr FT / arm | FT acc | arm acc | arm − FT acc | wins | t p | Wilcoxon p | FT F1 | "
           "arm F1 | arm − FT F1 | t p |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comps:
        a, f = c["acc"], c["macro_f1"]
        md.append(f"| {c['size']} | {len(c['seeds'])} | {c['arm']} | {_lr(c['FT_lr'])} / {_lr(c['TB_lr'])} | "
                  f"{_pm(a['FT'])} | {_pm(a['TB'])} | {_f(a['diff_mean'], '+.2f')} | {a['wins']}/{a['n']} | "
                  f"{_f(a['t_p'], '.3f')} | {_f(a['wilcoxon_p'], '.3f')} | {_pm(f['FT'])} | {_pm(f['TB'])} | "
                  f"{_f(f['diff_mean'], '+.2f')} | {_f(f['t_p'], '.3f')} |")
    md += ["", "## Every grid point (test %, mean ± STD over the seeds above; * = the lr that arm selected on dev; "
           "Δ = arm − FT at the same lr, paired)", "",
           "| size | lr | arm | dev F1 | test acc | test F1 | balanced acc | Δ acc (wins, t p) | Δ F1 (t p) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for g in grid:
        d = ""
        if g["arm"] != "FT":
            a, f = g["vs_FT_acc"], g["vs_FT_macro_f1"]
            d = (f"{_f(a['diff_mean'], '+.2f')} ({a['wins']}/{a['n']}, {_f(a['t_p'], '.3f')}) | "
                 f"{_f(f['diff_mean'], '+.2f')} ({_f(f['t_p'], '.3f')})")
        else:
            d = " | "
        md.append(f"| {g['size']} | {_lr(g['lr'])}{'*' if g['selected'] else ''} | {g['arm']} | "
                  f"{_f(g['dev_f1'][0])} | {_pm(g['acc'])} | {_pm(g['macro_f1'])} | {_f(g['balanced_acc'][0])} | {d} |")
    md += ["", "## Trend of the selected gain against log10(size) (negative slope = the papers' direction: the gain "
           "grows as data shrinks)", "", "| TB arm | metric | pairs | sizes | slope pp/decade | p | Spearman rho | p | "
           "pooled gain | p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (arm, metric), t in trends.items():
        md.append(f"| {arm} | {metric} | {t['pairs']} | {t['sizes']} | {_f(t['slope'], '+.2f')} | "
                  f"{_f(t['slope_p'], '.3f')} | {_f(t['rho'], '+.2f')} | {_f(t['rho_p'], '.3f')} | "
                  f"{_f(t['pooled'], '+.2f')} | {_f(t['pooled_p'], '.3f')} |")
    pa = pre["block_alpha"]
    md += ["", f"## Diagnosis: block alphas before and after fine-tuning ({len(pa)} blocks)", "",
           f"Pretrained: STD of the block-mean alphas {pre['block_alpha_std']:.4f}; block alphas range "
           f"{min(pa.values()):.3f} … {max(pa.values()):.3f} (spread {max(pa.values()) - min(pa.values()):.3f}). "
           "`max |Δα|` = the largest change of a block's mean alpha between the pretrained and the fine-tuned "
           "model (median over seeds, largest run in brackets); `factor shift` = the largest change of a TB "
           "block factor between the first and the last refresh (largest run); `factor range` = max − min of "
           "the factors at the first refresh.", "",
           "| size | arm | lr | STD after | max abs(Δα) | factor shift | factor range |", "|---|---|---|---|---|---|---|"]
    for d in diag:
        md.append(f"| {d['size']} | {d['arm']} | {_lr(d['lr'])} | {_pm(d['std_after'], '.4f')} | "
                  f"{d['max_shift_median']:.4f} ({d['max_shift_max']:.4f}) | {_f(d.get('factor_shift_max'), '.4f')} | "
                  f"{_f(d.get('factor_range'), '.3f')} |")
    if cad:
        md += ["", "## Cadence check: TB-paper refreshed every epoch vs `Adaptive` (same lr and seeds)", "",
               "| size | lr | seeds | refreshes epoch / adaptive | spectral time / training time epoch / adaptive | "
               "Δ test acc adaptive − epoch (t p) | largest final factor gap |", "|---|---|---|---|---|---|---|"]
        for c in cad:
            md.append(f"| {c['size']} | {'/'.join(_lr(v) for v in c['lr'])} | {c['seeds']} | "
                      f"{c['epoch']['refreshes']:.1f} / {c['adaptive']['refreshes']:.1f} | "
                      f"{c['epoch']['overhead_pct']:.1f} % / {c['adaptive']['overhead_pct']:.1f} % | "
                      f"{_f(c['acc']['diff_mean'], '+.2f')} ({_f(c['acc']['t_p'], '.3f')}) | {c['factor_gap']:.4f} |")
    if control:
        md += ["", "## Profile controls: TB-paper against FT with TB-paper's pretrained factors, fixed, reassigned to "
               "the blocks, same lr and seeds (test %)", "",
               "The same block lrs as TB-paper's first refresh: `TB-paper-shuffled` permutes them at random (a "
               "permutation per seed), `TB-paper-sorted` sorts them to rise with the block index (a generic "
               "top-heavy profile). TB − control is what the spectra's assignment adds. rho = Spearman correlation "
               "of the factor with the block index (positive = top-heavy).", "",
               "| size | control | lr | seeds | FT acc | control acc | TB-paper acc | TB − control acc (wins, t p) | "
               "control − FT acc (wins, t p) | TB − control F1 (t p) | rho control (median, range) / TB |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in control:
            a, f = c["acc"], c["macro_f1"]
            tc, cf = a["tb_vs_control"], a["control_vs_ft"]
            r = c["control_rho"]
            md.append(f"| {c['size']} | {c['arm']} | {_lr(c['lr'])} | {c['seeds']} | {_pm(a['means']['FT'])} | "
                      f"{_pm(a['means'][c['arm']])} | {_pm(a['means']['TB-paper'])} | "
                      f"{_f(tc['diff_mean'], '+.2f')} ({tc['wins']}/{tc['n']}, {_f(tc['t_p'], '.3f')}) | "
                      f"{_f(cf['diff_mean'], '+.2f')} ({cf['wins']}/{cf['n']}, {_f(cf['t_p'], '.3f')}) | "
                      f"{_f(f['tb_vs_control']['diff_mean'], '+.2f')} ({_f(f['tb_vs_control']['t_p'], '.3f')}) | "
                      f"{np.median(r):+.2f} ({min(r):+.2f} … {max(r):+.2f}) / {c['tb_rho']:+.2f} |")
    md += _llrd_markdown(h2h, comps, pre["block_alpha"])
    if dose:
        md += ["", "## Dose-response of the shuffled profiles: top-heaviness against the gain over FT "
               "(`shuffle_dose_response.png`)", "",
               "Each seed's random permutation of TB-paper's factors (`TB-paper-shuffled`) is more or less top-heavy "
               "by chance; rho = Spearman correlation of its factors with the block index, top-3 = the mean factor "
               "of the last three blocks; gain = control − FT test accuracy (pp) at the same lr and seed. The "
               "statistic is Spearman's correlation of gain with rho (Pearson beside it) and with top-3. The pooled "
               "row is not independent across series (a seed's permutation is the same at every size and lr).", "",
               "| size | lr | seeds | Spearman(rho, gain) (p) | Pearson (p) | Spearman(top-3, gain) (p) |",
               "|---|---|---|---|---|---|"]
        for d in dose:
            md.append(f"| {d['size'] or 'pooled'} | {_lr(d['lr']) if d['lr'] else 'all'} | {d['n']} | "
                      f"{_f(d['spearman'], '+.2f')} ({_p(d['spearman_p'])}) | {_f(d['pearson'], '+.2f')} "
                      f"({_p(d['pearson_p'])}) | {_f(d['top3_spearman'], '+.2f')} "
                      f"({_p(d['top3_spearman_p'])}) |")
    if main:
        md += ["", f"## Main comparisons, Holm-corrected over the {sum(r['t_p'] is not None for r in main)} tests "
               f"of this report (paired t-test on test accuracy; {n_tests} paired tests are reported in all here)",
               "", "| size | comparison | difference pp | wins | t p | Wilcoxon p | Holm p |", "|---|---|---|---|---|---|---|"]
        for r in main:
            md.append(f"| {r['size']} | {r['test']} | {_f(r['diff_mean'], '+.2f')} | {r['wins']}/{r['n']} | "
                      f"{_f(r['t_p'], '.3f')} | {_f(r['wilcoxon_p'], '.3f')} | {_p(r['holm_p'])} |")
    md += ["", f"## Cost per run ({meta['threads']} thread(s), torch {meta['torch']})", "",
           "| size | arm | runs | wall s | CPU s | of which training s | spectral s | CPU hours, all runs |",
           "|---|---|---|---|---|---|---|---|"]
    for c in costs:
        md.append(f"| {c['size']} | {c['arm']} | {c['runs']} | {c['seconds']:.1f} | {c['cpu_seconds']:.1f} | "
                  f"{c['train_seconds']:.1f} | {c['spectral_seconds']:.1f} | {c['total_hours']:.2f} |")
    return "\n".join(md) + "\n"


def _llrd_markdown(h2h: list[dict[str, Any]], comps: list[dict[str, Any]], pretrained: dict[str, float]) -> list[str]:
    """The LLRD section: both profiles, TB-paper − LLRD-0.85 selected and at equal lr, LLRD-tuned."""
    if not h2h:
        return []
    from tempbalance.demo.finetune import block_name_index

    blocks = sorted(pretrained, key=block_name_index)
    llrd = [0.85 ** (len(blocks) - 1 - i) for i in range(len(blocks))]
    md = ["", "## Layer-wise lr decay (LLRD) against TB-paper", "",
          f"LLRD-0.85's block profile (blocks 0-{len(blocks) - 1}): "
          + " ".join(f"{v:.2f}" for v in llrd) + f", embeddings {0.85 ** len(blocks):.2f}, head 1."]
    prof = h2h[0]["tb_profile"]
    tbv = [prof[b] for b in blocks if b in prof]
    if len(tbv) == len(blocks):
        r = float(np.corrcoef(tbv, llrd)[0, 1])
        md.append("TB-paper's (first refresh, embeddings and head 1): " + " ".join(f"{v:.2f}" for v in tbv)
                  + f"; Pearson correlation with LLRD-0.85's {r:+.2f}.")
    md += ["", "Selected on dev (each arm's own lr), paired by seed, test %:", "",
           "| size | seeds | lr TB / LLRD | TB-paper − LLRD-0.85 acc (wins, t p, Wilcoxon p) | F1 (t p) | "
           "at equal lr: TB − LLRD acc per lr (wins) |", "|---|---|---|---|---|---|"]
    for h in h2h:
        a, f = h["acc"], h["macro_f1"]
        eq = "; ".join(f"{_lr(g['lr'])} {_f(g['acc']['diff_mean'], '+.2f')} ({g['acc']['wins']}/{g['acc']['n']})"
                       for g in h["grid"])
        md.append(f"| {h['size']} | {len(h['seeds'])} | {_lr(h['TB_lr'])} / {_lr(h['LLRD_lr'])} | "
                  f"{_f(a['diff_mean'], '+.2f')} ({a['wins']}/{a['n']}, {_f(a['t_p'], '.3f')}, "
                  f"{_f(a['wilcoxon_p'], '.3f')}) | {_f(f['diff_mean'], '+.2f')} ({_f(f['t_p'], '.3f')}) | {eq} |")
    edge = [h["size"] for h in h2h if h["LLRD_lr"] == max(g["lr"] for g in h["grid"])]
    if edge:
        md += ["", f"LLRD-0.85 selected the grid's largest lr at {', '.join(map(str, edge))} sentences: its best lr may "
               "lie above the grid (it trains every block but the last below the base lr)."]
    tuned = [h for h in h2h if h["tuned"] is not None]
    if tuned:
        md += ["", "LLRD-tuned: the decay rate chosen on dev (mean macro-F1) among 0.75 / 0.85 / 0.95 at LLRD-0.85's "
               "selected lr: 7 grid points in all (5 lrs at 0.85, then 2 rates), against TB-paper's 5. Test %:", "",
               "| size | seeds | lr | dev F1 0.75 / 0.85 / 0.95 | test acc 0.75 / 0.85 / 0.95 | chosen | "
               "LLRD-tuned − FT (wins, t p) | TB-paper − LLRD-tuned (wins, t p) |", "|---|---|---|---|---|---|---|---|"]
        for h in tuned:
            t = h["tuned"]
            rates = [t["rates"][a] for a in LLRD_RATES]
            md.append(f"| {h['size']} | {len(t['seeds'])} | {_lr(t['lr'])} | "
                      + " / ".join(f"{r['dev'] * 100:.1f}" for r in rates) + " | "
                      + " / ".join(f"{r['acc'][0]:.2f}" for r in rates)
                      + f" | {t['decay']:g} | {_f(t['vs_FT']['diff_mean'], '+.2f')} ({t['vs_FT']['wins']}/"
                      f"{t['vs_FT']['n']}, {_f(t['vs_FT']['t_p'], '.3f')}) | {_f(t['tb_vs']['diff_mean'], '+.2f')} "
                      f"({t['tb_vs']['wins']}/{t['tb_vs']['n']}, {_f(t['tb_vs']['t_p'], '.3f')}) |")
    return md


# --- plots -------------------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_grid(grid: list[dict[str, Any]], path: Path, metric: str = "macro_f1") -> Path:
    """Test score against lr, one panel per size, one line per arm (mean ± STD over seeds); stars = selected."""
    sizes = sorted({g["size"] for g in grid})
    fig = _figure(4.2 * len(sizes), 3.6)
    for k, n in enumerate(sizes):
        ax = fig.add_subplot(1, len(sizes), k + 1)
        for arm in MAIN_ARMS:
            pts = [g for g in grid if g["size"] == n and g["arm"] == arm]
            if not pts:
                continue
            x = np.array([g["lr"] for g in pts]) * (1 + 0.04 * (MAIN_ARMS.index(arm) - 1))
            ax.errorbar(x, [g[metric][0] for g in pts], yerr=[g[metric][1] for g in pts], marker="o", capsize=3,
                        color=COLORS[arm], label=arm)
            sel = [(xi, g[metric][0]) for xi, g in zip(x, pts) if g["selected"]]
            if sel:
                ax.plot(*zip(*sel), marker="*", markersize=14, color=COLORS[arm], linestyle="none")
        ax.set_xscale("log")
        ax.set_title(f"{n} training sentences")
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.set_ylabel({"macro_f1": "test macro-F1 (%)", "acc": "test accuracy (%)"}[metric])
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_selected(comps: list[dict[str, Any]], path: Path) -> Path:
    """Selected test accuracy by size, FT and each TB arm (mean ± STD over seeds)."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for j, arm in enumerate(TB_ARMS):
        cs = [c for c in comps if c["arm"] == arm]
        if not cs:
            continue
        x = np.array([c["size"] for c in cs], dtype=float)
        if j == 0 or not any(c["arm"] == TB_ARMS[0] for c in comps):
            ax.errorbar(x, [c["acc"]["FT"][0] for c in cs], yerr=[c["acc"]["FT"][1] for c in cs], marker="o",
                        capsize=3, color=COLORS["FT"], label="FT")
        ax.errorbar(x * (1.04 + 0.04 * j), [c["acc"]["TB"][0] for c in cs], yerr=[c["acc"]["TB"][1] for c in cs],
                    marker="o", capsize=3, color=COLORS[arm], label=arm)
    return _finish_size_plot(fig, ax, comps, "SST-2 validation accuracy (%)",
                             "lr selected on dev macro-F1 (mean ± STD over seeds)", path)


def plot_alpha_std(diag: list[dict[str, Any]], comps: list[dict[str, Any]], pretrained_std: float,
                   path: Path) -> Path:
    """Block-wise STD of alpha after fine-tuning at the selected lr, per arm and size, against the pretrained
    value (the papers' Fig. 2)."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.axhline(pretrained_std, color="black", linestyle="--", label="pretrained")
    chosen: dict[str, list[tuple[int, float]]] = {arm: [] for arm in MAIN_ARMS}  # (size, selected lr)
    for c in comps:
        if (c["size"], c["FT_lr"]) not in chosen["FT"]:
            chosen["FT"].append((c["size"], c["FT_lr"]))
        chosen[c["arm"]].append((c["size"], c["TB_lr"]))
    for j, arm in enumerate(MAIN_ARMS):
        pts = [(n, d["std_after"]) for n, lr in chosen[arm] for d in diag if (d["size"], d["arm"], d["lr"]) == (n, arm, lr)]
        if pts:
            x = np.array([p[0] for p in pts], dtype=float) * (1 + 0.04 * (j - 1))
            ax.errorbar(x, [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o", capsize=3,
                        color=COLORS[arm], label=arm)
    return _finish_size_plot(fig, ax, comps, "STD of block PL_Alpha_Hill",
                             "layer imbalance after fine-tuning (selected lr)", path)


def _finish_size_plot(fig, ax, comps: list[dict[str, Any]], ylabel: str, title: str, path: Path) -> Path:
    """Log size axis with the sizes as ticks, labels, grid, legend; saved to ``path``."""
    ax.set_xscale("log")
    sizes = sorted({c["size"] for c in comps})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training sentences")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_dose_response(dose: list[dict[str, Any]], control: list[dict[str, Any]], path: Path) -> Path | None:
    """Gain of each shuffled profile over FT (same lr and seed) against its top-heaviness, one marker style per
    (size, lr) with its Spearman correlation in the legend; the sorted control and TB-paper (means) for
    reference."""
    series = [d for d in dose if d["size"] is not None]
    if not series:
        return None
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    markers = "osD^v<>"
    for j, d in enumerate(series):
        ax.scatter([p["rho"] for p in d["points"]], [p["gain"] for p in d["points"]], marker=markers[j % 7],
                   alpha=0.75, label=f"shuffled, {d['size']} sentences, lr {_lr(d['lr'])}: Spearman "
                   f"{_f(d['spearman'], '+.2f')} (p {_p(d['spearman_p'])})")
    for c in control:
        a = c["acc"]
        if c["arm"] == CONTROL_ARMS[1]:
            ax.scatter([np.median(c["control_rho"])], [a["control_vs_ft"]["diff_mean"]], marker="*", s=160,
                       color="black", alpha=0.6)
        ax.scatter([c["tb_rho"]], [a["means"]["TB-paper"][0] - a["means"]["FT"][0]], marker="P", s=90,
                   color=COLORS["TB-paper"], alpha=0.6)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("top-heaviness of the profile (Spearman rho of factor vs block index)")
    ax.set_ylabel("test accuracy − FT at the same lr and seed (pp)")
    ax.set_title("TB-paper's factors permuted across blocks: dose-response\n(+ = TB-paper, * = sorted control)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_block_shift(runs: Runs, meta: dict[str, Any], path: Path) -> Path | None:
    """Per block: pretrained alpha and the alphas after fine-tuning at the smallest size and the largest lr (FT
    and TB-paper, every seed): how much fine-tuning moves them against how much they differ across blocks."""
    from tempbalance.demo.finetune import block_name_index

    if not runs.sizes:
        return None
    n = runs.sizes[0]
    pre = meta["pretrained"]["block_alpha"]
    blocks = sorted(pre, key=block_name_index)
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(blocks))
    ax.plot(x, [pre[b] for b in blocks], color="black", marker="s", label="pretrained")
    for j, arm in enumerate(("FT", "TB-paper")):
        lrs = runs.lrs(n, arm)
        if not lrs:
            continue
        rs = [r for k, r in runs.by.items() if k[:3] == (n, arm, lrs[-1])]
        for i, r in enumerate(rs):
            ax.plot(x + 0.12 * (2 * j - 1), [r["block_alpha"][b] for b in blocks], color=COLORS[arm], marker="o",
                    linestyle="none", alpha=0.5, label=f"{arm}, lr {_lr(lrs[-1])}, after" if i == 0 else None)
    ax.set_xticks(x, [str(block_name_index(b)) for b in blocks])
    ax.set_xlabel("block")
    ax.set_ylabel("mean PL_Alpha_Hill of the block")
    ax.set_title(f"{n} training sentences: block alphas before and after fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


# --- everything --------------------------------------------------------------------------------------------------
def write(runs: list[dict[str, Any]], meta: dict[str, Any], out: Path, smoke: bool = False) -> dict[str, Any]:
    """Write results.md, summary.csv (selected comparisons), grid.csv (every grid point), summary.json and the
    plots into ``out``; returns the analysis."""
    R = Runs(runs)
    comps = comparisons(R)
    grid = grid_rows(R, comps)
    trends = {(arm, m): trend(comps, arm, m) for arm in TB_ARMS for m in ("acc", "macro_f1")
              if any(c["arm"] == arm for c in comps)}
    diag = diagnosis(R, comps, meta)
    cad = cadence_check(R)
    control = profile_controls(R)
    dose = dose_response(R) if control else []
    h2h = llrd_vs_tb(R, comps)
    main = main_tests(comps, h2h)
    costs = cost(R)
    n_tests = count_paired_tests([comps, grid, cad, control, h2h])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(comps, grid, trends, diag, cad, control, costs, meta, smoke, h2h, dose,
                                             main, n_tests))
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["size", "seeds", "tb_arm", "FT_lr", "TB_lr", "FT_acc", "FT_acc_std", "TB_acc", "TB_acc_std",
                    "gain_acc", "wins", "t_p", "wilcoxon_p", "FT_f1", "TB_f1", "gain_f1", "f1_t_p"])
        for c in comps:
            a, m = c["acc"], c["macro_f1"]
            w.writerow([c["size"], len(c["seeds"]), c["arm"], c["FT_lr"], c["TB_lr"], *a["FT"], *a["TB"],
                        a["diff_mean"], a["wins"], a["t_p"], a["wilcoxon_p"], m["FT"][0], m["TB"][0], m["diff_mean"],
                        m["t_p"]])
    with open(out / "grid.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["size", "lr", "arm", "seeds", "selected", "dev_f1", "test_acc", "test_acc_std", "test_f1",
                    "test_f1_std", "test_balanced_acc", "vs_FT_acc", "vs_FT_acc_t_p", "vs_FT_f1", "vs_FT_f1_t_p"])
        for g in grid:
            a, m = g.get("vs_FT_acc", {}), g.get("vs_FT_macro_f1", {})
            w.writerow([g["size"], g["lr"], g["arm"], g["seeds"], g["selected"], g["dev_f1"][0], *g["acc"],
                        *g["macro_f1"], g["balanced_acc"][0], a.get("diff_mean"), a.get("t_p"), m.get("diff_mean"),
                        m.get("t_p")])
    analysis = dict(comparisons=comps, trends={f"{a}/{m}": t for (a, m), t in trends.items()}, diagnosis=diag,
                    cadence=cad, profile_controls=control, dose_response=dose, llrd_vs_tb=h2h, main_tests=main,
                    paired_tests=n_tests, cost=costs, runs=len(runs))
    (out / "summary.json").write_text(json.dumps(analysis, indent=1, default=float).replace("NaN", "null"))
    if grid:
        plot_grid(grid, out / "f1_by_lr.png")
        plot_grid(grid, out / "acc_by_lr.png", metric="acc")
        plot_selected(comps, out / "selected_by_size.png")
        plot_alpha_std(diag, comps, meta["pretrained"]["block_alpha_std"], out / "alpha_std_by_size.png")
    plot_block_shift(R, meta, out / "block_alpha_shift.png")
    if dose:
        plot_dose_response(dose, control, out / "shuffle_dose_response.png")
    return analysis


def verdict(folders: Iterable[Path], out: Path | None = None) -> dict[str, Any]:
    """One Holm correction over the main comparisons of several results folders (their ``summary.json``), written
    to ``out`` (markdown) when given: the family the READMEs' verdict rests on, and how many paired tests the
    folders report in all."""
    rows, total = [], 0
    for folder in folders:
        summary = json.loads((Path(folder) / "summary.json").read_text())
        total += summary.get("paired_tests", 0)
        rows += [dict(r, folder=Path(folder).name) for r in summary.get("main_tests", [])]
    for r, p in zip(rows, holm([r["t_p"] for r in rows])):
        r["holm_all_p"] = p
    m = sum(r["t_p"] is not None for r in rows)
    result = dict(tests=rows, family=m, paired_tests=total)
    if out is not None:
        md = ["# Main comparisons of the text experiment, one Holm correction over all folders", "",
              f"{m} main tests (paired t-test on test accuracy, each arm at the lr it selected on dev), Holm-corrected "
              f"together; the folders' reports hold {total} paired tests in all (every grid point, controls, "
              "macro-F1), which are descriptive.", "",
              "| results | size | comparison | difference pp | wins | t p | Wilcoxon p | Holm p (all folders) |",
              "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            md.append(f"| {r['folder']} | {r['size']} | {r['test']} | {_f(r['diff_mean'], '+.2f')} | "
                      f"{r['wins']}/{r['n']} | {_f(r['t_p'], '.3f')} | {_f(r['wilcoxon_p'], '.3f')} | "
                      f"{_p(r['holm_all_p'])} |")
        Path(out).write_text("\n".join(md) + "\n")
    return result


VERDICT_FOLDERS = ("mpnet", "mpnet-bbc")


def main() -> int:
    """Rebuild every results folder's report from its runs.jsonl (as ``run.py --report-only`` does: only the runs
    with the folder's settings), then the verdict."""
    from . import run as text_run  # run imports this module

    for folder in sorted(p for p in RESULTS.iterdir() if (p / "runs.jsonl").exists() and (p / "meta.json").exists()):
        model, _, task = folder.name.partition("-")
        args = text_run.parse(["--model", model, *(["--task", task] if task else []), "--out", str(folder),
                               "--report-only", "--no-progress"])
        print(f"rebuilt {folder.name}: {text_run.run(args)['runs']} runs")
    folders = [RESULTS / f for f in VERDICT_FOLDERS if (RESULTS / f / "summary.json").exists()]
    verdict(folders, RESULTS / "verdict.md")
    print(f"wrote {RESULTS / 'verdict.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
