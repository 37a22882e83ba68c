"""Background passes (lag >= 1), adaptive cadence and refresh callbacks of TempBalance.

The oracle: a background pass started at step t is the synchronous analysis of the weights as they were at step
t, and its factors are in the optimizer from step t + lag on - checked against :func:`tempbalance.analyze` of a
copy of the model taken at step t and the mapping of SPEC §3 written in numpy (test_scheduler.sigmoid_factor).
"""
from __future__ import annotations

import copy
import math
import time
import warnings

import numpy as np
import pytest
import torch

import tempbalance
from tempbalance import analysis
from tempbalance.training.cadence import Adaptive
from tempbalance.training.scheduler import TempBalance
from test_scheduler import KW, batches, make_model, sigmoid_factor, train_and_resume, train_step

TUNED = ["0", "3", "5"]  # make_model's layers with enough eigenvalues


def expected_factors(model) -> dict[str, float]:
    rep = tempbalance.analyze(model, **KW)
    alphas = np.array([rep[u].alpha for u in TUNED])
    return dict(zip(TUNED, sigmoid_factor(alphas)))


def run(lag, interval, steps, *, slow=0.0, monkeypatch=None, lr=0.05):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    if slow and monkeypatch is not None:
        real = analysis.analyze_specs

        def slow_analyze(*a, **k):
            time.sleep(slow)
            return real(*a, **k)
        monkeypatch.setattr(analysis, "analyze_specs", slow_analyze)
    tb = TempBalance(model, opt, interval=interval, lag=lag, **KW)
    snapshots, lrs = {}, []
    for t, b in enumerate(batches(steps), start=1):
        train_step(model, opt, b)
        snapshots[t] = copy.deepcopy(model)
        tb.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    tb.close()
    return model, opt, tb, snapshots, lrs


def test_background_factors_are_those_of_the_snapshot_applied_lag_steps_later():
    model, opt, tb, snaps, lrs = run(lag=2, interval=3, steps=10)
    assert [h["started_step"] for h in tb.history] == [0, 3, 6]
    assert [h["step"] for h in tb.history] == [0, 5, 8]  # the pass of step 9 is due at 11, after the run
    for h in tb.history[1:]:
        exp = expected_factors(snaps[h["started_step"]])
        for u in TUNED:
            assert h["factors"][u] == pytest.approx(exp[u], rel=1e-4)
    # the optimizer held the factors of the pass started at 3 exactly during steps 5, 6, 7
    exp3 = expected_factors(snaps[3])
    for t in (5, 6, 7):
        for g, u in zip(opt.param_groups, tb.group_units):
            if u in TUNED:
                assert lrs[t - 1][tb.group_units.index(u)] == pytest.approx(0.05 * exp3[u], rel=1e-4)
    assert tb.blocking_seconds <= tb.spectral_seconds + sum(h["blocking_seconds"] for h in tb.history)


def test_background_is_deterministic_whatever_the_pass_takes(monkeypatch):
    *_, fast = run(lag=1, interval=2, steps=8)
    with monkeypatch.context() as m:
        *_, slow = run(lag=1, interval=2, steps=8, slow=0.05, monkeypatch=m)
    assert fast == slow


def test_refresh_due_while_pending_is_skipped():
    _, _, tb, _, _ = run(lag=3, interval=2, steps=9)
    # started 2 (due 5); 4 skipped; started 6 (due 9); 8 skipped
    assert [h["started_step"] for h in tb.history] == [0, 2, 6]
    assert tb.skipped_refreshes == [4, 8]


def test_snapshot_isolates_the_pass_from_later_changes():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    tb = TempBalance(model, opt, interval=1, lag=1, **KW)
    before = copy.deepcopy(model)
    tb.step()                      # snapshot at step 1
    with torch.no_grad():
        model[3].weight.mul_(torch.linspace(0.1, 3, 48)[:, None])  # changes its spectrum; the pass must not see it
    tb.step()                      # applies the pass of step 1
    exp = expected_factors(before)
    assert tb.history[-1]["started_step"] == 1
    for u in TUNED:
        assert tb.factors[u] == pytest.approx(exp[u], rel=1e-4)


def test_failed_background_pass_keeps_factors_and_optimizer():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, interval=1, lag=1, **KW)
    f0 = tb.factors
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    tb.step()                      # snapshot holds the NaN
    with torch.no_grad():
        model[3].weight[0, 0] = 0.0
    with pytest.warns(RuntimeWarning, match=r"unit\(s\) \['3'\].*NaN"):
        tb.step()
    assert tb.factors["3"] == f0["3"]
    assert tb.history[-1]["failed"] == ["3"]
    for g, u in zip(opt.param_groups, tb.group_units):
        assert math.isfinite(g["lr"]) and g["lr"] == pytest.approx(0.1 * tb.factors.get(u, 1.0) if u else 0.1)


