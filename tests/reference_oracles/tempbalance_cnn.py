"""Oracle: TempBalance (NeurIPS'23, CIFAR ResNet/VGG), YefanZhou/TempBalance at 9f0d9c7e86b70c6613ac3b44b5fd147873050823.

Transcribed from reading the reference, not vendored: the ``Tempbalance`` class of ``tempbalance.py`` (TB) - its
ESD estimator, remove_first / remove_last, the eigenvalue threshold, TBLinearMap and ``tb_step`` (rank), the
BatchNorm rule, the param groups - and the epoch loop of ``main_tb.py`` (MAIN) with ``config.py`` (CFG). float64.

The published runs (bash_scripts/config/tb.txt, the "TB" rows 13-16 and 51-52, through bash_scripts/train_tb.sh)
use pl_fitting=median, xmin_pos=2, remove_first=remove_last=True, assign_func=tb_linear_map, lr_min_ratio=0.5,
lr_max_ratio=1.5, batchnorm=True, batchnorm_type=name, SGD (momentum 0.9) and the per-epoch cosine_decay.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

COMMIT = "9f0d9c7e86b70c6613ac3b44b5fd147873050823"


@dataclass
class Options:
    """``Tempbalance.__init__`` arguments and defaults (TB:12-30)."""

    conv_norm: float = 0.5
    xmin_pos: float = 2.0
    filter_zeros: bool = False
    remove_first_layer: bool = True
    remove_last_layer: bool = True
    eigs_thresh: int = 50
    assign_func: str = "tb_linear_map"  # or "tb_step"
    lr_min_ratio: float = 0.5
    lr_max_ratio: float = 1.5
    batchnorm: bool = True
    batchnorm_type: str = "name"  # or "order"


def esd(model: nn.Module, opts: Options) -> list[dict]:
    """TB:220-326 (pl_fitting="median"): one row per nn.Conv2d / nn.Linear in ``named_modules`` order, with its
    alpha and eigenvalue count."""
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):  # TB:245
            continue
        mat = m.weight.detach().clone().to(torch.float64)
        if isinstance(m, nn.Conv2d):  # TB:248-250: one (out, in) matrix per kernel position, eigenvalues x conv_norm
            mat = torch.flatten(mat, start_dim=2) * math.sqrt(opts.conv_norm)
            mat = mat.transpose(1, 2).transpose(0, 1)
        eigs = torch.sort(torch.square(torch.linalg.svdvals(mat).flatten())).values  # TB:251-253
        nz = eigs[eigs > 1e-5] if opts.filter_zeros else eigs  # TB:257-266
        if len(nz) == 0:
            nz = eigs
        logs = torch.log(nz)
        i = int(len(nz) / opts.xmin_pos)  # TB:271
        n = float(len(nz) - i)
        alpha = 1 + n / (torch.sum(logs[i:]) - n * logs[i])  # TB:275
        rows.append(dict(longname=name, alpha=float(alpha), eigs_num=len(eigs)))  # TB:317-324
    return rows


def _layer_lrs(scores: np.ndarray, untuned_lr: float, opts: Options) -> list[float]:
    """TB:329-353."""
    n = len(scores)
    if opts.assign_func == "tb_linear_map":  # TB:334-337
        return list(np.interp(scores, [min(scores), max(scores)],
                              [opts.lr_min_ratio * untuned_lr, opts.lr_max_ratio * untuned_lr]))
    if opts.assign_func == "tb_step":  # TB:345-348
        order = np.argsort(scores)
        temps = [untuned_lr * (opts.lr_min_ratio + (opts.lr_max_ratio - opts.lr_min_ratio) * i / n) for i in range(n)]
        return [v for _, v in sorted(zip(order, temps), key=itemgetter(0))]
    raise NotImplementedError(opts.assign_func)


def tuned_layers(model: nn.Module, opts: Options) -> tuple[list[str], np.ndarray]:
    """TB:133-149: the layers TB tunes (after remove first / last, then the eigenvalue threshold) and their
    alphas."""
    rows = esd(model, opts)
    if opts.remove_first_layer:  # TB:136-139
        rows = rows[1:]
    if opts.remove_last_layer:  # TB:140-143
        rows = rows[:-1]
    rows = [r for r in rows if r["eigs_num"] >= opts.eigs_thresh]  # TB:146-147
    return [r["longname"] for r in rows], np.array([r["alpha"] for r in rows], dtype=np.float64)


def _bn_to_conv(model: nn.Module, opts: Options) -> dict[str, str]:
    """TB:82-107."""
    out: dict[str, str] = {}
    if not opts.batchnorm:
        return out
    if opts.batchnorm_type == "name":  # TB:82-92
        layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d) and name.replace("bn", "conv") in layers:
                out[name] = name.replace("bn", "conv")
    else:  # TB:94-107: the Conv2d right before it among Conv2d / BatchNorm2d modules
        seen: list[tuple[str, str]] = []
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                seen.append((name, "conv"))
            if isinstance(m, nn.BatchNorm2d):
                if seen[-1][1] == "conv":
                    out[name] = seen[-1][0]
                seen.append((name, "bn"))
    return out


def param_groups(model: nn.Module, opts: Options, untuned_lr: float) -> tuple[list[dict], int]:
    """``build_optimizer_param_group(initialize=True)`` (TB:123-209): one group per tuned layer or BatchNorm (in
    ``named_modules`` order), then one group of every other parameter at ``untuned_lr``; and the tuned count."""
    names, scores = tuned_layers(model, opts)
    lr_of = dict(zip(names, _layer_lrs(scores, untuned_lr, opts)))  # TB:149-154
    bn = _bn_to_conv(model, opts)
    groups, tuned_ids = [], set()
    for name, m in model.named_modules():
        if name in lr_of:  # TB:163-172
            src = name
        elif opts.batchnorm and isinstance(m, nn.BatchNorm2d) and name in bn and bn[name] in lr_of:  # TB:174-187
            src = bn[name]
        else:
            continue
        ps = list(m.parameters())
        tuned_ids |= {id(p) for p in ps}
        groups.append({"params": ps, "lr": lr_of[src], "tb_layer": src, "module": name})
    rest = [p for p in model.parameters() if id(p) not in tuned_ids]  # TB:202-206
    groups.append({"params": rest, "lr": untuned_lr, "tb_layer": None, "module": None})
    return groups, len(groups) - 1


def reference_lrs(model: nn.Module, opts: Options, untuned_lr: float) -> dict[str, float]:
    """Per-parameter learning rates from the current weights, as ``step(optimizer, untuned_lr)`` sets them
    (TB:211-218): ``{parameter name: lr}``."""
    groups, _ = param_groups(model, opts, untuned_lr)
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    return {n: float(by_id[id(p)]) for n, p in model.named_parameters()}


def cosine_decay(init: float, epoch: int, total_epoch: int) -> float:
    """CFG:34-38."""
    epoch = min(epoch, total_epoch)
    return init * 0.5 * (1 + math.cos(np.pi * epoch / total_epoch))


def train(
    model: nn.Module,
    epochs: Sequence[Iterable],
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    opts: Options,
    *,
    lr: float,
    num_epochs: int,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    on_pass: Callable[[nn.Module], None] | None = None,
) -> list[dict[str, float]]:
    """MAIN:200-222 and 321-372 with SGD: groups from the initial weights at ``lr``; after each epoch ``e`` the
    untuned lr becomes ``cosine_decay(lr, e, num_epochs)`` and ``Tempbalance.step`` re-reads the spectra and
    rewrites every group. Returns, per optimizer update, ``{parameter name: lr}`` the update ran with.
    ``on_pass(model)`` is called right before each pass (to keep the weights it reads)."""
    if on_pass is not None:
        on_pass(model)
    groups, count = param_groups(model, opts, lr)
    opt = torch.optim.SGD([{"params": g["params"], "lr": g["lr"]} for g in groups], lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    index = {id(p): k for k, g in enumerate(opt.param_groups) for p in g["params"]}
    named = list(model.named_parameters())
    records = []
    for epoch, batches in enumerate(epochs):
        for batch in batches:
            loss = loss_fn(model, batch)
            opt.zero_grad()
            loss.backward()
            records.append({n: float(opt.param_groups[index[id(p)]]["lr"]) for n, p in named})
            opt.step()
        untuned = cosine_decay(lr, epoch, num_epochs)  # MAIN:367-368
        if on_pass is not None:
            on_pass(model)
        new, count = param_groups(model, opts, untuned)  # TB:211-218: the same order of groups every time
        for k, g in enumerate(opt.param_groups):
            g["lr"] = new[k]["lr"] if k <= count - 1 else untuned
    return records
