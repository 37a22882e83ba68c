"""Traps of a first training loop: a schedule advanced by tb.step() with an optimizer that never steps, an interval
spelled wrong, and warnings attributed to torch's code instead of the line that caused them."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from tempbalance import PerEpoch, TempBalance
from tempbalance.training.watch import SKIPS_TOLERATED as _SKIPS_TOLERATED
from test_scheduler import KW, batches, make_model, train_step


def _tb(model, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9 ** t)
    return opt, TempBalance(model, opt, base_scheduler=sched, **KW)


def test_tb_step_again_and_again_without_any_optimizer_step_is_refused():
    """A loop that never steps the optimizer TempBalance manages (forgotten, or a new optimizer built after it)
    would walk the schedule through the whole run while nothing trains."""
    model = make_model()
    opt, tb = _tb(model)
    for _ in range(_SKIPS_TOLERATED):
        tb.step()
    lrs = [g["lr"] for g in opt.param_groups]
    with pytest.raises(RuntimeError, match=rf"called {_SKIPS_TOLERATED} times in a row with no optimizer step.*"
                                           r"Call optimizer.step\(\) before each tb.step\(\)"):
        tb.step()
    assert tb.step_count == _SKIPS_TOLERATED and [g["lr"] for g in opt.param_groups] == lrs  # refused before it acts


def test_a_run_of_skipped_optimizer_steps_after_training_began_is_refused_too():
    model = make_model()
    opt, tb = _tb(model)
    for b in batches(3):
        train_step(model, opt, b)
        tb.step()
    with pytest.raises(RuntimeError, match="times in a row with no optimizer step"):
        for _ in range(_SKIPS_TOLERATED + 1):
            tb.step()
    assert tb.step_count == 2 + _SKIPS_TOLERATED  # the tb.step() after the last optimizer step is the first of them


def test_skipped_steps_below_the_limit_then_training_is_allowed():
    """GradScaler's first overflows: up to the limit of skipped optimizer steps in a row, then steps again."""
    model = make_model()
    opt, tb = _tb(model)
    for _ in range(_SKIPS_TOLERATED - 1):
        tb.step()
    for b in batches(3):
        train_step(model, opt, b)
        tb.step()
    assert tb.step_count == _SKIPS_TOLERATED + 2


@pytest.mark.parametrize("interval", ["epochs", "per_epoch", 0, 2.5])
def test_the_interval_error_lists_every_accepted_value(interval):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"interval must be None or 'epoch' \(per epoch\), 'adaptive', a Cadence or "
                                         r"an integer >= 1"):
        TempBalance(model, opt, interval=interval, **KW)
    assert [g["lr"] for g in opt.param_groups] == [0.1]
    TempBalance(model, opt, interval="epoch", **KW)  # the spelling the message names is accepted


def _line_of(text: str, fn) -> int:
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def _loop_without_epoch_end(model, opt, data):
    for b in data:
        x, y = b
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()  # the per-epoch fallback notices the missed epoch end here (the optimizer's step hook)
        opt.zero_grad()


def test_the_per_epoch_fallback_warning_points_at_the_users_line():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, interval=PerEpoch(steps_per_epoch=2), **KW)
    from tempbalance.integrations import auto_step

    auto_step(tb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _loop_without_epoch_end(model, opt, batches(4))
    [w] = [w for w in caught if "no epoch_end()" in str(w.message)]
    assert (w.filename, w.lineno) == (__file__, _line_of("opt.step()", _loop_without_epoch_end))


def test_a_warning_from_tb_step_points_at_the_users_line():
    """A learning rate set outside TempBalance, seen by tb.step(): the warning names the tb.step() line."""
    model = make_model()
    opt, tb = _tb(model)
    for g in opt.param_groups:
        g["lr"] = 0.5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tb.step()  # the line the warning must name
    [w] = [w for w in caught if "changed outside TempBalance" in str(w.message)]
    assert (w.filename, w.lineno) == (__file__, _line_of("tb.step()  # the line the warning",
                                                         test_a_warning_from_tb_step_points_at_the_users_line))


def test_a_failed_pass_in_the_optimizers_step_hook_warns_at_the_users_line():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, interval=PerEpoch(), **KW)
    tb.epoch_end()  # the refresh runs when the next optimizer step starts: inside torch's step hook
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _loop_without_epoch_end(model, opt, batches(1))
    [w] = [w for w in caught if "failed for unit(s)" in str(w.message)]
    assert (w.filename, w.lineno) == (__file__, _line_of("opt.step()", _loop_without_epoch_end))
