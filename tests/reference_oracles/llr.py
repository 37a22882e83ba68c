"""Oracle: LLR, "One LR Doesn't Fit All" (pretraining LLaMA with AdamW / Muon), hed-ucas/Layer-wise-Learning-Rate at
bbd0dcf86af80b8843866a9a041086a37de35897: ``olmo/LRUnbalance.py`` (LU), the LLR section of ``olmo/train.py`` (TR),
``olmo/optim.py``'s ``build_optimizer_LLR`` (OP), ``olmo/config.py``'s ``LLRConfig`` / ``OptimizerConfig`` (CF)
and ``galore_utils/training_utils.py`` (GU, the module LU and TR import).

Transcribed from reading it, not vendored, and run the way the reference runs it: the estimator (``pl_fitting=
median``), the listed layers and their stats (the embedding and LM head by name, eigenvalue count and alpha of the
list's largest, removals, the 50-eigenvalue threshold), ``get_layer_temps`` (``tb_linear_map``), the AdamW and Muon
rules for the embedding and head, the param groups with their ``initial_lr``, and the trainer's loop: the base
scheduler stepped before each update, a refresh at update 1 and every ``unbalancedlr_every``-th update while
``update <= stop_at * LLR_ratio`` (TR:1070-1084), each refresh rewriting ``initial_lr`` and computing the targets
on a temporary optimizer and scheduler (LU:264-319), the ``linear_to_target`` LambdaLR (GU:56-131), the flag that
ends a transition and rebuilds the base scheduler (TR:1086-1105) - with torch's own ``LambdaLR`` for every scheduler,
as the reference. float64 (the reference: float32 ``svdvals``).

The learning rates live in one param-group list, as in the reference's single optimizer (a "shadow" SGD over
placeholder tensors holds them and runs the schedulers); before each update every real optimizer's group gets its
shadow group's lr. With Muon the reference's optimizer would be one Muon-with-AdamW; here the groups of the hidden
matrices are a ``torch.optim.Muon``'s and the others an AdamW's. The reference cannot run Muon at this commit
(``build_optimizer_LLR`` has no Muon branch, OP:1040-1051, and LU:199 reads ``args.embed_lr``, which TrainConfig
lacks): the Muon rules are transcribed as written, with ``args.optimizer.embed_lr`` for LU:199.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

COMMIT = "bbd0dcf86af80b8843866a9a041086a37de35897"


@dataclass
class Args:
    """What the LLR code reads: LLRConfig (CF:644-663), OptimizerConfig (CF:591-600), the scheduler (CF:683-688) and
    ``stop_at`` / ``LLR_ratio``; LU's constructor defaults (LU:42-66) for the rest."""

    lr_min_ratio: float = 0.666
    lr_max_ratio: float = 3.0
    unbalancedlr_every: int = 10
    linear_steps: int = 10
    alpha_positively_with_lr: bool = True
    remove_first_layer: bool = False
    remove_last_layer: bool = False
    xmin_pos: float = 2.0
    eigs_thresh: int = 50  # LU:56, never passed by OP:1012-1028
    optimizer_name: str = "adamw"
    learning_rate: float = 1e-4
    muon_lr: float = 1e-3
    embed_lr: float = -1.0
    embed_name: str = "embed"
    head_name: str = "head"
    stop_at: int = 100
    LLR_ratio: float = 1.0
    t_warmup: int = 10
    alpha_f: float = 0.1

    @property
    def muon(self) -> bool:
        return self.optimizer_name.lower() == "muon"


