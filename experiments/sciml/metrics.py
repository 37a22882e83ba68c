"""nRMSE (PDEBench's definition) and the statistics the results table reports."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats


def nrmse(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    """Mean over samples of ||pred - target||_2 / ||target||_2, each sample's norm taken over all its remaining
    axes (channels and grid) - the normalised RMSE of PDEBench (Takamoto et al., 2022)."""
    p = torch.as_tensor(pred, dtype=torch.float64)
    t = torch.as_tensor(target, dtype=torch.float64)
    if p.shape != t.shape or p.ndim < 2:
        raise ValueError(f"pred and target must have the same shape (batch, ...), got {tuple(p.shape)} and "
                         f"{tuple(t.shape)}")
    num = (p - t).flatten(1).norm(dim=1)
    den = t.flatten(1).norm(dim=1)
    if bool((den == 0).any()):
        raise ValueError("a target sample is identically zero: nRMSE is undefined for it")
    return float((num / den).mean())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan


def paired_tests(baseline: list[float], tb: list[float]) -> dict[str, float]:
    """Paired comparison of per-seed errors (same seed = same data subset, initial weights and batch order).

    ``reduction_pct``: 100 (mean_b - mean_tb) / mean_b (positive = TB better). ``t_p``: two-sided paired t-test on
    the errors; ``wilcoxon_p``: two-sided Wilcoxon signed-rank on log(tb / baseline) (NaN when it cannot be
    computed: fewer than 2 pairs or all differences zero)."""
    b = np.asarray(baseline, dtype=np.float64)
    t = np.asarray(tb, dtype=np.float64)
    if b.shape != t.shape:
        raise ValueError(f"baseline and tb need the same number of paired runs, got {b.size} and {t.size}")
    out = {"n_pairs": int(b.size), "reduction_pct": float(100 * (b.mean() - t.mean()) / b.mean()),
           "tb_better": int((t < b).sum()), "t_p": math.nan, "wilcoxon_p": math.nan}
    d = np.log(t / b)
    if b.size >= 2 and np.any(d != 0):
        out["t_p"] = float(stats.ttest_rel(t, b).pvalue)
        out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    return out
