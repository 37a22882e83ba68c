"""Oracle: ModelBalancing's FNO trainer (EMNLP'24 SciML), ZihangHLiu/ModelBalancing at
9970cea5a7b7c7ddc65424f9a75ce6016954c3ae, ``sciml/pdebench/models/fno/``: utils.py (U) and train.py (T).

Transcribed from reading it, not vendored: the estimator as the trainer calls it (filter_zeros=True, xmin_pos=2,
conv_norm 0.5), the eigenvalue-count threshold, ``tb_std_sigmoid`` per layer and the per-module param groups.
float64. The published rows (sciml/pdebench/txt_files/fno_2dcfd.txt:29-34) pass the sigmoid's (s_lo, s_hi) in the
lr_min_ratio / lr_slope columns (U:656-658).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

COMMIT = "9970cea5a7b7c7ddc65424f9a75ce6016954c3ae"


def esd(model: nn.Module) -> list[dict]:
    """U:481-634 as called at T:174-179 / 466-473: every nn.Conv2d / nn.Linear / nn.Conv1d in module order."""
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d)):  # U:521
            continue
        mat = m.weight.detach().clone().to(torch.float64)
        if isinstance(m, nn.Conv2d):  # U:526-528 (a Conv1d is not reshaped: U:531 then sees a batch of (in, k))
            mat = torch.flatten(mat, start_dim=2) * math.sqrt(0.5)
            mat = mat.transpose(1, 2).transpose(0, 1)
        eigs = torch.sort(torch.square(torch.linalg.svdvals(mat).flatten())).values  # U:531-533
        nz = eigs[eigs > 1e-5]  # U:564-572, filter_zeros=True
        filtered = len(nz)  # U:537-539, "eig_number_filtered"
        if len(nz) == 0:
            nz = eigs
        logs = torch.log(nz)
        i = int(len(nz) / 2)  # U:581, xmin_pos=2 (T:178)
        n = float(len(nz) - i)
        alpha = 1 + n / (torch.sum(logs[i:]) - n * logs[i])  # U:585
        rows.append(dict(longname=name, alpha=float(alpha), eig_number_filtered=filtered))
    return rows


def _std_sigmoid(alphas: np.ndarray, s_lo: float, s_hi: float, exp_temp: float, base: float) -> np.ndarray:
    """U:656-674."""
    diffs = alphas - np.mean(alphas)

    def stage(x):
        scale = s_hi if x > 0 else s_lo
        return scale * (1 / (1 + np.exp(-1 * exp_temp * x)) - 0.5)

    return base * 10 ** np.array([stage(x) for x in diffs])


def tuned_lrs(model: nn.Module, *, s_lo: float, s_hi: float, base_lr: float, eigs_thres: int = 12,
              first_pass: bool = True, exp_temp: float = 10.0) -> dict[str, float]:
    """``{module: lr}`` of the tuned layers, in ``named_modules`` order: a layer is dropped when it has
    ``<= eigs_thres`` filtered eigenvalues at the first pass (T:190-196) or ``< eigs_thres`` later (T:480-485)."""
    rows = esd(model)
    keep = [r for r in rows if (r["eig_number_filtered"] > eigs_thres if first_pass
                                else r["eig_number_filtered"] >= eigs_thres)]
    lrs = _std_sigmoid(np.array([r["alpha"] for r in keep]), s_lo, s_hi, exp_temp, base_lr)
    return {r["longname"]: float(lr) for r, lr in zip(keep, lrs)}


def reference_lrs(model: nn.Module, *, s_lo: float, s_hi: float, base_lr: float, eigs_thres: int = 12,
                  first_pass: bool = True, exp_temp: float = 10.0) -> dict[str, float]:
    """Per-parameter learning rates the trainer sets from the current weights (:func:`tuned_lrs`): each kept
    module's parameters take its lr (T:232-240 / 532-541, tb_batchnorm false), every other parameter the base."""
    lr_of = tuned_lrs(model, s_lo=s_lo, s_hi=s_hi, base_lr=base_lr, eigs_thres=eigs_thres, first_pass=first_pass,
                      exp_temp=exp_temp)
    out: dict[str, float] = {}
    for mname, m in model.named_modules():
        if mname in lr_of:
            for pname, _ in m.named_parameters():
                out[f"{mname}.{pname}"] = float(lr_of[mname])
    return {n: out.get(n, float(base_lr)) for n, _ in model.named_parameters()}


def train(
    model: nn.Module,
    epochs: Sequence[Iterable],
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    *,
    lr: float,
    s_lo: float,
    s_hi: float,
    weight_decay: float = 1e-4,
    step_size: int = 100,
    gamma: float = 0.5,
    eigs_thres: int = 12,
    exp_temp: float = 10.0,
) -> list[dict[str, float]]:
    """The trainer with TB on and ``tb_interval_ep=1`` (every published row): groups from the first pass
    (T:174-264: one per tuned module in ``named_modules`` order at its lr, then the rest at ``lr``), Adam with
    coupled weight decay, StepLR per epoch (T:268); after each epoch ``scheduler.step()``, the untuned lr read from
    the last group, a pass, and the tuned lrs written into the groups by position (T:457-557). Returns, per
    optimizer update, ``{parameter name: lr}`` the update ran with."""
    first = tuned_lrs(model, s_lo=s_lo, s_hi=s_hi, base_lr=lr, eigs_thres=eigs_thres, exp_temp=exp_temp)
    modules = dict(model.named_modules())
    groups, tuned_ids = [], set()
    for name, value in first.items():
        ps = list(modules[name].parameters())
        tuned_ids |= {id(p) for p in ps}
        groups.append({"params": ps, "lr": value})
    groups.append({"params": [p for p in model.parameters() if id(p) not in tuned_ids], "lr": lr})
    opt = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    index = {id(p): k for k, g in enumerate(opt.param_groups) for p in g["params"]}
    named = list(model.named_parameters())
    records = []
    for batches in epochs:
        for batch in batches:
            loss = loss_fn(model, batch)
            records.append({n: float(opt.param_groups[index[id(p)]]["lr"]) for n, p in named})
            opt.zero_grad()
            loss.backward()
            opt.step()
        scheduler.step()  # T:457
        current = opt.param_groups[-1]["lr"]  # T:461
        lrs = list(tuned_lrs(model, s_lo=s_lo, s_hi=s_hi, base_lr=current, eigs_thres=eigs_thres, first_pass=False,
                             exp_temp=exp_temp).values())
        for k, g in enumerate(opt.param_groups):  # T:549-557: by position
            g["lr"] = lrs[k] if k <= len(lrs) - 1 else current
    return records
