"""Checkpoints saved by an earlier tempbalance still load: TempBalance's state_dict format (version 3) is a contract.

``data/state_v3.pt`` was written by tempbalance at commit 22250c8 (before the pass mechanism moved into
``tempbalance/passes.py``) with ``python tests/training/test_scheduler_saved_state.py --write``: for each scenario below, a
checkpoint (model, optimizer, TempBalance) taken mid-run - a background pass pending, refreshes
skipped, a staggered slice position, base rates held between passes, a refresh due at an epoch end - and the
learning rates every step of the uninterrupted run used. Today's code must (1) save the same state at that point
(same nested keys, types and lengths; the same values but for wall-clock seconds), and (2) load the old checkpoint and
go on with the learning rates the old code used. The models are float64 so the comparison holds to 1e-9 on any CPU.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from tempbalance import TempBalance
from test_scheduler import KW, batches, make_model, train_step, user_groups

FIXTURE = Path(__file__).parents[1] / "data" / "state_v3.pt"
TIMINGS = {"seconds", "blocking_seconds", "spectral_seconds"}  # wall clock: differ from run to run
RTOL = 1e-9

# name: (TempBalance arguments, steps, steps before the checkpoint, epoch length or None)
SCENARIOS = {
    # a pass started at step 2 due at 5 is pending at the checkpoint (after step 4); the refresh of step 4 skipped
    "background_staggered": (dict(interval=2, lag=3, stagger=2), 9, 4, None),
    # the tempbalance_lm reference: base rates held between passes; a background pass pending
    "compat_held": (dict(compat="tempbalance_lm", interval=2, lag=1), 8, 4, None),
    # per-epoch, staggered: the checkpoint is taken right after epoch_end(), the refresh due but not run yet
    "epoch_due_staggered": (dict(interval="epoch", stagger=2), 9, 6, 3),
}


def build(name: str):
    kwargs, *_ = SCENARIOS[name]
    model = make_model(4).double()
    opt = torch.optim.SGD(user_groups(model), momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.1 * t))
    return model, opt, TempBalance(model, opt, base_scheduler=sched, **KW, **kwargs)


def run(name: str, model, opt, tb, start: int, stop: int) -> list[list[float]]:
    """Steps ``start + 1 .. stop`` of the scenario; the learning rates each optimizer step used."""
    _, _, _, epoch = SCENARIOS[name]
    lrs = []
    for t, b in enumerate(batches(stop, seed=5)[start:], start=start + 1):
        x, y = b
        lrs.append([float(g["lr"]) for g in opt.param_groups])
        train_step(model, opt, (x.double(), y))
        tb.step()
        if epoch and t % epoch == 0:
            tb.epoch_end()
    return lrs


def write() -> None:
    torch.set_num_threads(1)  # as conftest.py
    out = {}
    for name, (_, steps, cut, _) in SCENARIOS.items():
        lrs = run(name, *build(name), 0, steps)
        model, opt, tb = build(name)
        run(name, model, opt, tb, 0, cut)
        out[name] = dict(lrs=lrs, ckpt=dict(model=model.state_dict(), opt=opt.state_dict(),
                                                      tb=tb.state_dict()))
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(out, FIXTURE)


@pytest.fixture(scope="module")
def saved() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def assert_same_state(got, want, path="state") -> None:
    """The same nested structure; equal values (floats to RTOL, NaN equal to NaN), wall-clock seconds excepted."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} vs saved {type(want).__name__}"
    if isinstance(want, dict):
        assert list(got) == list(want), f"{path}: keys {list(got)} vs saved {list(want)}"
        for k in want:
            if k not in TIMINGS:
                assert_same_state(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{path}: {len(got)} items vs saved {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_state(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert (math.isnan(got) and math.isnan(want)) or math.isclose(got, want, rel_tol=RTOL), \
            f"{path}: {got!r} vs saved {want!r}"
    elif isinstance(want, torch.Tensor):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=0, equal_nan=True)
    else:
        assert got == want, f"{path}: {got!r} vs saved {want!r}"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_todays_state_at_the_checkpoint_is_the_saved_one(saved, name):
    _, _, cut, _ = SCENARIOS[name]
    model, opt, tb = build(name)
    run(name, model, opt, tb, 0, cut)
    state = tb.state_dict()
    want = saved[name]["ckpt"]["tb"]
    assert state["version"] == want["version"] == 3
    assert_same_state(state, want)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_checkpoint_saved_before_loads_and_goes_on_as_the_old_run_did(saved, name):
    _, steps, cut, _ = SCENARIOS[name]
    ckpt = saved[name]["ckpt"]
    model, opt, tb = build(name)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    tb.load_state_dict(ckpt["tb"])
    got = run(name, model, opt, tb, cut, steps)
    want = saved[name]["lrs"][cut:]
    assert len(got) == len(want) == steps - cut
    for t, (g, w) in enumerate(zip(got, want), start=cut + 1):
        assert g == pytest.approx(w, rel=RTOL), f"step {t}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/training/test_scheduler_saved_state.py --write   (rewrites " + str(FIXTURE) + ")")
    write()
