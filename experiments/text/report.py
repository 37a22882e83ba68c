"""Tables, statistics and plots of the text experiment, from the stored runs (one dict per run, as in runs.jsonl).

Per size, each TB arm is compared with FT on the seeds that both finished at every lr (paired by seed): the lr of
each arm selected on the mean dev macro-F1 (ties: the smaller lr), and every grid point at equal lr. Plus the trend
of the selected gain against log10(size), the movement of the block alphas during fine-tuning (the papers' Fig. 2
and what it means for refreshing), the Adaptive-cadence check, the profile controls (TB-paper's factors permuted
across blocks, or sorted up them) and the cost of a run.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tempbalance.demo.summary import paired_test

MAIN_ARMS = ("FT", "TB-default", "TB-paper")
TB_ARMS = MAIN_ARMS[1:]
CADENCE_ARM = "TB-paper-adaptive"
CONTROL_ARMS = ("TB-paper-shuffled", "TB-paper-sorted")  # FT with TB-paper's pretrained factors, fixed
COLORS = {"FT": "#7F8C8D", "TB-default": "#C0392B", "TB-paper": "#2471A3"}


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


def cost(runs: Runs) -> list[dict[str, Any]]:
    """Mean wall and CPU seconds of a run (training, evaluation of dev + test, analysis) per size and arm."""
    out = []
    for n in runs.sizes:
        for arm in MAIN_ARMS + (CADENCE_ARM,) + CONTROL_ARMS:
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


def _pm(ms: tuple[float, float], spec: str = ".2f") -> str:
    return f"{_f(ms[0], spec)} ± {_f(ms[1], spec)}"


def _lr(v: float) -> str:
    return f"{v:.0e}".replace("e-0", "e-")


def markdown(comps, grid, trends, diag, cad, control, costs, meta, smoke: bool) -> str:
    pre = meta["pretrained"]
    md = [f"# Low-data SST-2: {meta['description']}, FT vs TempBalance{' (smoke)' if smoke else ''}", "",
          f"Pool {meta['pool']} Rotten Tomatoes snippets (deduplicated against SST-2 validation); dev {meta['dev']} "
          f"sentences held out of the pool, class-balanced {tuple(meta['dev_classes'])}, used only to select the "
          f"lr (mean dev macro-F1 over seeds); test = SST-2 validation ({meta['test']}, classes "
          f"{tuple(meta['test_classes'])}), evaluated for every run. Arms: FT; TB-default (TBSigmoid s_lo 2, "
          "s_hi 1, xmin at N/2); TB-paper (s_lo = s_hi = 1.25, xmin at N/1.5); both block units, tau 10, one "
          "analysis before training and one after every epoch. Each TB arm has FT's lr grid; comparisons are "
          "paired by seed (subsample, head init, batch order, dropout).", ""]
    md += ["## Selected on dev: test accuracy and macro-F1 (%), mean ± STD over seeds", "",
           "| size | seeds | TB arm | lr FT / TB | FT acc | TB acc | TB − FT acc | wins | t p | Wilcoxon p | FT F1 | "
           "TB F1 | TB − FT F1 | t p |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comps:
        a, f = c["acc"], c["macro_f1"]
        md.append(f"| {c['size']} | {len(c['seeds'])} | {c['arm']} | {_lr(c['FT_lr'])} / {_lr(c['TB_lr'])} | "
                  f"{_pm(a['FT'])} | {_pm(a['TB'])} | {_f(a['diff_mean'], '+.2f')} | {a['wins']}/{a['n']} | "
                  f"{_f(a['t_p'], '.3f')} | {_f(a['wilcoxon_p'], '.3f')} | {_pm(f['FT'])} | {_pm(f['TB'])} | "
                  f"{_f(f['diff_mean'], '+.2f')} | {_f(f['t_p'], '.3f')} |")
    md += ["", "## Every grid point (test %, mean ± STD over the seeds above; * = the lr that arm selected on dev; "
           "Δ = TB − FT at the same lr, paired)", "",
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
    md += ["", f"## Cost per run ({meta['threads']} thread(s), torch {meta['torch']})", "",
           "| size | arm | runs | wall s | CPU s | of which training s | spectral s | CPU hours, all runs |",
           "|---|---|---|---|---|---|---|---|"]
    for c in costs:
        md.append(f"| {c['size']} | {c['arm']} | {c['runs']} | {c['seconds']:.1f} | {c['cpu_seconds']:.1f} | "
                  f"{c['train_seconds']:.1f} | {c['spectral_seconds']:.1f} | {c['total_hours']:.2f} |")
    return "\n".join(md) + "\n"


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
    costs = cost(R)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(comps, grid, trends, diag, cad, control, costs, meta, smoke))
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
                    cadence=cad, profile_controls=control, cost=costs, runs=len(runs))
    (out / "summary.json").write_text(json.dumps(analysis, indent=1, default=float).replace("NaN", "null"))
    if grid:
        plot_grid(grid, out / "f1_by_lr.png")
        plot_grid(grid, out / "acc_by_lr.png", metric="acc")
        plot_selected(comps, out / "selected_by_size.png")
        plot_alpha_std(diag, comps, meta["pretrained"]["block_alpha_std"], out / "alpha_std_by_size.png")
    plot_block_shift(R, meta, out / "block_alpha_shift.png")
    return analysis
