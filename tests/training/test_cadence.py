"""Cadences: when refreshes fall due, hand-checked step by step."""
from __future__ import annotations

import math

import pytest

from tempbalance.training.cadence import Adaptive, BeforeEveryN, Budget, EveryN, PerEpoch, as_cadence


def test_every_n_and_per_epoch():
    c = EveryN(3)
    assert [s for s in range(1, 11) if c.due_after_step(s)] == [3, 6, 9]
    assert not c.due_at_epoch_end(1)
    e = PerEpoch()
    assert e.per_epoch and e.due_at_epoch_end(1) and not e.due_after_step(5)


def test_before_every_n_refreshes_one_step_ahead_of_every_n():
    """AlphaDecay's reference re-reads the spectra when ``(update_step + 1) % n == 0``, before that update: after
    steps n - 1, 2n - 1, ...; its state says its type, so a run saved with EveryN does not load into it."""
    c = BeforeEveryN(4)
    assert [s for s in range(1, 13) if c.due_after_step(s)] == [3, 7, 11]
    assert [s for s in range(1, 4) if BeforeEveryN(1).due_after_step(s)] == [1, 2, 3]
    assert "after steps 3, 7" in c.describe()
    with pytest.raises(ValueError, match="cadence: saved with EveryN, this object has BeforeEveryN"):
        c.check_state(EveryN(4).state_dict())
    with pytest.raises(ValueError, match="integer >= 1"):
        BeforeEveryN(0)


def test_as_cadence():
    assert isinstance(as_cadence(None), PerEpoch) and isinstance(as_cadence("epoch"), PerEpoch)
    assert isinstance(as_cadence(4), EveryN) and as_cadence(4).n == 4
    assert isinstance(as_cadence("adaptive"), Adaptive)
    a = Adaptive(5)
    assert as_cadence(a) is a
    for bad in (0, -2, True, 2.5, "sometimes"):
        with pytest.raises(ValueError, match="interval"):
            as_cadence(bad)


def test_adaptive_doubles_while_still_halves_when_moving():
    c = Adaptive(4, min=2, max=16, tol=0.1)
    assert [s for s in range(1, 5) if c.due_after_step(s)] == [4]
    c.observe(4, math.nan)          # first refresh: no drift known, interval kept
    assert (c.interval, c.next_step) == (4, 8)
    c.observe(8, 0.05)              # <= tol/2: double
    assert (c.interval, c.next_step) == (8, 16)
    c.observe(16, 0.01)             # double, capped at max
    assert (c.interval, c.next_step) == (16, 32)
    c.observe(32, 0.01)
    assert c.interval == 16
    c.observe(48, 0.07)             # between tol/2 and tol: keep
    assert (c.interval, c.next_step) == (16, 64)
    c.observe(64, 0.5)              # > tol: halve
    assert (c.interval, c.next_step) == (8, 72)
    for _ in range(5):
        c.observe(72, 1.0)
    assert c.interval == 2          # floored at min
    state = c.state_dict()
    d = Adaptive(4, min=2, max=16, tol=0.1)
    d.load_state_dict(state)
    assert (d.interval, d.next_step) == (c.interval, c.next_step)


@pytest.mark.parametrize("kw, match", [(dict(start=0), "start"), (dict(start=20, max=10), "min <= start"),
                                       (dict(tol=0), "tol"), (dict(tol=float("nan")), "tol")])
def test_adaptive_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        Adaptive(**kw)


def test_budget_places_the_next_refresh_by_measured_cost():
    c = Budget(0.1, start=3, min=2, max=50)
    assert [s for s in range(1, 4) if c.due_after_step(s)] == [3]
    c.observe(3, math.nan)                                       # no timing yet: keep start
    assert (c.interval, c.next_step) == (3, 6)
    c.observe(6, 0.0, blocking_seconds=0.5, step_seconds=1.0)    # 0.5 / (0.1 * 1.0) = 5 steps
    assert (c.interval, c.next_step) == (5, 11)
    c.observe(11, 0.0, blocking_seconds=0.01, step_seconds=1.0)  # 0.1 -> 1 step, floored at min
    assert c.interval == 2
    c.observe(13, 0.0, blocking_seconds=100.0, step_seconds=1.0)  # capped at max
    assert c.interval == 50
    d = Budget(0.1, start=3, min=2, max=50)
    d.load_state_dict(c.state_dict())
    assert (d.interval, d.next_step) == (50, 63)
    for bad in (dict(max_overhead=0), dict(max_overhead=1.5), dict(start=0), dict(start=9, max=5)):
        with pytest.raises(ValueError, match="Budget"):
            Budget(**bad)
