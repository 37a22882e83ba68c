"""Property-based tests of TempBalance (hypothesis; "ci" profile by default, ``--hypothesis-profile thorough`` for
more): random sequences of step, epoch_end, refresh, checkpoint-and-resume into fresh objects, freeze/unfreeze
(also before construction), NaN injected into a layer and a second TempBalance built on the same optimizer, under
random base schedules, optimizers and cadences.

Invariants after every operation: every group's lr is base_lr(t) (from an independent shadow schedule) times the
factor of the unit its parameters belong to in the model, never compounding; factors and lrs finite and inside the
mapping's range; a failed pass changes no optimizer state and keeps the failed unit's factor; a run checkpointed
and resumed into fresh objects built with other weights equals the uninterrupted one, bit for bit."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from schedule_cases import SCHEDULES, Shadow, assert_lrs, source_of_groups
from tempbalance.training.scheduler import TempBalance
from test_scheduler import KW, batches, checkpoint_roundtrip, make_model, train_step, user_groups

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

OPTIMIZERS = {
    "sgd": lambda groups: torch.optim.SGD(groups, momentum=0.9),
    "adamw": lambda groups: torch.optim.AdamW(groups),
    "adamw_foreach": lambda groups: torch.optim.AdamW(groups, foreach=True),
    "adamw_fused_tensor_lr": lambda groups: torch.optim.AdamW(
        [dict(g, lr=torch.tensor(g["lr"])) for g in groups], fused=True),
}
LAYERS = (0, 3, 5)  # the tuned Linears of make_model
OPS = ("step", "step", "step", "epoch_end", "refresh", "checkpoint", "freeze", "unfreeze", "nan_refresh", "rebuild")
RANGES = {"sigmoid": (10 ** -1.0, 10 ** 0.5), "linear": (0.5, 1.5)}  # TBSigmoid with s_lo=2, s_hi=1; TBLinearMap


@st.composite
def scenarios(draw) -> dict:
    return dict(
        schedule=draw(st.sampled_from(sorted(SCHEDULES))),
        optimizer=draw(st.sampled_from(sorted(OPTIMIZERS))),
        interval=draw(st.sampled_from([1, 2, 3, None, "adaptive"])),
        lag=draw(st.sampled_from([0, 0, 1])),
        stagger=draw(st.sampled_from([1, 1, 2])),
        mapping=draw(st.sampled_from(sorted(RANGES))),
        frozen=draw(st.sets(st.sampled_from(LAYERS), max_size=2)),  # frozen before TempBalance is built
        ops=draw(st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(LAYERS)), min_size=2, max_size=12)),
    )


class Run:
    """Model, optimizer (the usual decay / no-decay groups), base scheduler and TempBalance of one scenario."""

    def __init__(self, sc: dict, total: int, seed: int, shadow_for: list | None = None):
        self.model = make_model(seed)
        self.frozen: set[int] = set()
        for layer in sc["frozen"]:
            self.set_frozen(layer, True)
        groups = user_groups(self.model)
        self.original = [{id(p) for p in g["params"]} for g in groups]
        self.opt = OPTIMIZERS[sc["optimizer"]](groups)
        if shadow_for is not None:
            shadow_for.append(Shadow(self.opt.param_groups, sc["schedule"], total))
        self.sc = sc
        self.tb = self.build(SCHEDULES[sc["schedule"]](self.opt, total))

    def build(self, base_scheduler) -> TempBalance:
        sc = self.sc
        return TempBalance(self.model, self.opt, base_scheduler=base_scheduler, interval=sc["interval"], lag=sc["lag"],
                           stagger=sc["stagger"], mapping=sc["mapping"], **KW)

    def set_frozen(self, layer: int, frozen: bool) -> None:
        (self.frozen.add if frozen else self.frozen.discard)(layer)
        for p in self.model[layer].parameters():
            p.requires_grad_(not frozen)

    def resumed(self, sc: dict, total: int) -> "Run":
        """This run through a checkpoint into objects built with other weights."""
        ckpt = checkpoint_roundtrip(self.model, self.opt, self.tb)
        fresh = Run(sc, total, seed=7)
        fresh.model.load_state_dict(ckpt["model"])
        fresh.opt.load_state_dict(ckpt["opt"])
        fresh.tb.load_state_dict(ckpt["tb"])
        for layer in set(LAYERS):
            fresh.set_frozen(layer, layer in self.frozen)
        self.tb.close()
        return fresh


def same_optimizer_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].keys() == b[k].keys() and all(torch.equal(torch.as_tensor(a[k][n]), torch.as_tensor(b[k][n]))
                                           for n in a[k]) for k in a)


def check(straight: Run, resumed: Run, shadow: Shadow, mapping: str) -> None:
    tb = straight.tb
    for layer in LAYERS:  # a parameter's unit follows the model, frozen or not
        group = next(j for j, g in enumerate(straight.opt.param_groups)
                     if any(p is straight.model[layer].weight for p in g["params"]))
        assert tb.group_units[group] == str(layer)
    src = source_of_groups(straight.original, straight.opt)
    assert_lrs(tb, shadow, src, exact=not isinstance(straight.opt.param_groups[0]["lr"], torch.Tensor))
    lo, hi = RANGES[mapping]
    assert all(math.isfinite(f) and lo <= f <= hi for f in tb.factors.values()), tb.factors
    assert all(math.isfinite(lr) for lr in tb.get_last_lr())
    assert resumed.tb.get_last_lr() == tb.get_last_lr() and resumed.tb.factors == tb.factors
    assert resumed.tb.step_count == tb.step_count and len(resumed.tb.history) == len(tb.history)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


@given(sc=scenarios())
def test_any_sequence_keeps_lr_equal_to_base_times_factor_and_resumes_exactly(sc):
    total = sum(op == "step" for op, _ in sc["ops"]) + 1
    data = iter(batches(len(sc["ops"])))
    shadows: list[Shadow] = []
    straight = Run(sc, total, seed=0, shadow_for=shadows)
    other = Run(sc, total, seed=0)  # the same run, checkpointed and resumed at the "checkpoint" ops
    shadow = shadows[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the NaN passes warn, by design
        for op, layer in sc["ops"]:
            if op == "step":
                batch = next(data)
                for run in (straight, other):
                    train_step(run.model, run.opt, batch)
                    run.tb.step()
                shadow.step()
            elif op == "epoch_end":
                straight.tb.epoch_end()
                other.tb.epoch_end()
            elif op == "refresh":
                straight.tb.refresh()
                other.tb.refresh()
            elif op == "checkpoint":
                other = other.resumed(sc, total)
            elif op in ("freeze", "unfreeze"):
                straight.set_frozen(layer, op == "freeze")
                other.set_frozen(layer, op == "freeze")
            elif op == "rebuild":  # a notebook cell building TempBalance again, on the same optimizer and schedule
                for run in (straight, other):
                    run.tb = run.build(run.tb.base_scheduler)
            else:  # nan_refresh: a layer's weight turns NaN for one pass
                unit = str(layer)
                kept = straight.tb.factors[unit]
                opt_state = copy.deepcopy(straight.opt.state_dict()["state"])
                saved = straight.model[layer].weight[0, 0].item()
                for run in (straight, other):
                    with torch.no_grad():
                        run.model[layer].weight[0, 0] = float("nan")
                    run.tb.refresh()
                    with torch.no_grad():
                        run.model[layer].weight[0, 0] = saved
                assert straight.tb.factors[unit] == kept and unit in straight.tb.history[-1]["failed"]
                assert same_optimizer_state(opt_state, straight.opt.state_dict()["state"])
            check(straight, other, shadow, sc["mapping"])
