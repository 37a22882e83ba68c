"""Several optimizers and several knobs driven by one spectral pass: ``TempBalance(model, [muon, adamw])`` and
``policy=[lr_policy, wd_policy]``. Every guarantee of the single-optimizer scheduler holds for each optimizer (base x
factor, never compounding; the pass once per refresh; one state dict that resumes exactly; misuse refused before
anything changes)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tempbalance import TempBalance
from tempbalance.training.mapping import MappingOptions
from tempbalance.training.policies import MappedPolicy, Policy
from test_scheduler_deferred import counted

KW = dict(min_eigs=8, backend="torch", unit="layer")


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 32), nn.Tanh(), nn.Linear(32, 24),
                         nn.LayerNorm(24))


def split(m: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Muon's usual split: the 2-d hidden matrices for Muon, everything else (vectors, the last layer) for AdamW."""
    hidden = [m[0].weight, m[2].weight]
    rest = [p for p in m.parameters() if all(p is not h for h in hidden)]
    return hidden, rest


def optimizers(m: nn.Module) -> list[torch.optim.Optimizer]:
    hidden, rest = split(m)
    return [torch.optim.Muon(hidden, lr=0.02, weight_decay=0.0), torch.optim.AdamW(rest, lr=1e-3)]


def schedulers(opts) -> list:
    return [torch.optim.lr_scheduler.LambdaLR(opts[0], lambda t: 1.0 / (1 + 0.1 * t)),
            torch.optim.lr_scheduler.LambdaLR(opts[1], lambda t: 0.5 ** (t // 3))]


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 24, generator=g), torch.randn(16, 24, generator=g)) for _ in range(n)]


def update(m, opts, x, y) -> None:
    """One training step: every optimizer steps once."""
    loss = nn.functional.mse_loss(m(x), y)
    for o in opts:
        o.zero_grad()
    loss.backward()
    for o in opts:
        o.step()


def train(m, opts, tb, data) -> list[list[float]]:
    """The lr of every group as each step used it."""
    used = []
    for x, y in data:
        used.append([float(g["lr"]) for o in opts for g in o.param_groups])
        update(m, opts, x, y)
        tb.step()
    return used


def test_two_optimizers_get_base_times_the_factors_of_one_pass():
    m = model()
    opts = optimizers(m)
    scheds = schedulers(opts)
    tb = TempBalance(m, opts, base_scheduler=scheds, interval=2, **KW)
    calls = counted(tb)
    twin = copy.deepcopy(m)  # the same model under one optimizer: the same analysis, so the same unit factors
    solo = TempBalance(twin, torch.optim.SGD(twin.parameters(), lr=0.1), **KW)
    assert tb.factors == solo.factors and len(tb.factors) == 3
    used = train(m, opts, tb, batches(6))
    assert calls == [2, 4, 6]  # one pass per refresh for both optimizers
    units = tb.group_units
    for t, lrs in enumerate(used[1:], start=1):  # step t's lrs: the schedules at t, the factors of the last pass
        assert len(lrs) == len(units) == sum(len(o.param_groups) for o in opts)
    base = tb.get_base_lr()
    factors = tb.factors
    lrs = tb.get_last_lr()
    np.testing.assert_allclose(lrs, [b * factors.get(u, 1.0) if u else b for b, u in zip(base, units)], rtol=1e-15)
    want_base = [0.02 / (1 + 0.1 * 6)] * len(opts[0].param_groups) + [1e-3 * 0.5 ** 2] * len(opts[1].param_groups)
    np.testing.assert_allclose(base, want_base, rtol=1e-12)  # each schedule, never compounded
    n_muon = len(opts[0].param_groups)
    assert {u for u in units[:n_muon] if u} == {"0", "2"}  # the hidden matrices
    assert {u for u in units[n_muon:] if u} == {"0", "2", "4"}  # their biases follow their layer's factor in AdamW


def test_resume_with_two_optimizers_and_schedulers_is_exact():
    data = batches(9)
    m = model()
    opts = optimizers(m)
    tb = TempBalance(m, opts, base_scheduler=schedulers(opts), interval=2, **KW)
    want = train(m, opts, tb, data)

    m1 = model()
    o1 = optimizers(m1)
    tb1 = TempBalance(m1, o1, base_scheduler=schedulers(o1), interval=2, **KW)
    train(m1, o1, tb1, data[:5])
    saved = dict(model=copy.deepcopy(m1.state_dict()), opts=[copy.deepcopy(o.state_dict()) for o in o1],
                 tb=copy.deepcopy(tb1.state_dict()))
    assert isinstance(saved["tb"]["groups"], list) and len(saved["tb"]["groups"]) == 2
    assert isinstance(saved["tb"]["base_scheduler"], list)

    m2 = model(seed=5)  # other initial weights: everything comes from the checkpoint
    o2 = optimizers(m2)
    tb2 = TempBalance(m2, o2, base_scheduler=schedulers(o2), interval=2, **KW)
    m2.load_state_dict(saved["model"])
    for o, s in zip(o2, saved["opts"]):
        o.load_state_dict(s)
    tb2.load_state_dict(saved["tb"])
    got = train(m2, o2, tb2, data[5:])
    assert got == want[5:]


