"""The habits of real training scripts: each ends with correct learning rates or a clear error raised before
anything changes - never a silent wrong LR, a crash inside optimizer.step() or a half-updated object."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from schedule_cases import SCHEDULES, Shadow, assert_lrs, source_of_groups
from tempbalance import PerEpoch
from tempbalance.integrations import auto_step
from tempbalance.training.scheduler import TempBalance
from test_scheduler import KW, batches, checkpoint_roundtrip, make_model, train_step, user_groups


def assert_base_times_factor(tb, base: float) -> None:
    """Every group holds ``base`` x its unit's factor (untuned groups: ``base``)."""
    factors = tb.factors
    for g, u in zip(tb.optimizer.param_groups, tb.group_units):
        assert g["lr"] == base * (factors[u] if u is not None else 1.0), (u, g["lr"], base)


def group_of(opt, p) -> int:
    return next(i for i, g in enumerate(opt.param_groups) if any(q is p for q in g["params"]))


# --- case 1: flat spectra --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orthogonal_layers_keep_factor_one_whatever_the_seed(seed):
    """Orthogonal init gives equal singular values: untuned (factor 1), not round-off mapped to 0.1 or 3.16."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64))
    for layer in list(model)[:3]:
        nn.init.orthogonal_(layer.weight)
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), backend="torch", min_eigs=8)
    assert [tb.last_report[u].status for u in ("0", "1", "2")] == ["flat_tail"] * 3
    assert [tb.factors[u] for u in ("0", "1", "2", "3")] == [1.0] * 4  # the one tuned unit sits at the mean


# --- case 2: one TempBalance per optimizer -------------------------------------------------------------------------
def test_a_second_tempbalance_takes_over_and_the_first_one_refuses_to_step():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = TempBalance(model, opt, **KW)
    second = TempBalance(model, opt, **KW)  # a notebook cell run twice
    assert second.get_base_lr() == [0.1] * len(opt.param_groups)  # from the un-factored lr, not first's
    for b in batches(4):
        train_step(model, opt, b)
        second.step()
        assert_base_times_factor(second, 0.1)  # never compounding (was 2.2x, 3.6x, ... growth)
    with pytest.raises(RuntimeError, match="newer TempBalance was built on the same optimizer"):
        first.step()
    with pytest.raises(RuntimeError, match="no longer manages"):
        first.epoch_end()
    assert first.factors and first.history  # reading the detached one still works
    assert_base_times_factor(second, 0.1)  # untouched by the refused calls


def test_take_over_keeps_the_base_scheduler_position():
    model = make_model()
    groups = user_groups(model)
    original = [{id(p) for p in g["params"]} for g in groups]
    opt = torch.optim.AdamW(groups)
    shadow = Shadow(opt.param_groups, "hf_linear", 8)
    sched = SCHEDULES["hf_linear"](opt, 8)
    first = TempBalance(model, opt, base_scheduler=sched, **KW)
    for b in batches(3):
        train_step(model, opt, b)
        first.step()
        shadow.step()
    second = TempBalance(model, opt, base_scheduler=sched, **KW)
    src = source_of_groups(original, opt)
    assert_lrs(second, shadow, src)
    for b in batches(3, seed=2):
        train_step(model, opt, b)
        second.step()
        shadow.step()
        assert_lrs(second, shadow, src)


def test_close_detaches_and_gives_the_groups_their_unfactored_lr():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, **KW)
    assert any(g["lr"] != 0.1 for g in opt.param_groups)
    tb.close()
    assert [g["lr"] for g in opt.param_groups] == [0.1] * len(opt.param_groups)
    with pytest.raises(RuntimeError, match="closed"):
        tb.step()
    TempBalance(model, opt, **KW)  # a new one starts from 0.1 again


# --- case 3: frozen at construction, unfrozen later --------------------------------------------------------------
def test_parameters_frozen_at_construction_get_their_factor_once_unfrozen():
    model = make_model()
    for p in model[0].parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # every parameter, the frozen ones too
    tb = TempBalance(model, opt, **KW)
    i = group_of(opt, model[0].weight)
    assert tb.group_units[i] == "0" and tb.factors["0"] != 1.0
    for p in model[0].parameters():
        p.requires_grad_(True)  # gradual unfreezing
    for b in batches(2):
        train_step(model, opt, b)
        tb.step()
    assert opt.param_groups[i]["lr"] == 0.1 * tb.factors["0"]
    assert_base_times_factor(tb, 0.1)


def test_block_adapter_units_include_frozen_block_parameters():
    from adapters.test_hf_encoder import tiny_roberta

    model = tiny_roberta()
    block0 = [p for n, p in model.named_parameters() if n.startswith("roberta.encoder.layer.0.")]
    for p in block0:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tb = TempBalance(model, opt, min_eigs=8, backend="torch")
    assert {tb.group_units[group_of(opt, p)] for p in block0} == {"roberta.encoder.layer.0"}


# --- case 5: a base scheduler given late -----------------------------------------------------------------------------
def test_assigning_a_scheduler_built_after_tempbalance_is_refused():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, **KW)
    late = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)  # its base_lrs are the factored lrs
    with pytest.raises(ValueError, match="built after TempBalance.*factors would apply twice"):
        tb.base_scheduler = late
    assert tb.base_scheduler is None


def test_assigning_a_scheduler_built_before_works_like_passing_it():
    model = make_model()
    groups = user_groups(model)
    original = [{id(p) for p in g["params"]} for g in groups]
    opt = torch.optim.AdamW(groups)
    shadow = Shadow(opt.param_groups, "lambda", 6)
    sched = SCHEDULES["lambda"](opt, 6)  # one lambda per original group: must be remapped to the split groups
    with pytest.warns(UserWarning, match="initial_lr"):
        tb = TempBalance(model, opt, **KW)
    tb.base_scheduler = sched
    src = source_of_groups(original, opt)
    assert len(sched.lr_lambdas) == len(opt.param_groups)
    for b in batches(6):
        train_step(model, opt, b)
        tb.step()
        shadow.step()
        assert_lrs(tb, shadow, src)


def test_a_scheduler_built_after_tempbalance_and_stepped_by_the_user_is_an_error():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, **KW)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train_step(model, opt, batches(1)[0])
    sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    with pytest.raises(RuntimeError, match="got 'initial_lr' after TempBalance.*base_scheduler=sched"):
        tb.step()
    assert [g["lr"] for g in opt.param_groups] == lrs and tb.step_count == 0


# --- case 6: tb.step() twice per optimizer step ------------------------------------------------------------------------
def test_stepping_tempbalance_twice_per_optimizer_step_is_refused():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** t)
    tb = TempBalance(model, opt, base_scheduler=sched, **KW)
    auto_step(tb)  # ... and the loop also calls tb.step()
    data = batches(4)
    with pytest.raises(RuntimeError, match="more than once after each.*auto_step"):
        for b in data:
            train_step(model, opt, b)  # auto_step: tb.step()
            tb.step()
    assert tb.step_count == 5  # refused at the third update, before a sixth base-schedule step


def test_a_skipped_optimizer_step_is_allowed():
    """GradScaler skips optimizer.step() on overflow and the loop still calls tb.step(): the schedule advances, as
    torch's own schedulers do, and no error."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, base_scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9 ** t), **KW)
    for t, b in enumerate(batches(8)):
        if t not in (2, 3, 6):  # overflows: no optimizer step
            train_step(model, opt, b)
        tb.step()
    assert tb.step_count == 8
    assert_base_times_factor(tb, 0.1 * 0.9 ** 8)


