"""Oracle: ModelBalancing (EMNLP'24), ZihangHLiu/ModelBalancing at 9970cea5a7b7c7ddc65424f9a75ce6016954c3ae.

Transcribed from reading the reference, not vendored: the ESD estimator, the block / layer learning rates of
``temp_balance_lr="tb_layer_blocks"``, which parameter takes which layer's rate, ``remove_last_layer``, the
analysis interval and the order of a training step. Everything in float64 (the reference ran float32 on a GPU).
File:line citations are in that commit, with

    ESD = transformers/src/transformers/utils/esd_utils.py
    TR  = transformers/src/transformers/trainer.py
    TA  = transformers/src/transformers/training_args.py
    PTU = transformers/src/transformers/trainer_pt_utils.py

The published GLUE runs (bash_scripts/run_glue_block_tb_sigmoid_roberta_base_ratio.sh with
config_files/configs_sigmoid.txt) set temp_balance_lr=tb_layer_blocks, schedule_func=sigmoid, tb_unit=block,
tb_lr_normalize=False, xmin_pos=1.5, fix_fingers=xmin_mid, remove_last_layer=True, after_warm=False.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from operator import itemgetter
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

COMMIT = "9970cea5a7b7c7ddc65424f9a75ce6016954c3ae"

# ESD:696 and TR:2125: a name is in block N when it has a ".<N>." component; the first one counts.
_BLOCK_RE = re.compile(r"(.*?)\.(\d+)\.(.*)")


@dataclass
class Args:
    """The TrainingArguments the TB code reads, with their defaults (TA:1327-1501)."""

    tb_unit: str = "block"              # TA:1496
    schedule_func: str = "linear_map"   # TA:1378 ("linear_map" | "rank" | "sigmoid")
    sigmoid_min: float = 2.0            # TA:1385, the factor's scale below the mean alpha
    sigmoid_max: float = 1.0            # TA:1389, ... above it
    exp_temp: float = 10.0              # TA:1393, the sigmoid's temperature
    tb_lr_normalize: str = "False"      # TA:1397
    lr_min_ratio: float = 0.5           # TA:1461
    lr_slope: float = 1.0               # TA:1468
    xmin_pos: float = 2.0               # TA:1447
    filter_zeros: str = "False"         # TA:1454
    remove_last_layer: str = "False"    # TA:1419
    esd_interval: int = 100             # TA:1426
    eigs_num_thresh: int = 50           # ESD:18 (net_esd_estimator's default; the trainer does not pass it)


# ----------------------------------------------------------------------------------------------------------------
# The estimator (ESD:11-165, as called at TR:1987-1992: EVALS_THRESH 1e-5, xmin_mid, conv_norm 0.5)


def esd(model: nn.Module, args: Args) -> list[tuple[str, float]]:
    """(module name, alpha) of every nn.Linear / nn.Conv2d with at least ``eigs_num_thresh`` eigenvalues, in
    ``named_modules`` order."""
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):  # ESD:51
            continue
        mat = m.weight.detach().clone().to(torch.float64)
        if isinstance(m, nn.Conv2d):  # ESD:56-58: (out, in, kh, kw) -> (kh*kw, out, in), scaled by sqrt(0.5)
            mat = torch.flatten(mat, start_dim=2) * math.sqrt(0.5)
            mat = mat.transpose(1, 2).transpose(0, 1)
        eigs = torch.sort(torch.square(torch.linalg.svdvals(mat).flatten())).values  # ESD:61-63
        if len(eigs) < args.eigs_num_thresh:  # ESD:67-68: not listed at all
            continue
        if args.filter_zeros == "True":  # ESD:95-103
            nz = eigs[eigs > 1e-5]
            if len(nz) == 0:
                nz = eigs
        else:
            nz = eigs
        n_all = len(nz)
        logs = torch.log(nz)
        i = int(len(nz) / args.xmin_pos)  # ESD:113
        n = float(n_all - i)
        alpha = 1 + n / (torch.sum(logs[i:]) - n * logs[i])  # ESD:117
        rows.append((name, float(alpha)))
    return rows


def layer_stats(model: nn.Module, args: Args) -> tuple[list[str], np.ndarray]:
    """The analysed layers and their alphas as the trainer keeps them (TR:2014-2024): ``remove_last_layer``
    drops the last listed row."""
    rows = esd(model, args)
    if args.remove_last_layer == "True":  # TR:2018-2022
        rows = rows[:-1]
    return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------
# get_layer_temps(temp_balance="tb_layer_blocks", hyperparam="lr") (ESD:687-791)


def _sigmoid_stage(x: float, args: Args) -> float:  # ESD:741-745
    lo_or_hi = args.sigmoid_max if x > 0 else args.sigmoid_min
    return lo_or_hi * (1 / (1 + np.exp(-1 * args.exp_temp * x)) - 0.5)


def scheduled_lrs(names: list[str], alphas: np.ndarray, args: Args, base_lr: float) -> np.ndarray:
    """The learning rate of every analysed layer (one per row of ``names``)."""
    blocks: dict[int, list[int]] = {}  # block number -> row indices, in first-seen order (ESD:690-708)
    in_block: list[int] = []
    for row, layer in enumerate(names):
        match = _BLOCK_RE.search(layer)
        if match:
            in_block.append(row)
            blocks.setdefault(int(match.group(2)), []).append(row)
    means = {b: float(np.mean([alphas[r] for r in rows])) for b, rows in blocks.items()}  # ESD:712-713
    mean_list = list(means.values())
    lo, hi = args.lr_min_ratio * base_lr, (args.lr_min_ratio + args.lr_slope) * base_lr
    if args.schedule_func == "linear_map":  # ESD:715-725
        block_vals = np.interp(mean_list, [min(mean_list), max(mean_list)], [lo, hi])
    elif args.schedule_func == "rank":  # ESD:726-736
        order = np.argsort(mean_list)
        temps = [base_lr * (args.lr_min_ratio + args.lr_slope * i / len(mean_list)) for i in range(len(mean_list))]
        block_vals = [value for _, value in sorted(zip(order, temps), key=itemgetter(0))]
    elif args.schedule_func == "sigmoid":  # ESD:738-751
        diffs = np.array(mean_list) - np.mean(mean_list)
        block_vals = base_lr * 10 ** np.array([_sigmoid_stage(x, args) for x in diffs])
    else:
        raise NotImplementedError(args.schedule_func)
    block_lr = dict(zip(means.keys(), block_vals))  # ESD:753-754

    out = np.zeros(len(names))
    if args.tb_unit == "block":  # ESD:756-768
        for b, rows in blocks.items():
            out[rows] = block_lr[b]
    elif args.tb_unit == "layer":  # ESD:770-786: within a block, a linear map of the layer's alpha
        for b, rows in blocks.items():
            own = [alphas[r] for r in rows]
            rng = [args.lr_min_ratio * block_lr[b], (args.lr_min_ratio + args.lr_slope) * block_lr[b]]
            out[rows] = np.interp(own, [min(own), max(own)], rng)
    else:
        raise NotImplementedError(args.tb_unit)
    for row in range(len(names)):
        if row not in in_block:
            out[row] = base_lr
    if args.tb_lr_normalize == "True":  # ESD:765-766 / 788-789: over every analysed row
        out = np.array([lr / np.mean(out) * base_lr for lr in out])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Which parameter takes which layer's learning rate (TR:2120-2148)


def _parameter_names_outside_layernorm(module: nn.Module) -> list[str]:  # PTU:1063-1076 with [nn.LayerNorm]
    names = []
    for child_name, child in module.named_children():
        if not isinstance(child, nn.LayerNorm):
            names += [f"{child_name}.{n}" for n in _parameter_names_outside_layernorm(child)]
    names += list(module._parameters.keys())
    return names


def decay_parameter_names(model: nn.Module) -> list[str]:
    """TR:963-972: parameters outside LayerNorms whose name has no "bias"."""
    return [n for n in _parameter_names_outside_layernorm(model) if "bias" not in n]


def param_lrs(model: nn.Module, names: list[str], lrs: np.ndarray, base_lr: float) -> dict[str, float]:
    """The learning rate the reference writes into each trainable parameter's group (one group per parameter,
    TR:985-991), as ``{parameter name: lr}``."""
    decay = set(decay_parameter_names(model))
    out: dict[str, float] = {}
    last_weight_lr: dict[int, float] = {}  # TR:2120-2123, block number -> lr of its last decay parameter
    for pname, p in model.named_parameters():
        if not p.requires_grad:  # TR:989: only trainable parameters have groups
            continue
        match = _BLOCK_RE.search(pname)
        prefixed = [i for i, layer in enumerate(names) if pname.startswith(layer)]
        if match:
            block = int(match.group(2))
            if pname in decay:  # TR:2128-2133 (IndexError in the reference when no layer is a prefix)
                out[pname] = float(lrs[prefixed[0]])
                last_weight_lr[block] = out[pname]
            elif prefixed:  # TR:2135-2138: a bias of an analysed layer
                out[pname] = float(lrs[prefixed[0]])
            else:  # TR:2139-2140: a norm takes the last weight's lr in its block (KeyError if none)
                out[pname] = last_weight_lr[block]
        else:  # TR:2142-2144: embeddings, pooler, classifier
            out[pname] = float(base_lr)
    return out


def reference_lrs(model: nn.Module, args: Args, base_lr: float) -> dict[str, float]:
    """Per-parameter learning rates from the model's current weights: ESD, removal, mapping, assignment."""
    names, alphas = layer_stats(model, args)
    return param_lrs(model, names, scheduled_lrs(names, alphas, args, base_lr), base_lr)