def test_resume_with_a_pending_pass_is_bit_for_bit():
    data = batches(9)

    def fresh(seed):
        model = make_model(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, opt, TempBalance(model, opt, interval=3, lag=2, **KW)

    (model, _, tb), (_, _, tb2), (model3, _, tb3), ckpt = train_and_resume(fresh, data, 4)
    assert tb2._refresher.passes.pending is not None    # stopped after step 4: the pass of step 3 pending, due at 5
    for k, v in model.state_dict().items():
        assert torch.equal(v, model3.state_dict()[k]), k
    assert tb.get_last_lr() == tb3.get_last_lr()
    assert [h["started_step"] for h in tb.history] == [h["started_step"] for h in tb3.history]
    with pytest.raises(ValueError, match="lag"):
        model4 = make_model()
        opt4 = torch.optim.AdamW(model4.parameters(), lr=1e-2)
        TempBalance(model4, opt4, interval=3, lag=0, **KW).load_state_dict(ckpt["tb"])


def test_per_epoch_background():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tb = TempBalance(model, opt, interval=None, lag=2, **KW)
    for b in batches(3):
        train_step(model, opt, b)
        tb.step()
    tb.epoch_end()                 # snapshot after 3 steps, due at step 5
    assert len(tb.history) == 1
    for b in batches(2, seed=3):
        train_step(model, opt, b)
        tb.step()
    assert [(h["started_step"], h["step"], h["epoch"]) for h in tb.history[1:]] == [(3, 5, 1)]


def test_adaptive_cadence_spaces_out_refreshes_when_alphas_hold_still():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)   # weights never move: drift 0
    tb = TempBalance(model, opt, interval=Adaptive(2, max=8, tol=0.01), **KW)
    for _ in range(30):
        tb.step()
    # first refresh at 2 keeps 2 (drift vs the initial pass is 0 -> doubles): 2, 6, 14, 22, 30
    assert [h["step"] for h in tb.history] == [0, 2, 6, 14, 22, 30]


def test_refresh_callbacks_get_every_record_and_cannot_stop_training():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tb = TempBalance(model, opt, interval=2, **KW)
    seen = []
    tb.add_refresh_callback(seen.append)

    def broken(record):
        raise KeyError("boom")
    handle = tb.add_refresh_callback(broken)
    with pytest.warns(RuntimeWarning, match="broken.*boom"):
        for b in batches(4):
            train_step(model, opt, b)
            tb.step()
    assert seen == tb.history[1:]
    handle.remove()  # a RemovableHandle, as torch's hooks: no more calls, no more warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for b in batches(2):
            train_step(model, opt, b)
            tb.step()
    assert seen == tb.history[1:]
    assert set(seen[0]) >= {"step", "epoch", "seconds", "blocking_seconds", "factors", "unit_values", "alpha_std",
                            "alphas", "failed", "started_step"}
    with pytest.raises(TypeError, match="callable"):
        tb.add_refresh_callback(3)


def test_lag_validation():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="lag"):
            TempBalance(model, opt, lag=bad, **KW)


def test_chunk_bytes_bounds_the_pass_without_changing_it():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    small = TempBalance(model, opt, chunk_bytes=1, **KW)        # one matrix per native call
    model2 = make_model()
    whole = TempBalance(model2, torch.optim.SGD(model2.parameters(), lr=0.05), **KW)
    assert small.alphas == pytest.approx(whole.alphas, nan_ok=True) and small.factors == whole.factors
    with pytest.raises(ValueError, match="chunk_bytes"):
        TempBalance(make_model(), torch.optim.SGD(make_model().parameters(), lr=0.1), chunk_bytes=0, **KW)


def test_budget_cadence_spaces_refreshes_by_measured_step_and_pass_time(monkeypatch):
    """A fake clock: every training step takes 1.0 s, every pass 0.5 s -> at most 10% overhead = a refresh every
    5 steps."""
    import tempbalance.training.refresh as refresh_mod
    from tempbalance.training.cadence import Budget

    clock = [0.0]

    class FakeTime:
        @staticmethod
        def perf_counter():
            return clock[0]
    real = analysis.analyze_specs

    def timed_analyze(*a, **k):
        clock[0] += 0.5
        return real(*a, **k)
    monkeypatch.setattr(refresh_mod, "time", FakeTime)
    monkeypatch.setattr(analysis, "analyze_specs", timed_analyze)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    tb = TempBalance(model, opt, interval=Budget(0.1, start=2), **KW)
    for _ in range(20):
        clock[0] += 1.0
        tb.step()
    assert [h["step"] for h in tb.history] == [0, 2, 7, 12, 17]
    assert all(h["blocking_seconds"] == 0.5 for h in tb.history)