def cosine_with_warmup(current_step: int, *, num_warmup_steps: int, cycle_length: int, min_lr_ratio: float) -> float:
    """GU:206-221 (``get_scheculer("cosine_with_warmup")`` with ``cycle_length = num_training_steps``)."""
    cycle_step = current_step % cycle_length
    if cycle_step < num_warmup_steps:
        if current_step != cycle_step and cycle_step < 2:
            return 1e-7
        return float(cycle_step) / float(max(1, num_warmup_steps))
    progress = float(cycle_step - num_warmup_steps) / float(max(1, cycle_length - num_warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule(args: Args) -> Callable[[int], float]:
    return partial(cosine_with_warmup, num_warmup_steps=args.t_warmup, cycle_length=args.stop_at,
                   min_lr_ratio=args.alpha_f)


def base_scheduler(optimizer, args: Args, last_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``get_scheculer(scheduler_type="cosine_with_warmup", num_training_steps=stop_at, ...)`` (GU:35-43)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(args), last_epoch)


def _to_target(current_step, *, start_step, num_steps, lr_before_step, target_lr):
    """GU:110-131."""
    a = lr_before_step / target_lr
    return a + (1 - a) / num_steps * (current_step - start_step)


def esd(model: nn.Module, args: Args) -> list[dict]:
    """LU:442-599: a row per ``nn.Conv2d`` / ``nn.Linear`` / ``nn.Embedding`` in ``named_modules`` order; the
    embedding and head rows (by name, LU:575) get alpha and eigs_num -1."""
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):  # LU:475
            continue
        mat = m.weight.detach().clone().to(torch.float64)
        if isinstance(m, nn.Conv2d):  # LU:495-497
            mat = torch.flatten(mat, start_dim=2) * math.sqrt(0.5)
            mat = mat.transpose(1, 2).transpose(0, 1)
        eigs = torch.sort(torch.square(torch.linalg.svdvals(mat).flatten())).values  # LU:498-499
        logs = torch.log(eigs)  # filter_zeros False (CF:659)
        i = int(len(eigs) / args.xmin_pos)  # LU:524-529
        n = float(len(eigs) - i)
        alpha = float(1 + n / (torch.sum(logs[i:]) - n * logs[i]))
        edge = args.embed_name in name or args.head_name in name
        rows.append(dict(longname=name, alpha=-1.0 if edge else alpha, eigs_num=-1 if edge else len(eigs)))
    return rows


def layer_stats(model: nn.Module, args: Args) -> list[dict]:
    """LU:172-185: the edge rows take the list's largest alpha and eigenvalue count, then the first / last row is
    dropped on request, then the rows with fewer than ``eigs_thresh`` eigenvalues."""
    rows = esd(model, args)
    top_alpha, top_eigs = max(r["alpha"] for r in rows), max(r["eigs_num"] for r in rows)
    for r in rows:
        if r["eigs_num"] == -1:
            r["alpha"], r["eigs_num"] = top_alpha, top_eigs
    if args.remove_first_layer:
        rows = rows[1:]
    if args.remove_last_layer:
        rows = rows[:-1]
    return [r for r in rows if r["eigs_num"] >= args.eigs_thresh]


def scheduled_lrs(rows: list[dict], untuned_lr: float, args: Args) -> list[float]:
    """LU:187-204 with ``get_layer_temps`` (LU:610-634, 700-703: ``tb_linear_map``)."""
    scores = np.array([r["alpha"] for r in rows], dtype=np.float64)
    lr_range = [args.lr_min_ratio * untuned_lr, args.lr_max_ratio * untuned_lr]
    if not args.alpha_positively_with_lr:
        lr_range = lr_range[::-1]
    temps = list(np.interp(scores, [min(scores), max(scores)], lr_range))
    if args.embed_lr > 0:  # LU:192-194: the first and last rows
        temps[0] = args.embed_lr
        temps[-1] = args.embed_lr
    if args.muon:  # LU:198-204 (LU:199 reads args.embed_lr: the optimizer's, see the module docstring)
        for k, r in enumerate(rows):
            if args.embed_name in r["longname"] or args.head_name in r["longname"]:
                temps[k] = args.embed_lr if args.embed_lr > 0 else args.learning_rate * args.lr_max_ratio
    return [float(t) for t in temps]


def param_groups(model: nn.Module, rows: list[dict]) -> list[list[str]]:
    """LU:206-259 with ``initialize=True``: the parameter names of every group, the listed rows' in
    ``named_modules`` order, then the untuned group (no norms follow a layer in a LLaMA: no BatchNorm2d, and
    ``layernorm`` is off, LU:63)."""
    tuned = {r["longname"] for r in rows}
    names = {id(p): n for n, p in model.named_parameters()}
    groups, taken = [], set()
    for name, module in model.named_modules():
        if name in tuned:
            ps = list(module.parameters())
            taken |= {id(p) for p in ps}
            groups.append([names[id(p)] for p in ps])
    groups.append([n for n, p in model.named_parameters() if id(p) not in taken])
    return groups


def initial_lrs(rows: list[dict], untuned_lr: float, args: Args) -> list[float]:
    """LU:214-219, 256-259: each row's group starts at ``untuned_lr`` (Muon's embedding and head at
    ``learning_rate``), the untuned group at ``learning_rate``."""
    out = []
    for r in rows:
        edge = args.embed_name in r["longname"] or args.head_name in r["longname"]
        out.append(args.learning_rate if args.muon and edge else untuned_lr)
    return out + [args.learning_rate]


def llr_step(model: nn.Module, shadow: torch.optim.Optimizer, untuned_lr: float, step_count: int,
             args: Args) -> tuple[list[float], torch.optim.lr_scheduler.LambdaLR]:
    """LU:321-361 (``step``) with LU:264-319 (``calculate_lr_after_steps``): returns ``opt_params_groups`` and the
    ``linear_to_target`` scheduler."""
    rows = layer_stats(model, args)
    scheduled = scheduled_lrs(rows, untuned_lr, args)  # initialize=False: the rows' lrs (LU:220-222)
    layer_count = len(rows)
    for index, g in enumerate(shadow.param_groups):  # LU:328-332
        g["initial_lr"] = scheduled[index] if index <= layer_count - 1 else args.learning_rate
    lr_before = [g["lr"] for g in shadow.param_groups]  # LU:334
    # LU:264-291: a copy of the groups, the base scheduler from step_count - 1, stepped num_linear_steps times
    temp = type(shadow)([{**{k: v for k, v in g.items() if k != "params"}, "params": g["params"]}
                         for g in shadow.param_groups], **shadow.defaults)
    temp_scheduler = base_scheduler(temp, args, last_epoch=step_count - 1)
    for _ in range(args.linear_steps - 1 if step_count == 1 else args.linear_steps):
        temp_scheduler.step()
    lr_after = [g["lr"] for g in temp.param_groups]
    target = lr_after[:layer_count]  # LU:293-317: group k is row k (one group per row here)
    target += [min(target)] * (len(shadow.param_groups) - len(target))  # LU:338-339
    for index, g in enumerate(shadow.param_groups):  # LU:343-344
        g["initial_lr"] = target[index]
    num_steps = args.linear_steps if step_count == 1 else args.linear_steps + 1  # LU:347-350
    lambdas = [partial(_to_target, start_step=step_count, num_steps=num_steps, lr_before_step=lr_before[i],
                       target_lr=target[i]) for i in range(len(shadow.param_groups))]
    linear = torch.optim.lr_scheduler.LambdaLR(shadow, lambdas, last_epoch=step_count - 1)  # LU:351-359
    return scheduled, linear


def train(*a, **k) -> list[dict[str, float]]:
    """:func:`_train`, without torch's warning that the scheduler steps before the optimizer: the reference does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler", category=UserWarning)
        return _train(*a, **k)


def _train(model: nn.Module, batches: Iterable, loss_fn: Callable[[nn.Module, object], torch.Tensor], args: Args,
          *, make_optimizers: Callable[[list[dict]], list[torch.optim.Optimizer]]) -> list[dict[str, float]]:
    """The reference trainer (OP:1005-1059 set-up, TR:1023-1141 a step), one update per batch. ``make_optimizers``
    builds the real optimizers from ``[{"params": [...], "names": [...], "muon": bool}]`` - one entry per
    reference group, in order - and returns them: the Muon one (if any) first with the entries marked ``muon``,
    then one with the others, one group per entry, in order. Returns, per update, ``{parameter name: lr}`` the update ran with."""
    untuned_lr = args.muon_lr if args.muon else args.learning_rate  # OP:1029-1032, TR:1064-1068
    rows = layer_stats(model, args)
    names = param_groups(model, rows)
    by_name = dict(model.named_parameters())
    edge = [args.embed_name in r["longname"] or args.head_name in r["longname"] for r in rows] + [True]
    entries = [dict(params=[by_name[n] for n in ns], names=ns, muon=args.muon and not e)
               for ns, e in zip(names, edge)]
    optimizers = make_optimizers(entries)
    real = [g for opt in optimizers for g in opt.param_groups]
    order = [k for k, e in enumerate(entries) if e["muon"]] + [k for k, e in enumerate(entries) if not e["muon"]]
    assert len(real) == len(entries), "one real group per reference group"
    real_of = dict(zip(order, real))
    # the reference's single optimizer, as far as learning rates go
    placeholders = [torch.zeros(1, requires_grad=True) for _ in entries]
    shadow = torch.optim.SGD([{"params": [p], "initial_lr": lr} for p, lr in
                              zip(placeholders, initial_lrs(rows, untuned_lr, args))], lr=1e-3)
    scheduler = base_scheduler(shadow, args, last_epoch=-1)  # train_llama.py:265-271
    linear = None
    opt_params_groups: list[float] = []
    layer_count = len(rows)
    performed, init_log = False, True
    global_step = 0
    every, steps = args.unbalancedlr_every, args.linear_steps
    records = []
    for batch in batches:
        global_step += 1  # TR:1583
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        if global_step <= args.stop_at * args.LLR_ratio:  # TR:1070
            if global_step % every == 0 or init_log:  # TR:1079 (num_grad_steps 0: TR:1072 never holds)
                opt_params_groups, linear = llr_step(model, shadow, untuned_lr, global_step, args)
                init_log, performed = False, True
            if performed:  # TR:1086-1105
                if global_step % every > min(steps, every):
                    linear = None
                    for index, g in enumerate(shadow.param_groups):
                        g["initial_lr"] = opt_params_groups[index] if index <= layer_count - 1 else args.learning_rate
                    scheduler = base_scheduler(shadow, args, last_epoch=global_step - 2)
                    performed = False
        else:
            linear = None  # TR:1106-1107
        if linear is not None:  # TR:1130-1138
            linear.step()
        else:
            scheduler.step()
        for k, g in enumerate(shadow.param_groups):
            real_of[k]["lr"] = g["lr"]
        records.append({n: float(real_of[k]["lr"]) for k, e in enumerate(entries) for n in e["names"]})
        for opt in optimizers:  # TR:1141
            opt.step()
    order_names = [n for n, _ in model.named_parameters()]
    return [{n: r[n] for n in order_names} for r in records]
