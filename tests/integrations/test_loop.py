"""Plain loop: auto_step runs tb.step() after every optimizer.step() (same result as calling it by hand)."""
from __future__ import annotations

import torch
from torch import nn

from tempbalance.integrations import auto_step
from tempbalance.training.scheduler import TempBalance


def _run(hooked: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    tb = TempBalance(model, opt, base_scheduler=sched, interval=2, min_eigs=8, backend="torch")
    handle = auto_step(tb) if hooked else None
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        model(torch.randn(4, 12, generator=g)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        if not hooked:
            tb.step()
    if handle is not None:
        handle.remove()
    return model, tb


def test_auto_step_equals_manual_step():
    m1, tb1 = _run(hooked=False)
    m2, tb2 = _run(hooked=True)
    assert tb2.step_count == 5 and tb1.get_last_lr() == tb2.get_last_lr()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
