"""accelerate (one process): prepare() takes TempBalance like any scheduler (it is a torch LRScheduler), and the
run - gradient accumulation included - has the same LRs and weights as a plain loop."""
from __future__ import annotations

import pytest
import torch

from tempbalance.training.scheduler import TempBalance
from test_scheduler import KW, batches, make_model

accelerate = pytest.importorskip("accelerate")


@pytest.fixture(autouse=True)
def fresh_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def build():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))
    return model, opt, TempBalance(model, opt, base_scheduler=sched, interval=2, **KW)


def loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def plain_run(data, accumulate: int = 1):
    model, opt, tb = build()
    lrs = []
    for k in range(0, len(data), accumulate):
        for b in data[k:k + accumulate]:
            (loss(model, b) / accumulate).backward()
        opt.step()
        opt.zero_grad()
        tb.step()
        lrs.append(tb.get_last_lr())
    return model, tb, lrs


@pytest.mark.parametrize("accumulate", [1, 2])
def test_prepare_keeps_tempbalance_working(accumulate):
    data = batches(8)
    ref_model, ref_tb, ref_lrs = plain_run(data, accumulate)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    model, opt, tb = build()
    model, opt, sched = accelerator.prepare(model, opt, tb)
    lrs = []
    for b in data:
        with accelerator.accumulate(model):
            accelerator.backward(loss(model, b))
            opt.step()
            sched.step()  # accelerate steps TempBalance only after real optimizer updates
            opt.zero_grad()
        if accelerator.sync_gradients:
            lrs.append(sched.get_last_lr())
    assert tb.step_count == ref_tb.step_count == len(data) // accumulate
    assert lrs == ref_lrs and tb.factors == ref_tb.factors and len(tb.history) == len(ref_tb.history)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q)


def test_prepare_with_muon_and_adamw_drives_both_from_one_pass():
    """accelerate.prepare(model, muon, adamw, tb): both prepared optimizers keep TempBalance's per-unit lrs, equal to
    a plain loop's at every update."""
    from test_knobs import KW as KNOB_KW, batches as knob_batches, model as knob_model, optimizers, schedulers

    data = knob_batches(6)

    def step(m, opts, x, y, backward=None):
        loss = torch.nn.functional.mse_loss(m(x), y)
        (backward or (lambda v: v.backward()))(loss)
        for o in opts:
            o.step()
            o.zero_grad()

    m = knob_model()
    opts = optimizers(m)
    tb = TempBalance(m, opts, base_scheduler=schedulers(opts), interval=2, **KNOB_KW)
    want = []
    for x, y in data:
        step(m, opts, x, y)
        tb.step()
        want.append(tb.get_last_lr())

    accelerator = accelerate.Accelerator(cpu=True)
    m2 = knob_model()
    raw = optimizers(m2)
    tb2 = TempBalance(m2, raw, base_scheduler=schedulers(raw), interval=2, **KNOB_KW)
    m2, muon, adamw, sched = accelerator.prepare(m2, raw[0], raw[1], tb2)
    got = []
    for x, y in data:
        step(m2, [muon, adamw], x, y, accelerator.backward)
        sched.step()
        got.append(sched.get_last_lr())
    assert got == want and tb2.step_count == 6 and len(tb2.history) == len(tb.history) == 4
