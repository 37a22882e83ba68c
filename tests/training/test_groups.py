"""tempbalance.groups: splitting param groups by key, remapping a scheduler's per-group lists, and the owner of an
optimizer's groups (un-factored values, external changes, added groups, take-over, state)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tempbalance.training import groups as G


def params(n: int) -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(2, 2)) for _ in range(n)]


def owner_of(keys: dict[str, list[nn.Parameter]]) -> dict[int, str]:
    return {id(p): k for k, ps in keys.items() for p in ps}


def test_split_by_unit_is_pure_keeps_order_and_copies_hyperparameters():
    a, b, c, d = params(4)
    lr = torch.tensor(0.1)
    groups = [{"params": [a, b, c], "lr": lr, "betas": (0.8, 0.9), "weight_decay": 0.1},
              {"params": [d], "lr": 0.5, "weight_decay": 0.0}]
    snapshot = [dict(g, params=list(g["params"])) for g in groups]
    new, src = G.split_by_unit(groups, owner_of({"u1": [a, c], "u2": [b]}))
    assert groups == snapshot  # inputs untouched
    assert src == [0, 0, 1]
    assert [[id(p) for p in g["params"]] for g in new] == [[id(a), id(c)], [id(b)], [id(d)]]
    assert [g[G.UNIT_KEY] for g in new] == ["u1", "u2", None]
    assert new[1]["betas"] == (0.8, 0.9) and new[1]["weight_decay"] == 0.1
    assert new[0]["lr"] is lr and new[1]["lr"] is not lr and float(new[1]["lr"]) == pytest.approx(0.1)


def test_split_gives_every_group_its_own_lr_tensor():
    a, b = params(2)
    shared = torch.tensor(0.1)
    new, _ = G.split_by_unit([{"params": [a], "lr": shared}, {"params": [b], "lr": shared}], {})
    assert new[0]["lr"] is shared and new[1]["lr"] is not shared


def test_remap_per_group_extends_lists_and_checks_before_writing():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)
    fns = [lambda t: 1.0, lambda t: 0.5]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fns)
    G.remap_per_group(sched, [0, 0, 1], 2)
    assert sched.lr_lambdas == [fns[0], fns[0], fns[1]] and sched.base_lrs == [0.1, 0.1, 0.1]
    before = list(sched.lr_lambdas)
    sched.base_lrs = [0.1] * 5
    with pytest.raises(ValueError, match="has 5 base_lrs.*2 param groups"):
        G.remap_per_group(sched, [0, 0, 1, 1], 2)
    assert sched.lr_lambdas == before


def make(keys=("u1", "u2"), lr=0.1, **kw):
    """An optimizer over three of four parameters (the fourth is spare): keys[0], keys[1], no key."""
    ps = params(4)
    opt = torch.optim.SGD(ps[:3], lr=lr)
    book = G.FactoredGroups(opt, owner_of({keys[0]: ps[:1], keys[1]: ps[1:2]}), **kw)
    return opt, ps, book


def test_factored_groups_apply_restore_capture_never_compound():
    opt, _, book = make()
    assert book.units == ["u1", "u2", None] and book.scheduled == [0.1] * 3
    factors = {"u1": 2.0, "u2": 0.5}
    for _ in range(3):
        book.apply(factors)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.05, 0.1]
    assert [g[G.FACTOR_KEY] for g in opt.param_groups] == [2.0, 0.5, 1.0]
    book.restore_base()
    assert [g["lr"] for g in opt.param_groups] == [0.1] * 3
    for g in opt.param_groups:
        g["lr"] *= 0.5  # what a base scheduler does
    book.capture_base()
    book.apply(factors)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.025, 0.05]


def test_external_changes_are_adopted_as_base():
    opt, _, book = make()
    book.apply({"u1": 2.0, "u2": 0.5})
    opt.param_groups[1]["lr"] = 0.3  # manual warmup
    assert book.sync_external() == [1]
    book.apply({"u1": 2.0, "u2": 0.5})
    assert opt.param_groups[1]["lr"] == 0.15 and book.scheduled[1] == 0.3


def test_added_groups_are_adopted_or_refused_before_any_change():
    opt, ps, book = make()
    book.apply({"u1": 2.0, "u2": 0.5})
    opt.add_param_group({"params": [ps[3]], "lr": 0.7})
    assert not book.in_sync()
    assert book.adopt_added() == [3] and book.units[3] is None and book.scheduled[3] == 0.7
    extra = nn.Parameter(torch.zeros(2))
    owner = {**owner_of({"u1": [extra]})}
    opt2 = torch.optim.SGD(params(2), lr=0.1)
    book2 = G.FactoredGroups(opt2, owner, scheduler=None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt2, lambda t: 1.0)
    opt2.add_param_group({"params": [extra], "lr": 0.2})
    with pytest.raises(ValueError, match=r"added .*LambdaLR\.base_lrs.*frozen ones too"):
        book2.adopt_added(sched)
    assert book2.units == [None] and len(opt2.param_groups) == 2  # nothing changed


def test_lbfgs_is_refused_before_the_split():
    ps = params(2)
    opt = torch.optim.LBFGS(ps)
    with pytest.raises(ValueError, match="LBFGS supports a single param group"):
        G.FactoredGroups(opt, owner_of({"a": ps[:1], "b": ps[1:]}))
    assert len(opt.param_groups) == 1 and G.UNIT_KEY not in opt.param_groups[0]
    G.FactoredGroups(opt, owner_of({"a": ps}))  # one unit: one group, fine


def test_a_second_owner_takes_over_from_the_unfactored_values():
    opt, ps, first = make()
    first.apply({"u1": 3.0, "u2": 0.5})
    assert G.owner_of(opt) is first
    second = G.FactoredGroups(opt, owner_of({"u1": ps[:1], "u2": ps[1:2]}))
    assert first.released and "newer TempBalance" in first.released
    assert second.scheduled == [0.1] * 3 and G.owner_of(opt) is second
    second.apply({"u1": 3.0})
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.3, 0.1, 0.1])


def test_user_group_dicts_stay_the_optimizers():
    ps = params(3)
    mine = {"params": ps, "lr": 0.1}
    opt = torch.optim.SGD([mine])
    G.FactoredGroups(opt, owner_of({"a": ps[:1], "b": ps[1:]}))
    assert opt.param_groups[0] is mine and len(opt.param_groups) == 2


def test_attach_scheduler_refuses_one_that_read_factored_values():
    opt, _, book = make()
    book.apply({"u1": 2.0, "u2": 0.5})
    late = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)  # base_lrs = the factored lrs
    with pytest.raises(ValueError, match=r"built after TempBalance.*group\(s\) \[0, 1\]"):
        book.attach_scheduler(late)


def test_state_round_trip_and_mismatch():
    opt, _, book = make()
    book.apply({"u1": 2.0})
    state = book.state_dict()
    assert state == {"units": ["u1", "u2", None], "scheduled": [0.1, 0.1, 0.1]}
    _, _, other = make(keys=("u1", "v"))
    with pytest.raises(ValueError, match="param groups differ"):
        other.check_state(state)
    with pytest.raises(ValueError, match="3 finite numbers"):
        book.check_state({"units": state["units"], "scheduled": [0.1, float("nan"), 0.1]})
    book.load_state_dict({"units": state["units"], "scheduled": [0.2, 0.1, 0.1]})
    book.apply({"u1": 2.0})
    assert opt.param_groups[0]["lr"] == 0.4