# ----------------------------------------------------------------------------------------------------------------
# When (TR:1680-1684, 1911-2222)


def esd_interval(len_dataloader: int, args: Args, grad_accum: int = 1, max_steps: int | None = None) -> int:
    """TR:1680-1684."""
    if grad_accum == 1:
        return min(args.esd_interval, max(1, len_dataloader // 10))
    return min(args.esd_interval, max_steps // 20)


def linear_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The factor of HF's "linear" schedule (TA:749-751 lr_scheduler_type default) at scheduler step ``s``."""
    def f(s: int) -> float:
        if s < warmup_steps:
            return s / max(1, warmup_steps)
        return max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))
    return f


def train(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    args: Args,
    *,
    lr: float,
    weight_decay: float,
    schedule: Callable[[int], float],
    interval: int,
    max_grad_norm: float = 1.0,
    on_esd: Callable[[int, nn.Module], None] | None = None,
) -> list[dict]:
    """The Trainer's loop with TB on (TR:1911-2222; no gradient accumulation), from ``batches`` one step each.

    Per optimizer update ``t``, a record: ``lrs`` (parameter name -> the lr the update ran with) and, when the
    spectra were read at the top of this step, ``esd_names`` / ``esd_alphas``. Order of a step: ESD when
    ``global_step % interval == 0`` (TR:1973), forward/backward (TR:2030), clip (TR:2072), ``optimizer.step()``
    (TR:2089), ``lr_scheduler.step()`` (TR:2094), then the TB assignment from the latest ESD with the
    scheduler's new lr of group 0 as the untuned lr (TR:2096-2148), ``global_step += 1`` (TR:2222).
    ``on_esd(global_step, model)`` is called right before each ESD (to keep the weights it reads).
    """
    decay = set(decay_parameter_names(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p], "lr": lr, "weight_decay": weight_decay if n in decay else 0.0} for n, p in named]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)  # TR:985-995, TA adamw_torch default
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    records: list[dict] = []
    stats = None
    global_step = 0
    for batch in batches:
        record: dict = {}
        if global_step % interval == 0:  # TR:1973
            if on_esd is not None:
                on_esd(global_step, model)
            stats = layer_stats(model, args)
            record["esd_names"], record["esd_alphas"] = stats
        loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        record["lrs"] = {n: float(g["lr"]) for (n, _), g in zip(named, opt.param_groups)}
        opt.step()
        sched.step()
        if stats is not None:  # TR:2096-2148
            untuned = opt.param_groups[0]["lr"]
            names, alphas = stats
            lrs = param_lrs(model, names, scheduled_lrs(names, alphas, args, untuned), untuned)
            for (n, _), g in zip(named, opt.param_groups):
                g["lr"] = lrs[n]
        opt.zero_grad()
        global_step += 1
        records.append(record)
    return records