# --- case 8: LBFGS ---------------------------------------------------------------------------------------------------------
def test_lbfgs_is_refused_at_construction():
    model = make_model()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="LBFGS supports a single param group"):
        TempBalance(model, opt, **KW)
    assert len(opt.param_groups) == 1


# --- case 9: add_param_group after construction ------------------------------------------------------------------------
def test_added_param_group_is_adopted_with_its_units_factor():
    model = make_model()
    head = list(model[5].parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if all(p is not q for q in head)], lr=0.1)
    tb = TempBalance(model, opt, interval=None, **KW)
    opt.add_param_group({"params": head, "lr": 0.05})
    tb.epoch_end()  # the refresh runs inside the next optimizer.step(): no IndexError there
    train_step(model, opt, batches(1)[0])
    tb.step()
    i = group_of(opt, model[5].weight)
    assert tb.group_units[i] == "5" and opt.param_groups[i]["lr"] == 0.05 * tb.factors["5"]
    assert len(tb.history) == 2


def test_added_param_group_that_the_base_scheduler_cannot_schedule_is_refused():
    model = make_model()
    head = list(model[5].parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if all(p is not q for q in head)], lr=0.1)
    tb = TempBalance(model, opt, base_scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0), **KW)
    opt.add_param_group({"params": head, "lr": 0.05})
    train_step(model, opt, batches(1)[0])  # inside optimizer.step(): no crash
    before = [g["lr"] for g in opt.param_groups]
    with pytest.raises(ValueError, match=r"param group\(s\) \[\d+\] were added.*frozen ones too"):
        tb.step()
    assert [g["lr"] for g in opt.param_groups] == before and tb.step_count == 0


def test_load_state_dict_after_add_param_group():
    def run(seed):
        model = make_model(seed)
        head = list(model[5].parameters())
        opt = torch.optim.SGD([p for p in model.parameters() if all(p is not q for q in head)], lr=0.1)
        tb = TempBalance(model, opt, interval=2, **KW)
        opt.add_param_group({"params": head, "lr": 0.05})
        return model, opt, tb

    model, opt, tb = run(0)
    for b in batches(3):
        train_step(model, opt, b)
        tb.step()
    ckpt = checkpoint_roundtrip(model, opt, tb)
    model2, opt2, tb2 = run(3)
    model2.load_state_dict(ckpt["model"])
    tb2.load_state_dict(ckpt["tb"])
    opt2.load_state_dict(ckpt["opt"])
    assert tb2.get_last_lr() == tb.get_last_lr() and tb2.group_units == tb.group_units


