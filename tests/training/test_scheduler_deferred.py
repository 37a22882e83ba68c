"""A refresh due at epoch_end runs right before the next optimizer step: the same factors as an immediate pass,
no pass after the last epoch unless its results are read, and exact resume with the refresh still due."""
from __future__ import annotations

import numpy as np
import torch

from tempbalance.training.scheduler import TempBalance
from test_scheduler import KW, batches, checkpoint_roundtrip, make_model, numpy_alpha, train_step

EPOCHS, STEPS = 3, 2


class NotATorchOptimizer:
    """A wrapper TempBalance cannot hook (not a torch.optim.Optimizer, no ``.optimizer``): passes run at once."""

    def __init__(self, inner: torch.optim.Optimizer):
        self.inner = inner
        self.param_groups = inner.param_groups

    def step(self) -> None:
        self.inner.step()

    def zero_grad(self) -> None:
        self.inner.zero_grad()


class AccelerateLike(torch.optim.Optimizer):
    """Like accelerate's AcceleratedOptimizer: a torch Optimizer subclass that skips Optimizer.__init__ and steps
    the optimizer it holds as ``.optimizer``."""

    def __init__(self, optimizer: torch.optim.Optimizer):  # noqa: D107 - no super().__init__, on purpose
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def step(self, closure=None):
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


def assert_same(a: dict[str, float], b: dict[str, float]) -> None:
    """Equal dicts of floats, NaN (an untuned layer) equal to NaN."""
    assert list(a) == list(b)
    np.testing.assert_array_equal(list(a.values()), list(b.values()))


def counted(tb: TempBalance) -> list[int]:
    """Count the spectral passes of ``tb`` (each call of its analysis)."""
    calls: list[int] = []
    inner = tb._refresher.analyze

    def analyze(specs, *options):
        calls.append(tb.step_count)
        return inner(specs, *options)

    tb._refresher.analyze = analyze
    return calls


def lrs_used(inner: torch.optim.Optimizer) -> list[list[float]]:
    """The lr of every group as each optimizer step reads it (a per-optimizer pre-hook runs after the global
    ones, so after TempBalance's)."""
    seen: list[list[float]] = []
    inner.register_step_pre_hook(lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    return seen


def train(wrap=None, epochs=EPOCHS):
    model = make_model()
    inner = torch.optim.AdamW(model.parameters(), lr=0.02)
    opt = wrap(inner) if wrap else inner
    tb = TempBalance(model, opt, interval=None, **KW)
    calls, used = counted(tb), lrs_used(inner)
    data = batches(epochs * STEPS)
    for e in range(epochs):
        for b in data[e * STEPS:(e + 1) * STEPS]:
            train_step(model, opt, b)
            tb.step()
        tb.epoch_end()
    return model, tb, calls, used


def test_epoch_refresh_waits_for_the_next_step_and_skips_the_one_after_the_last_epoch():
    model, tb, calls, used = train()
    # passes before the steps of epochs 2 and 3, none after epoch 3 (the init pass is before counting)
    assert calls == [STEPS, 2 * STEPS]
    # the same LRs, step by step, as immediate passes (an optimizer TempBalance cannot hook)
    _, tb_now, calls_now, used_now = train(NotATorchOptimizer)
    assert calls_now == [STEPS, 2 * STEPS, 3 * STEPS]
    assert used == used_now and len(used) == EPOCHS * STEPS
    # reading the results runs the pending pass, on the final weights
    alphas = tb.alphas
    assert calls == [STEPS, 2 * STEPS, 3 * STEPS]
    for u in ("0", "3", "5"):
        ref = numpy_alpha(model[int(u)].weight.detach().numpy())
        np.testing.assert_allclose(alphas[u], ref, rtol=1e-4)
    assert_same(tb.alphas, tb_now.alphas)
    assert tb.factors == tb_now.factors
    assert [h["step"] for h in tb.history] == [h["step"] for h in tb_now.history] == [0, 2, 4, 6]


def test_every_read_runs_the_due_pass():
    for read in (lambda tb: tb.factors, lambda tb: tb.history, lambda tb: tb.get_last_lr(),
                 lambda tb: tb.spectral_seconds, lambda tb: tb.last_report, lambda tb: tb.alpha_std):
        _, tb, calls, _ = train(epochs=1)
        assert calls == []
        read(tb)
        assert calls == [STEPS]


def test_wrapped_torch_optimizer_is_hooked_through_its_inner_optimizer():
    _, tb, calls, used = train(AccelerateLike)
    assert calls == [STEPS, 2 * STEPS]
    _, _, _, used_now = train(NotATorchOptimizer)
    assert used == used_now


def test_resume_with_the_epoch_refresh_still_due_is_bit_for_bit():
    _, tb_full, _, used_full = train()
    data = batches(EPOCHS * STEPS)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.02)
    tb = TempBalance(model, opt, interval=None, **KW)
    for b in data[:STEPS]:
        train_step(model, opt, b)
        tb.step()
    tb.epoch_end()
    saved = checkpoint_roundtrip(model, opt, tb)
    assert saved["tb"]["progress"]["refresh_due"] is True

    model2 = make_model(seed=5)  # other weights: everything must come from the checkpoint
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.02)
    tb2 = TempBalance(model2, opt2, interval=None, **KW)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])  # replaces opt2.param_groups: the hook must still find them
    tb2.load_state_dict(saved["tb"])
    calls, used = counted(tb2), lrs_used(opt2)
    for e in range(1, EPOCHS):
        for b in data[e * STEPS:(e + 1) * STEPS]:
            train_step(model2, opt2, b)
            tb2.step()
        tb2.epoch_end()
    assert calls == [STEPS, 2 * STEPS]
    assert used == used_full[STEPS:]
    assert tb2.factors == tb_full.factors
    assert_same(tb2.alphas, tb_full.alphas)


def test_close_removes_the_hook_and_the_due_pass():
    model, tb, calls, _ = train(epochs=1)
    tb.close()
    assert tb.factors and calls == []  # closed: the due pass is dropped, reads give the last factors
    opt = tb.optimizer
    train_step(model, opt, batches(1)[0])
    assert calls == []