def test_lr_and_weight_decay_from_one_pass():
    class Linear(Policy):  # weight decay x (0.5 .. 1.5) linearly over the alphas, as AlphaDecay's tb_linear_map
        def factors(self, unit_values, matrices):
            return MappingOptions(mapping="linear").factors(unit_values)

    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)
    lr_policy = MappedPolicy(MappingOptions(s_lo=1.0, s_hi=1.0))
    tb = TempBalance(m, opt, policy=[lr_policy, Linear(target="weight_decay")], interval=3, **KW)
    calls = counted(tb)
    train(m, [opt], tb, batches(6))
    assert calls == [3, 6]
    both = tb.factors_by_target
    assert set(both) == {"lr", "weight_decay"} and tb.factors == both["lr"]
    alphas = np.array([tb.unit_alphas[u] for u in tb.units])
    lin = 0.5 + (alphas - alphas.min()) / (alphas.max() - alphas.min())
    np.testing.assert_allclose([both["weight_decay"][u] for u in tb.units], lin, rtol=1e-12)
    for g, u in zip(opt.param_groups, tb.group_units):
        assert g["weight_decay"] == pytest.approx(0.1 * both["weight_decay"].get(u, 1.0) if u else 0.1, rel=1e-14)
        assert g["lr"] == pytest.approx(1e-3 * both["lr"].get(u, 1.0) if u else 1e-3, rel=1e-14)
    record = tb.history[-1]
    assert record["factors"] == both["lr"] and record["knobs"]["weight_decay"]["factors"] == both["weight_decay"]
    state = tb.state_dict()
    assert state["settings"]["targets"] == ["lr", "weight_decay"] and "weight_decay" in state["results"]["knobs"]
    m3 = model()
    single = TempBalance(m3, torch.optim.AdamW(m3.parameters(), lr=1e-3), **KW)
    with pytest.raises(ValueError, match="targets"):
        single.load_state_dict(state)


def test_misuse_is_refused_before_anything_changes():
    m = model()
    opts = optimizers(m)
    scheds = schedulers(opts)
    before = [[dict(g) for g in o.param_groups] for o in opts]
    with pytest.raises(ValueError, match="in optimizer 0 and optimizer 1"):
        TempBalance(m, [opts[0], torch.optim.SGD(m.parameters(), lr=0.1)], **KW)
    with pytest.raises(ValueError, match="2 optimizers"):
        TempBalance(m, opts, base_scheduler=scheds[:1], **KW)
    with pytest.raises(ValueError, match="one optimizer"):
        TempBalance(m, opts, base_scheduler=scheds, compat=True, min_eigs=8)
    with pytest.raises(ValueError, match="share one"):
        TempBalance(m, opts, policy=[MappedPolicy(), MappedPolicy()], **KW)
    with pytest.raises(ValueError, match="different optimizer"):
        TempBalance(m, opts, base_scheduler=list(reversed(scheds)), **KW)
    assert [[dict(g) for g in o.param_groups] for o in opts] == before


def test_a_new_tempbalance_on_either_optimizer_detaches_the_old_one_from_both():
    m = model()
    opts = optimizers(m)
    first = TempBalance(m, opts, **KW)
    second = TempBalance(m, opts[1:], **KW)
    with pytest.raises(RuntimeError, match="newer TempBalance"):
        first.step()
    # the first gave the Muon groups back their un-factored lrs, the second owns AdamW's
    assert all(g["lr"] == 0.02 for g in opts[0].param_groups)
    assert second.get_base_lr() == [1e-3] * len(opts[1].param_groups)


def test_stepping_tempbalance_twice_per_update_is_refused_with_two_optimizers():
    m = model()
    opts = optimizers(m)
    tb = TempBalance(m, opts, **KW)
    x, y = batches(1)[0]
    with pytest.raises(RuntimeError, match="more than once"):
        for _ in range(4):
            update(m, opts, x, y)
            tb.step()
            tb.step()


class Ramp(MappedPolicy):
    """A transition written against the seam: each refresh's factors are reached linearly over ``steps`` steps from
    the factors in force before it (the state a resumed run needs: the start step and both ends)."""

    def __init__(self, steps: int, **kw):
        super().__init__(**kw)
        self.steps, self.start, self.before, self.after = steps, None, {}, {}

    def committed(self, factors, step, groups):
        self.before = dict(self.after) if self.after else dict(factors)  # the first pass: at once
        self.after, self.start = dict(factors), step

    def write(self, book, factors, step):
        w = 1.0 if self.start is None else min(1.0, (step - self.start) / self.steps)
        book.apply({u: (1 - w) * self.before[u] + w * f for u, f in self.after.items()})

    def state_dict(self):
        return dict(start=self.start, before=self.before, after=self.after) if self.start is not None else {}

    def load_state_dict(self, state):
        self.start, self.before, self.after = state["start"], dict(state["before"]), dict(state["after"])