# --- case 10: load_state_dict is atomic ------------------------------------------------------------------------------------
@pytest.mark.parametrize("saved_interval, loaded_interval", [(2, "adaptive"), ("adaptive", 2), (None, "adaptive")])
def test_load_state_dict_with_another_cadence_changes_nothing(saved_interval, loaded_interval):
    model = make_model()
    opt = torch.optim.AdamW(user_groups(model))
    src = TempBalance(model, opt, base_scheduler=SCHEDULES["cosine"](opt, 8), interval=saved_interval, **KW)
    for b in batches(3):
        train_step(model, opt, b)
        src.step()
    state = src.state_dict()

    model2 = make_model(1)
    opt2 = torch.optim.AdamW(user_groups(model2))
    sched2 = SCHEDULES["cosine"](opt2, 8)
    tb = TempBalance(model2, opt2, base_scheduler=sched2, interval=loaded_interval, **KW)
    train_step(model2, opt2, batches(1)[0])
    tb.step()
    mine, sched_state = tb.state_dict(), copy.deepcopy(sched2.state_dict())
    lrs, cadence = [g["lr"] for g in opt2.param_groups], tb.cadence.state_dict()
    with pytest.raises(ValueError, match="cadence: saved with"):
        tb.load_state_dict(state)
    assert sched2.state_dict() == sched_state and tb.cadence.state_dict() == cadence
    assert [g["lr"] for g in opt2.param_groups] == lrs and tb.step_count == 1
    assert tb.state_dict()["results"]["factors"] == mine["results"]["factors"]


def test_a_failing_base_scheduler_load_is_rolled_back():
    class Picky(torch.optim.lr_scheduler.LambdaLR):
        def load_state_dict(self, state):
            super().load_state_dict(state)
            if state.get("last_epoch", 0) > 1:
                raise RuntimeError("picky")

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, base_scheduler=Picky(opt, lambda t: 1.0), **KW)
    for b in batches(2):
        train_step(model, opt, b)
        tb.step()
    state = tb.state_dict()
    model2 = make_model()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    sched2 = Picky(opt2, lambda t: 1.0)
    tb2 = TempBalance(model2, opt2, base_scheduler=sched2, **KW)
    with pytest.raises(RuntimeError, match="picky"):
        tb2.load_state_dict(state)
    assert sched2.last_epoch == 0 and tb2.step_count == 0


# --- case 11: torch.compile ------------------------------------------------------------------------------------------------
def test_compiled_model_has_the_plain_models_names_and_checkpoints():
    model = make_model()
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    tb = TempBalance(compiled, opt, interval=1, **KW)
    assert tb.units == ["0", "3", "5", "7"] and "0" in tb.alphas
    x = torch.randn(4, 16)
    compiled(x).pow(2).mean().backward()
    opt.step()
    tb.step()
    plain = make_model()
    plain.load_state_dict(model.state_dict())
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1)
    tb_plain = TempBalance(plain, opt_plain, interval=1, **KW)
    tb_plain.load_state_dict(tb.state_dict())
    assert tb_plain.factors == tb.factors and tb_plain.get_last_lr() == tb.get_last_lr()


# --- case 7 (scheduler side): nothing tuned -------------------------------------------------------------------------------
def test_an_optimizer_over_another_models_parameters_is_refused():
    model, other = make_model(), make_model(1)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="none of the optimizer's 10 parameters belongs to the model"):
        TempBalance(model, opt, **KW)
    assert len(opt.param_groups) == 1


def test_every_unit_below_min_eigs_warns_once():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"nothing is tuned.*min_eigs=100") as rec:
        tb = TempBalance(model, opt, min_eigs=100, backend="torch", interval=1)
    assert len([w for w in rec if "nothing is tuned" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_step(model, opt, batches(1)[0])
        tb.step()
    assert [g["lr"] for g in opt.param_groups] == [0.1] * len(opt.param_groups)


def test_a_model_nothing_analyses_warns_with_the_reasons():
    model = nn.Sequential(nn.LSTM(16, 32))
    with pytest.warns(UserWarning, match=r"no matrix to analyse.*0.weight_ih_l0 \(LSTM recurrent weight"):
        tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), **KW)
    assert tb.get_last_lr() == [0.1]


# --- case 15 (general part): a per-epoch cadence that never sees epoch_end ---------------------------------------------
def test_per_epoch_cadence_without_epoch_end_refreshes_by_steps_and_warns_once():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, interval=PerEpoch(steps_per_epoch=3), **KW)
    with pytest.warns(UserWarning, match="and no epoch_end") as rec:
        for b in batches(9):
            train_step(model, opt, b)
            tb.step()
    assert len(rec) == 1
    assert [h["step"] for h in tb.history] == [0, 3, 6]  # before the 4th and 7th updates


def test_per_epoch_cadence_with_epoch_end_ignores_the_step_count():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, interval=PerEpoch(steps_per_epoch=4), **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for e in range(3):
            for b in batches(4, seed=e):
                train_step(model, opt, b)
                tb.step()
            tb.epoch_end()
    tb.alphas
    assert [h["step"] for h in tb.history] == [0, 4, 8, 12]
