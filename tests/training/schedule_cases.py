"""Base schedules the scheduler tests run under, and the check that every group's LR is base_lr(t) x factor.

The reference base_lr(t) comes from a *shadow* optimizer with the user's original (unsplit) param groups and the
same schedule, stepped alongside - independent of TempBalance's bookkeeping.
"""
from __future__ import annotations

import math

import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

S = torch.optim.lr_scheduler


def _lambdas(opt):
    # a different lambda per original group, so a wrongly remapped lr_lambdas list shows
    fns = [lambda t: min(1.0, (t + 1) / 3), lambda t: 0.8 ** t, lambda t: 1.0 / (1 + t)]
    return [fns[i % len(fns)] for i in range(len(opt.param_groups))]


SCHEDULES = {
    "lambda": lambda opt, T: S.LambdaLR(opt, _lambdas(opt)),
    "linear": lambda opt, T: S.LinearLR(opt, start_factor=0.25, total_iters=max(1, T // 2)),
    "cosine": lambda opt, T: S.CosineAnnealingLR(opt, T_max=T, eta_min=1e-5),
    "step": lambda opt, T: S.StepLR(opt, step_size=2, gamma=0.5),
    "sequential": lambda opt, T: S.SequentialLR(
        opt, [S.LinearLR(opt, start_factor=0.1, total_iters=2), S.CosineAnnealingLR(opt, T_max=T)], milestones=[2]),
    "onecycle": lambda opt, T: S.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=T + 2),
    "hf_linear": lambda opt, T: get_linear_schedule_with_warmup(opt, 2, T + 1),
    "hf_cosine": lambda opt, T: get_cosine_schedule_with_warmup(opt, 2, T + 1),
}


class Shadow:
    """Dummy-parameter AdamW with the original groups' lr/betas and the same schedule: the reference base_lr(t)."""

    def __init__(self, groups: list[dict], schedule: str, total: int):
        self.opt = torch.optim.AdamW(
            [{"params": [torch.zeros(1, requires_grad=True)], "lr": float(g["lr"]), "betas": g.get("betas", (0.9, 0.999))}
             for g in groups])
        self.sched = SCHEDULES[schedule](self.opt, total)

    def step(self) -> None:
        self.opt.step()
        self.sched.step()

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.opt.param_groups]


def source_of_groups(original_params: list[set[int]], opt) -> list[int]:
    """For every (possibly split) group of ``opt``, the index of the original group its params came from."""
    src = []
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        hits = [i for i, s in enumerate(original_params) if ids <= s]
        assert len(hits) == 1, "a group mixes parameters of several original groups (merged)"
        src.append(hits[0])
    return src


def assert_lrs(tb, shadow: Shadow, src: list[int], exact: bool = True) -> None:
    """Every group's lr == reference base_lr(t) x its unit's factor; untuned groups == base_lr(t) exactly."""
    ref = shadow.lrs()
    factors = tb.factors
    for j, (g, unit) in enumerate(zip(tb.optimizer.param_groups, tb.group_units)):
        f = 1.0 if unit is None else factors[unit]
        lr = float(g["lr"])
        if not exact:  # float32 tensor lr: the stored value is rounded
            assert math.isclose(tb.get_base_lr()[j], ref[src[j]], rel_tol=1e-6)
            assert math.isclose(lr, ref[src[j]] * f, rel_tol=1e-6), (j, lr, ref[src[j]], f)
            continue
        assert tb.get_base_lr()[j] == ref[src[j]]
        if unit is None:
            assert lr == ref[src[j]], f"untuned group {j}: lr {lr} != base {ref[src[j]]}"
        else:
            assert lr == ref[src[j]] * f, f"group {j} ({unit}): lr {lr} != {ref[src[j]]} x {f}"


def decay_groups(model, lr=1e-3) -> list[dict]:
    """The Trainer-style split: weight decay on matrices only, a different lr on the rest."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": 0.01, "lr": lr},
              {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0, "lr": lr * 2}]
    return [g for g in groups if g["params"]]


def run_checked(model, loss_fn, data, schedule: str, **tb_kwargs):
    """Train on ``data`` with AdamW over :func:`decay_groups` under ``schedule``, asserting after construction and
    after every step that each group's lr is base_lr(t) x factor. Returns the TempBalance."""
    from tempbalance.training.scheduler import TempBalance

    groups = decay_groups(model)
    original = [{id(p) for p in g["params"]} for g in groups]
    opt = torch.optim.AdamW(groups)
    shadow = Shadow(opt.param_groups, schedule, len(data))
    tb = TempBalance(model, opt, base_scheduler=SCHEDULES[schedule](opt, len(data)), **tb_kwargs)
    src = source_of_groups(original, opt)
    assert_lrs(tb, shadow, src)
    for batch in data:
        loss_fn(model, batch).backward()
        opt.step()
        opt.zero_grad()
        tb.step()
        shadow.step()
        assert_lrs(tb, shadow, src)
    return tb


def assert_sigmoid_factors(tb, s_lo=2.0, s_hi=1.0, tau=10.0) -> None:
    """Closed-form TBSigmoid over the tuned units (finite unit alphas); untuned units have factor 1."""
    import numpy as np

    tuned = [u for u, a in tb.unit_alphas.items() if math.isfinite(a)]
    a = np.array([tb.unit_alphas[u] for u in tuned])
    x = a - a.mean()
    phi = 1 / (1 + np.exp(-tau * x)) - 0.5
    np.testing.assert_allclose([tb.factors[u] for u in tuned], 10 ** np.where(x > 0, s_hi * phi, s_lo * phi),
                               rtol=1e-9)
    order = np.argsort(a)
    f = np.array([tb.factors[u] for u in tuned])
    assert np.all(np.diff(f[order]) >= 0)  # higher alpha -> larger LR
    assert all(tb.factors[u] == 1.0 for u in tb.units if u not in tuned)