def test_a_transition_policy_reaches_each_refreshs_factors_over_its_steps_and_resumes():
    data = batches(10)

    def run(steps_before_checkpoint=None):
        m = model()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        tb = TempBalance(m, opt, policy=Ramp(4, mapping=MappingOptions(s_lo=1.0)), interval=5, **KW)
        if steps_before_checkpoint is None:
            return tb, train(m, [opt], tb, data)
        train(m, [opt], tb, data[:steps_before_checkpoint])
        saved = copy.deepcopy(dict(m=m.state_dict(), o=opt.state_dict(), tb=tb.state_dict()))
        m2 = model(seed=3)
        opt2 = torch.optim.SGD(m2.parameters(), lr=0.1)
        tb2 = TempBalance(m2, opt2, policy=Ramp(4, mapping=MappingOptions(s_lo=1.0)), interval=5, **KW)
        m2.load_state_dict(saved["m"])
        opt2.load_state_dict(saved["o"])
        tb2.load_state_dict(saved["tb"])
        assert saved["tb"]["policies"][0]["start"] == 5
        return tb2, train(m2, [opt2], tb2, data[steps_before_checkpoint:])

    tb, used = run()
    first, second = tb.history[0]["factors"], tb.history[1]["factors"]  # the passes at steps 0 and 5
    unit = tb.units[0]
    k = tb.group_units.index(unit)
    # step t (1-based) uses the lrs written after step t - 1: the ramp at t - 1
    assert used[0][k] == pytest.approx(0.1 * first[unit])  # the first pass's factors at once (nothing before)
    for t in range(6, 10):
        w = min(1.0, (t - 1 - 5) / 4)
        assert used[t - 1][k] == pytest.approx(0.1 * ((1 - w) * first[unit] + w * second[unit]), rel=1e-12)
    assert first[unit] != second[unit]
    _, resumed = run(steps_before_checkpoint=7)
    assert resumed == used[7:]


def test_each_optimizer_follows_its_own_schedule_at_every_step_never_compounded():
    """12 updates, a refresh every 2: at every update each group's lr is its own optimizer's schedule at that step
    times the factor in force (Muon 1 / (1 + 0.1 t) by LambdaLR; AdamW x 0.9 a step by ExponentialLR, which reads
    the group's current lr: a factor left in it would compound)."""
    m = model()
    opts = optimizers(m)
    scheds = [torch.optim.lr_scheduler.LambdaLR(opts[0], lambda t: 1.0 / (1 + 0.1 * t)),
              torch.optim.lr_scheduler.ExponentialLR(opts[1], gamma=0.9)]
    tb = TempBalance(m, opts, base_scheduler=scheds, interval=2, **KW)
    factors = {0: tb.factors}
    tb.add_refresh_callback(lambda r: factors.update({r["step"]: dict(r["factors"])}))
    used = train(m, opts, tb, batches(12))
    n_muon = len(opts[0].param_groups)
    units = tb.group_units
    for t, lrs in enumerate(used):
        f = factors[max(s for s in factors if s <= t)]
        want = [0.02 / (1 + 0.1 * t)] * n_muon + [1e-3 * 0.9 ** t] * (len(units) - n_muon)
        np.testing.assert_allclose(lrs, [w * f.get(u, 1.0) if u else w for w, u in zip(want, units)], rtol=1e-13)
    assert len(factors) == 7 and factors[2] != factors[4]


def test_close_gives_every_optimizer_its_own_schedule_back():
    m = model()
    opts = optimizers(m)
    scheds = schedulers(opts)
    tb = TempBalance(m, opts, base_scheduler=scheds, interval=2, **KW)
    train(m, opts, tb, batches(5))
    assert any(g["lr"] != 0.02 / 1.5 for g in opts[0].param_groups)  # factored while attached
    tb.close()
    assert all(g["lr"] == pytest.approx(0.02 / 1.5, rel=1e-15) and g["tb_factor"] == 1.0 for g in opts[0].param_groups)
    assert all(g["lr"] == pytest.approx(1e-3 * 0.5, rel=1e-15) and g["tb_factor"] == 1.0 for g in opts[1].param_groups)
    with pytest.raises(RuntimeError, match="closed"):
        tb.step()
    for s in scheds:  # the user's schedulers carry on from the un-factored values
        s.step()
    assert all(g["lr"] == pytest.approx(0.02 / 1.6, rel=1e-15) for g in opts[0].param_groups)
    assert tb.factors  # reads keep working


def test_accelerate_style_wrappers_around_both_optimizers_give_the_same_run():
    """TempBalance over [AcceleratedOptimizer-like(muon), AcceleratedOptimizer-like(adamw)] (wrappers that share the
    inner optimizers' param_groups and skip Optimizer.__init__) gives the run of the bare optimizers exactly."""
    from test_scheduler_deferred import AccelerateLike

    data = batches(7)
    m = model()
    opts = optimizers(m)
    want = train(m, opts, TempBalance(m, opts, base_scheduler=schedulers(opts), interval=3, **KW), data)
    m2 = model()
    inner = optimizers(m2)
    wrapped = [AccelerateLike(o) for o in inner]
    tb = TempBalance(m2, wrapped, base_scheduler=schedulers(inner), interval=3, **KW)
    assert train(m2, wrapped, tb, data) == want
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
