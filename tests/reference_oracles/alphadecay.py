"""Oracle: AlphaDecay (He et al., NeurIPS 2025, arXiv 2506.14562), hed-ucas/AlphaDecay at
23ce27ca318bdd3f1942fff95a9bc680b31245f4.

Transcribed from reading the reference, not vendored: the ``modulewise_AlphaDecay`` class of
``LLaMa-pretraining/WeightDecayUnbalance.py`` (WDU) - its ESD estimator (``pl_fitting="median"``, the published
setting), remove_first / remove_last, the eigenvalue threshold, every assign function (``tb_linear_map``,
``tb_sqrt``, ``tb_log2``, ``layerwise_sigmoid``, with their ``name.split('.')[2]`` groups and ``+1e-8`` terms),
the BatchNorm rule, the param groups and ``step`` - and the training loop of ``LLaMa-pretraining/torchrun_main.py``
(MAIN) with the cosine schedule of ``peft_pretraining/training_utils.py`` (TU). float64 (the reference runs float32
``svdvals`` on a GPU).

The published runs (``LLaMa-pretraining/scripts/Adam/ours/*.sh``, ``scripts/Adamw/ours/*/*.sh``) use
``--unbalancedWD_every 500 --esd_metric_for_tb alpha --assign_func tb_linear_map --wd_min_ratio 0.6666
--wd_max_ratio 3`` (Adam, weight decay 1e-5) or ``5`` (the others), and the defaults of MAIN:97-111 for the rest
(pl_fitting median, xmin_pos 2, remove_first / remove_last True, batchnorm True by name, filter_zeros False).
``get_layer_scheduled_wd`` (WDU:139-171) is never called (it would call ``get_layerWD`` and
``layerwise_assign_func``, which the class does not define); ``step``'s return value (WDU:182-195) is logging.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

COMMIT = "23ce27ca318bdd3f1942fff95a9bc680b31245f4"
ASSIGN_FUNCS = ("tb_linear_map", "tb_sqrt", "tb_log2", "layerwise_sigmoid")


@dataclass
class Options:
    """``modulewise_AlphaDecay.__init__`` arguments (WDU:17-37) as MAIN passes them (MAIN:336-349, the rest at
    MAIN:97-111's defaults). ``wd_min_ratio`` / ``wd_max_ratio``: the published Adam run at weight decay 1e-5
    (0.6666, 3); MAIN's own defaults are 0.666 and 3, the class's 0.5 and 1.5."""

    xmin_pos: float = 2.0
    conv_norm: float = 0.5
    filter_zeros: bool = False
    evals_thresh: float = 1e-5
    remove_first_layer: bool = True
    remove_last_layer: bool = True
    eigs_thresh: int = 50
    assign_func: str = "tb_linear_map"
    wd_min_ratio: float = 0.6666
    wd_max_ratio: float = 3.0
    batchnorm: bool = True
    sigmoid_alpha: float = 4.0  # WDU:35 (MAIN never sets it)


def esd(model: nn.Module, opts: Options) -> list[dict]:
    """WDU:197-310 with ``pl_fitting="median"``: one row per ``nn.Conv2d`` / ``nn.Linear`` in ``named_modules``
    order, with its alpha and eigenvalue count."""
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):  # WDU:217
            continue
        mat = m.weight.detach().clone().to(torch.float64)
        if isinstance(m, nn.Conv2d):  # WDU:219-221
            mat = torch.flatten(mat, start_dim=2) * math.sqrt(opts.conv_norm)
            mat = mat.transpose(1, 2).transpose(0, 1)
        eigs = torch.sort(torch.square(torch.linalg.svdvals(mat).flatten())).values  # WDU:222-224, ascending
        nz = eigs[eigs > opts.evals_thresh] if opts.filter_zeros else eigs  # WDU:237-246
        if len(nz) == 0:
            nz = eigs
        logs = torch.log(nz)  # WDU:248
        i = int(len(nz) / opts.xmin_pos)  # WDU:251
        n = float(len(nz) - i)
        alpha = 1 + n / (torch.sum(logs[i:]) - n * logs[i])  # WDU:255
        rows.append(dict(longname=name, alpha=float(alpha), eigs_num=len(eigs)))  # WDU:305-308
    return rows


def tuned_layers(model: nn.Module, opts: Options) -> tuple[list[str], np.ndarray]:
    """WDU:73-86: the modules AlphaDecay tunes (the first and last analysed dropped, then those with fewer than
    ``eigs_thresh`` eigenvalues) and their alphas (``esd_metric_for_tb="alpha"``)."""
    rows = esd(model, opts)
    if opts.remove_first_layer:  # WDU:76-78
        rows = rows[1:]
    if opts.remove_last_layer:  # WDU:79-81
        rows = rows[:-1]
    rows = [r for r in rows if r["eigs_num"] >= opts.eigs_thresh]  # WDU:84-86
    return [r["longname"] for r in rows], np.array([r["alpha"] for r in rows], dtype=np.float64)


def layer_wds(names: Sequence[str], metric_scores: np.ndarray, untuned_wd: float, opts: Options) -> np.ndarray:
    """``get_layer_temps`` (WDU:321-361), as written: the weight decay of every tuned module."""
    n = len(metric_scores)
    layer_metrics: dict[str, list[float]] = {}
    for idx, name in enumerate(names):  # WDU:327-332, for every assign function
        layer_metrics.setdefault(name.split(".")[2], []).append(metric_scores[idx])
    if opts.assign_func == "tb_linear_map":  # WDU:334-337
        wd_range = [opts.wd_min_ratio * untuned_wd, opts.wd_max_ratio * untuned_wd]
        score_range = [min(metric_scores), max(metric_scores)]
        return np.interp(metric_scores, score_range, wd_range)
    if opts.assign_func == "tb_sqrt":  # WDU:338-339
        return np.sqrt(metric_scores) / np.sum(np.sqrt(metric_scores) + 1e-8) * n * untuned_wd
    if opts.assign_func == "tb_log2":  # WDU:340-341
        return np.log2(metric_scores) / np.sum(np.log2(metric_scores) + 1e-8) * n * untuned_wd
    if opts.assign_func == "layerwise_sigmoid":  # WDU:342-358
        temps = np.zeros_like(metric_scores)
        for layer_name, layer_scores in layer_metrics.items():
            layer_scores = np.array(layer_scores)
            layer_mean = np.mean(layer_scores)
            layer_std = np.std(layer_scores) + 1e-8
            layer_norm = (layer_scores - layer_mean) / layer_std
            layer_theta = 2 / (1 + np.exp(-opts.sigmoid_alpha * layer_norm))
            layer_indices = [i for i, name in enumerate(names) if name.split(".")[2] == layer_name]
            for idx, theta in zip(layer_indices, layer_theta):
                temps[idx] = theta * untuned_wd
        return temps
    raise NotImplementedError(opts.assign_func)  # WDU:359-360


def _bn_to_conv(model: nn.Module, opts: Options) -> dict[str, str]:
    """WDU:60-70 (``batchnorm_type="name"``): a ``BatchNorm2d`` named ``...bnK`` follows the layer ``...convK``."""
    if not opts.batchnorm:
        return {}
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return {name: name.replace("bn", "conv") for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and name.replace("bn", "conv") in layers}


def param_groups(model: nn.Module, opts: Options, untuned_wd: float) -> tuple[list[dict], int]:
    """``build_optimizer_param_group(initialize=True)`` (WDU:72-137): one group per tuned module or BatchNorm (in
    ``named_modules`` order) at its scheduled weight decay, then one group of every other parameter at
    ``untuned_wd``; and the tuned count."""
    names, scores = tuned_layers(model, opts)
    wd_of = dict(zip(names, layer_wds(names, scores, untuned_wd, opts).tolist()))  # WDU:88-94
    bn = _bn_to_conv(model, opts)
    groups, tuned_ids = [], set()
    for name, m in model.named_modules():
        if name in wd_of:  # WDU:102-112
            src = name
        elif opts.batchnorm and isinstance(m, nn.BatchNorm2d) and name in bn and bn[name] in wd_of:  # WDU:114-128
            src = bn[name]
        else:
            continue
        ps = list(m.parameters())
        tuned_ids |= {id(p) for p in ps}
        groups.append({"params": ps, "weight_decay": wd_of[src]})
    rest = [p for p in model.parameters() if id(p) not in tuned_ids]  # WDU:130-134
    groups.append({"params": rest, "weight_decay": untuned_wd})
    return groups, len(groups) - 1


def step(optimizer: torch.optim.Optimizer, model: nn.Module, opts: Options, untuned_wd: float) -> None:
    """``step`` (WDU:173-180): the groups rebuilt from the current weights (``initialize=False``) and written by
    position - the first ``layer_count`` groups their module's weight decay, the rest ``untuned_wd``."""
    groups, count = param_groups(model, opts, untuned_wd)
    for index, g in enumerate(optimizer.param_groups):
        g["weight_decay"] = groups[index]["weight_decay"] if index <= count - 1 else untuned_wd


def reference_wds(model: nn.Module, opts: Options, untuned_wd: float) -> dict[str, float]:
    """Per-parameter weight decays from the current weights, as ``step`` sets them: ``{parameter name: wd}``."""
    groups, _ = param_groups(model, opts, untuned_wd)
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    return {n: float(by_id[id(p)]) for n, p in model.named_parameters()}


def cosine_with_min_lr(num_warmup_steps: int, num_training_steps: int, min_lr_ratio: float = 0.1
                       ) -> Callable[[int], float]:
    """``get_scheculer(scheduler_type="cosine")`` (TU:31-38, 56-70, 128-143) with ``cycle_length =
    num_training_steps``: the LambdaLR factor of step t."""
    cycle_length = num_training_steps

    def factor(current_step: int) -> float:
        cycle_step = current_step % cycle_length
        if cycle_step < num_warmup_steps:
            if current_step != cycle_step and cycle_step < 2:
                return 1e-7
            return float(cycle_step) / float(max(1, num_warmup_steps))
        progress = float(cycle_step - num_warmup_steps) / float(max(1, cycle_length - num_warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train(
    model: nn.Module,
    batches: Sequence[object],
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    opts: Options,
    *,
    optimizer: str,
    lr: float,
    weight_decay: float,
    every: int,
    schedule: Callable[[int], float],
    on_pass: Callable[[nn.Module], None] | None = None,
) -> list[dict[str, dict[str, float]]]:
    """MAIN:334-431 with one optimizer step per batch: the groups from the initial weights (MAIN:350), Adam
    (coupled L2, MAIN:359) or AdamW (MAIN:361, ``configure_optimizers`` with ``determined=True``: the groups as
    built), the schedule as a LambdaLR (MAIN:368-373); before update ``update_step`` with ``(update_step + 1) %
    every == 0`` ``step`` re-reads the spectra (MAIN:418-424), then ``optimizer.step()``, ``scheduler.step()``.
    Returns, per update, ``{"lr": {name: lr}, "weight_decay": {name: wd}}`` as the update ran.
    ``on_pass(model)`` is called right before each pass."""
    if on_pass is not None:
        on_pass(model)
    groups, _ = param_groups(model, opts, weight_decay)
    if optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr)
    else:
        raise ValueError(optimizer)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    index = {id(p): k for k, g in enumerate(opt.param_groups) for p in g["params"]}
    named = list(model.named_parameters())
    records = []
    for update_step, batch in enumerate(batches):
        loss_fn(model, batch).backward()
        if (update_step + 1) % every == 0:  # MAIN:421
            if on_pass is not None:
                on_pass(model)
            step(opt, model, opts, weight_decay)
        records.append({key: {n: float(opt.param_groups[index[id(p)]][key]) for n, p in named}
                        for key in ("lr", "weight_decay")})
        opt.step()
        sched.step()
        opt.zero_grad()
    return records
