"""Oracle: TempBalance's language-model trainer (NeurIPS'23, PTB tensorised Transformer), YefanZhou/TempBalance at
9f0d9c7e86b70c6613ac3b44b5fd147873050823, ``language_modeling/BTD-Transformer/``: train_tb.py (T) and esd_utils.py
(E). The published configurations are ZihangHLiu/TempBalance-LM@843878f ``BTD-Transformer/scripts/txt/ptb_tb.txt``
(whose own ``train_tb.py`` calls a ``Tempbalance`` class with arguments it does not take: the runnable trainer is
this one).

Transcribed from reading it, not vendored: the estimator (``pl_fitting=median``), the LayerNorm -> Linear map, the
tuned layers (remove_last, then the eigenvalue-count threshold of the first pass), ``get_layer_temps``
(``tb_linear_map``; ``tbr`` = rank), the param groups, the initial assignment and the training step with
``tb_update=stage``. float64. The published rows use median, remove_last True, tb_linear_map, layernorm True,
lr_min_ratio 1.0, lr_slope 1.0, xmin_pos 2, Adam, a per-step cosine to ``max_step``, esd_interval 1 / 10 / 25.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

COMMIT = "9f0d9c7e86b70c6613ac3b44b5fd147873050823"


@dataclass
class Args:
    """The arguments the TB code reads (T:102-118 defaults; the published rows override most)."""

    xmin_pos: float = 2.0
    filter_zeros: str = "False"
    remove_last_layer: str = "True"
    remove_few_eigs_layer: str = "True"
    assign_func: str = "tb_linear_map"  # or "tbr" (rank)
    layernorm: str = "True"
    lr_min_ratio: float = 1.0
    lr_slope: float = 1.0
    eigs_thresh: int = 50
    esd_interval: int = 1
    tb_update: str = "stage"
    clip: float = 0.25


def esd(model: nn.Module, args: Args) -> list[dict]:
    """E:7-123 with pl_fitting="median", conv_norm 0.5: a row per nn.Conv2d / nn.Linear in ``named_modules``
    order with its alpha and eigenvalue count."""
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):  # E:41
            continue
        mat = m.weight.detach().clone().to(torch.float64)
        if isinstance(m, nn.Conv2d):  # E:43-45
            mat = torch.flatten(mat, start_dim=2) * math.sqrt(0.5)
            mat = mat.transpose(1, 2).transpose(0, 1)
        eigs = torch.sort(torch.square(torch.linalg.svdvals(mat).flatten())).values  # E:46-48
        nz = eigs[eigs > 1e-5] if args.filter_zeros == "True" else eigs  # E:52-61
        if len(nz) == 0:
            nz = eigs
        logs = torch.log(nz)
        i = int(len(nz) / args.xmin_pos)  # E:66
        n = float(len(nz) - i)
        alpha = 1 + n / (torch.sum(logs[i:]) - n * logs[i])  # E:70
        rows.append(dict(longname=name, alpha=float(alpha), eigs_num=len(eigs)))
    return rows


def ln_to_linear(model: nn.Module) -> dict[str, str]:
    """T:319-333: a LayerNorm follows the Linear right before it among Linear / LayerNorm modules."""
    names, types, out = [], [], {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            names.append(name)
            types.append("linear")
        if isinstance(m, nn.LayerNorm):
            if types[-1] == "linear":
                out[name] = names[-1]
            names.append(name)
            types.append("norm")
    return out


def few_eigs_layers(rows: list[dict], args: Args) -> list[str]:
    """T:359-365: from the first pass only (the later passes reuse the list, T:580-583)."""
    if args.remove_few_eigs_layer != "True":
        return []
    return [r["longname"] for r in rows if r["eigs_num"] < args.eigs_thresh]


def tuned_layers(rows: list[dict], few: list[str], args: Args) -> tuple[list[str], np.ndarray]:
    """T:354-367 / 575-586: drop the last row, then the layers with few eigenvalues."""
    if args.remove_last_layer == "True":
        rows = rows[:-1]
    rows = [r for r in rows if r["longname"] not in few]
    return [r["longname"] for r in rows], np.array([r["alpha"] for r in rows], dtype=np.float64)


def layer_temps(scores: np.ndarray, epoch_val: float, args: Args) -> list[float]:
    """E:125-146: ``tbr`` (rank) and ``tb_linear_map``."""
    n = len(scores)
    if args.assign_func == "tbr":
        idx = np.argsort(scores)
        temps = [epoch_val * (args.lr_min_ratio + args.lr_slope * i / n) for i in range(n)]
        return [value for _, value in sorted(list(zip(idx, temps)), key=itemgetter(0))]
    if args.assign_func == "tb_linear_map":
        lr_range = [args.lr_min_ratio * epoch_val, (args.lr_min_ratio + args.lr_slope) * epoch_val]
        return list(np.interp(scores, [min(scores), max(scores)], lr_range))
    raise NotImplementedError(args.assign_func)


def group_lrs(model: nn.Module, names: list[str], scores: np.ndarray, untuned: float,
              args: Args) -> list[tuple[str, float]]:
    """T:383-409 / 595-613: (module, lr) of every tuned group, in ``named_modules`` order: the tuned Linears and
    the LayerNorms that follow one."""
    lr_of = dict(zip(names, layer_temps(scores, untuned, args)))
    follows = ln_to_linear(model)
    out = []
    for name, m in model.named_modules():
        if name in lr_of:
            out.append((name, lr_of[name]))
        elif (args.layernorm == "True" and isinstance(m, nn.LayerNorm) and name in follows
              and follows[name] in lr_of):
            out.append((name, lr_of[follows[name]]))
    return out


def cosine_decay(init: float, epoch: int, total_epoch: int) -> float:
    """T:455-459."""
    epoch = min(epoch, total_epoch)
    return init * (0.5 * (1 + math.cos(np.pi * epoch / total_epoch)))


def train(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    args: Args,
    *,
    lr: float,
    max_step: int,
    on_esd: Callable[[int, nn.Module], None] | None = None,
) -> list[dict[str, float]]:
    """The trainer with TB on (T:336-452 set-up, T:499-627 a step), one step per batch. Returns, per optimizer
    update, ``{parameter name: lr}`` the update ran with. ``on_esd(train_step, model)`` is called before each
    pass (``train_step`` 0 at set-up)."""
    if on_esd is not None:
        on_esd(0, model)
    rows = esd(model, args)  # T:341-346
    few = few_eigs_layers(rows, args)
    names, scores = tuned_layers(rows, few, args)
    tuned = group_lrs(model, names, scores, lr, args)
    modules = dict(model.named_modules())
    tuned_ids: set[int] = set()
    all_params = []
    for name, _ in tuned:  # T:388-409: every group at lr, then the scheduled lrs written in (T:446-452)
        ps = list(modules[name].parameters())
        tuned_ids |= {id(p) for p in ps}
        all_params.append({"params": ps, "lr": lr})
    all_params.append({"params": [p for p in model.parameters() if id(p) not in tuned_ids], "lr": lr})  # T:412-413
    opt = torch.optim.Adam(all_params, lr=lr)  # T:431
    for k, g in enumerate(opt.param_groups):  # T:446-452
        g["lr"] = tuned[k][1] if k <= len(tuned) - 1 else lr
    index = {id(p): k for k, g in enumerate(opt.param_groups) for p in g["params"]}
    named = list(model.named_parameters())
    records = []
    train_step = 0
    for batch in batches:
        model.zero_grad()  # T:507
        loss_fn(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)  # T:534
        prev_lr = [g["lr"] for g in opt.param_groups]  # T:537-539
        records.append({n: float(opt.param_groups[index[id(p)]]["lr"]) for n, p in named})
        opt.step()
        train_step += 1
        untuned = cosine_decay(lr, train_step, max_step)  # T:549
        if train_step % args.esd_interval == 0:  # T:553-619
            if on_esd is not None:
                on_esd(train_step, model)
            names, scores = tuned_layers(esd(model, args), few, args)
            tuned = group_lrs(model, names, scores, untuned, args)
            for k, g in enumerate(opt.param_groups):
                g["lr"] = tuned[k][1] if k <= len(tuned) - 1 else untuned
        elif args.tb_update == "stage":  # T:622-625
            for k, g in enumerate(opt.param_groups):
                g["lr"] = prev_lr[k]
        else:
            raise NotImplementedError(args.tb_update)
    return records
