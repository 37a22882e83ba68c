"""TempBalance: factors per SPEC §3, base_lr(t) x factor under every schedule and optimizer, resume, failures."""
from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from schedule_cases import SCHEDULES, Shadow, assert_lrs, source_of_groups
from tempbalance import analysis
from tempbalance.training.scheduler import TempBalance

T = 6  # optimizer steps per run
KW = dict(min_eigs=8, backend="torch")


def make_model(seed: int = 0) -> nn.Sequential:
    """Four analysable layers (16, 48, 24 and 3 eigenvalues: the last stays untuned) and a LayerNorm."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 48), nn.LayerNorm(48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(),
                         nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 3))


def user_groups(model, lr=1e-2):
    """The usual decay / no-decay split, with different lrs: TempBalance must split these by unit, never merge."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": 0.1, "lr": lr}, {"params": other, "weight_decay": 0.0, "lr": lr / 2}]


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 16, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def train_step(model, opt, batch):
    x, y = batch
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def numpy_alpha(w: np.ndarray, xmin_pos: float = 2.0) -> float:
    """Independent PL_Alpha_Hill: float64 SVD, median xmin (SPEC §2)."""
    lam = np.sort(np.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2)
    i = int(len(lam) // xmin_pos)
    return 1.0 + (len(lam) - i) / np.sum(np.log(lam[i:] / lam[i]))


def sigmoid_factor(a: np.ndarray, s_lo=2.0, s_hi=1.0, tau=10.0) -> np.ndarray:
    x = a - a.mean()
    phi = 1 / (1 + np.exp(-tau * x)) - 0.5
    return 10 ** np.where(x > 0, s_hi * phi, s_lo * phi)


# --- factors follow SPEC ------------------------------------------------------------------------------------------
def test_initial_factors_follow_spec_sigmoid(backend):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, **{**KW, "backend": backend})
    tuned = ["0", "3", "5"]  # the last Linear has 3 eigenvalues < min_eigs
    assert tb.units == ["0", "3", "5", "7"]
    ref = np.array([numpy_alpha(model[int(u)].weight.detach().numpy()) for u in tuned])
    np.testing.assert_allclose([tb.alphas[u] for u in tuned], ref, rtol=1e-4)
    assert math.isnan(tb.alphas["7"]) and tb.factors["7"] == 1.0
    np.testing.assert_allclose([tb.factors[u] for u in tuned], sigmoid_factor(ref), rtol=1e-4)
    assert np.argsort(ref).tolist() == np.argsort([tb.factors[u] for u in tuned]).tolist()  # higher alpha, larger LR
    for g, u in zip(opt.param_groups, tb.group_units):
        assert g["lr"] == 0.1 * tb.factors.get(u, 1.0) if u else g["lr"] == 0.1
    assert tb.alpha_std == pytest.approx(float(np.std(ref)), rel=1e-4)


def test_linear_mapping_and_mean_unit_gets_factor_one():
    model = make_model()
    model[5] = nn.Linear(48, 48)
    model[5].weight.data.copy_(model[3].weight.data)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, include=r"^[35]$", **KW)  # two units with identical weights: both at the mean
    assert tb.factors == {"3": 1.0, "5": 1.0}
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), mapping="linear", s1=0.5, s2=1.5, **KW)
    a = np.array([tb.unit_alphas[u] for u in ("0", "3")])
    lo, hi = min(a.min(), tb.unit_alphas["5"]), max(a.max(), tb.unit_alphas["5"])
    np.testing.assert_allclose([tb.factors[u] for u in ("0", "3")], 0.5 + (a - lo) / (hi - lo), rtol=1e-12)


@pytest.mark.parametrize("metric", ["spectral_norm", "stable_rank", "alpha_hat"])
def test_ablation_metric_drives_the_mapping(metric):
    model = make_model()
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), metric=metric, **KW)
    rep = tb.last_report
    vals = np.array([getattr(rep[u], metric) for u in ("0", "3", "5")])
    np.testing.assert_allclose([tb.unit_alphas[u] for u in ("0", "3", "5")], vals, rtol=1e-12)
    np.testing.assert_allclose([tb.factors[u] for u in ("0", "3", "5")], sigmoid_factor(vals), rtol=1e-9)


def test_include_exclude_remove_first_last():
    model = make_model()
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), exclude=r"^3$", remove_first=True, **KW)
    assert tb.units == ["5", "7"] and "3" not in tb.alphas
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), remove_last=True, **KW)
    assert tb.units == ["0", "3", "5"]
    assert all(u in (None, "0", "3", "5") for u in tb.group_units)
    with pytest.raises(ValueError, match="include"):
        TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), include="(", **KW)


# --- base_lr(t) x factor under every schedule ------------------------------------------------------------------
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_lr_is_base_schedule_times_factor(schedule):
    model = make_model()
    groups = user_groups(model)
    orig = [{id(p) for p in g["params"]} for g in groups]
    opt = torch.optim.AdamW(groups)
    shadow = Shadow(opt.param_groups, schedule, T)  # before the real scheduler writes its t=0 lr
    sched = SCHEDULES[schedule](opt, T)
    tb = TempBalance(model, opt, base_scheduler=sched, interval=2, **KW)
    src = source_of_groups(orig, opt)
    assert len(opt.param_groups) > 2 and sorted(set(src)) == [0, 1]  # split, not merged
    assert all(len(s.base_lrs) == len(opt.param_groups) for s in [sched, *getattr(sched, "_schedulers", [])]
               if hasattr(s, "base_lrs"))
    assert_lrs(tb, shadow, src)
    seen = set()
    for b in batches(T):
        train_step(model, opt, b)
        tb.step()
        shadow.step()
        assert_lrs(tb, shadow, src)
        seen.add(tuple(sorted(tb.factors.items())))
    assert len(tb.history) == 1 + T // 2
    assert len(seen) > 1  # factors were refreshed and changed: the check covered more than one factor set


def test_no_compounding_with_constant_lr_and_many_refreshes():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tb = TempBalance(model, opt, interval=1, **KW)
    for b in batches(12):
        train_step(model, opt, b)
        tb.step()
        for g, u in zip(opt.param_groups, tb.group_units):
            assert g["lr"] == 0.05 * (tb.factors[u] if u else 1.0)
    assert all(10 ** -2.0 <= f <= 10 ** 0.5 for f in tb.factors.values())  # SPEC bounds of TBSigmoid


def test_groups_split_copy_every_hyperparameter():
    model = make_model()
    groups = user_groups(model)
    groups[0]["betas"] = (0.8, 0.95)
    opt = torch.optim.Adam(groups, amsgrad=True)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    tb = TempBalance(model, opt, **KW)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_params
    for g in opt.param_groups:
        src = 0 if g["weight_decay"] == 0.1 else 1
        assert g["betas"] == ((0.8, 0.95) if src == 0 else (0.9, 0.999)) and g["amsgrad"] is True
    for g, u in zip(opt.param_groups, tb.group_units):  # every group belongs to exactly one unit (or none)
        assert u is None or u in tb.units
        assert g.get("tb_unit") == u
    # the LayerNorm and the last layer are not in any tuned unit... the last one is a unit below min_eigs
    ln = {id(p) for p in model[1].parameters()}
    assert all(tb.group_units[i] is None for i, g in enumerate(opt.param_groups) if {id(p) for p in g["params"]} & ln)


def test_base_scheduler_on_another_optimizer_is_refused():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="different optimizer"):
        TempBalance(model, opt, base_scheduler=torch.optim.lr_scheduler.StepLR(other, 2), **KW)


def test_scheduler_stepped_outside_is_detected_and_adopted_as_base():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, **KW)
    for g in opt.param_groups:
        g["lr"] = 0.02  # manual warmup written by the user
    with pytest.warns(UserWarning, match="changed outside"):
        tb.step()
    assert tb.get_base_lr() == [0.02] * len(opt.param_groups)
    assert [g["lr"] for g in opt.param_groups] == [0.02 * tb.factors.get(u, 1.0) if u else 0.02 for u in tb.group_units]


@pytest.mark.parametrize("metric_arg", [1.0])
def test_reduce_on_plateau_gets_its_metric(metric_arg):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    tb = TempBalance(model, opt, base_scheduler=sched, **KW)
    tb.step(metric_arg)
    tb.step(metric_arg)  # no improvement: halves
    assert tb.get_base_lr() == [0.05] * len(opt.param_groups)


# --- optimizers -------------------------------------------------------------------------------------------------
class SAM(torch.optim.Optimizer):
    """A minimal SAM wrapper: its param_groups are the base optimizer's list."""

    def __init__(self, params, base_cls, rho=0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_cls(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self):
        for g in self.param_groups:
            norm = torch.norm(torch.stack([p.grad.norm() for p in g["params"] if p.grad is not None])) + 1e-12
            for p in g["params"]:
                if p.grad is not None:
                    e = p.grad * g["rho"] / norm
                    p.add_(e)
                    self.state[p]["e"] = e

    @torch.no_grad()
    def second_step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if "e" in self.state[p]:
                    p.sub_(self.state[p]["e"])
        self.base_optimizer.step()

    def step(self, closure=None):
        raise RuntimeError("use first_step/second_step")


def _adafactor(params):
    from transformers.optimization import Adafactor

    return Adafactor(params, lr=1e-2, relative_step=False, scale_parameter=False, warmup_init=False)


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    "adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
    "adamw_fused_tensor_lr": lambda ps: torch.optim.AdamW(ps, lr=torch.tensor(1e-2), fused=True),
    "adafactor": _adafactor,
    "sam": lambda ps: SAM(ps, torch.optim.SGD, lr=0.05, momentum=0.9),
}


@pytest.mark.filterwarnings("ignore:Detected call of")  # SAM's step() is not the one that runs
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizers(name):
    model = make_model()
    groups = user_groups(model)
    for g in groups:
        g.pop("lr")
    orig = [{id(p) for p in g["params"]} for g in groups]
    opt = OPTIMIZERS[name](groups)
    shadow = Shadow(opt.param_groups, "hf_linear", T)
    sched = SCHEDULES["hf_linear"](opt, T)
    lr_tensors = [g["lr"] for g in opt.param_groups]
    tb = TempBalance(model, opt, base_scheduler=sched, interval=2, **KW)
    src = source_of_groups(orig, opt)
    before = copy.deepcopy(model.state_dict())
    for x, y in batches(T):
        if name == "sam":
            nn.functional.cross_entropy(model(x), y).backward()
            opt.first_step()
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.second_step()
            opt.zero_grad()
        else:
            train_step(model, opt, (x, y))
        tb.step()
        shadow.step()
        assert_lrs(tb, shadow, src, exact=not name.endswith("tensor_lr"))
    if name.endswith("tensor_lr"):  # updated in place: the original tensors are still the groups' lr
        assert all(isinstance(g["lr"], torch.Tensor) for g in opt.param_groups)
        assert opt.param_groups[0]["lr"] is lr_tensors[0]
        assert len({id(g["lr"]) for g in opt.param_groups}) == len(opt.param_groups)  # split groups own a copy
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(before["3.weight"], after["3.weight"])


def test_adafactor_relative_step_is_refused():
    from transformers.optimization import Adafactor

    model = make_model()
    with pytest.raises(ValueError, match="relative_step"):
        TempBalance(model, Adafactor(model.parameters(), lr=None, relative_step=True), **KW)


def test_weight_decay_target():
    model = make_model()
    groups = user_groups(model)
    orig = [{id(p) for p in g["params"]} for g in groups]
    opt = torch.optim.AdamW(groups)
    shadow = Shadow(opt.param_groups, "cosine", T)
    sched = SCHEDULES["cosine"](opt, T)
    tb = TempBalance(model, opt, base_scheduler=sched, target="weight_decay", interval=2, **KW)
    src = source_of_groups(orig, opt)
    for b in batches(T):
        train_step(model, opt, b)
        tb.step()
        shadow.step()
        for j, (g, u) in enumerate(zip(opt.param_groups, tb.group_units)):
            assert g["lr"] == shadow.lrs()[src[j]]  # lr untouched
            assert g["weight_decay"] == [0.1, 0.0][src[j]] * (tb.factors[u] if u else 1.0)


# --- resume -----------------------------------------------------------------------------------------------------
def checkpoint_roundtrip(model, opt, tb) -> dict:
    """Model, optimizer and TempBalance state through torch.save / torch.load(weights_only=True), as users do."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "tb": tb.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def train_and_resume(fresh, data, cut: int):
    """The same run twice: straight through ``data``; and stopped after ``data[:cut]``, taken through a checkpoint
    into objects built with other initial weights (so everything must come from the checkpoint) and continued.
    ``fresh(seed)`` -> (model, opt, tb). Returns the straight, stopped and resumed (model, opt, tb) and the
    checkpoint."""
    def train(run, batches_):
        model, opt, tb = run
        for b in batches_:
            train_step(model, opt, b)
            tb.step()

    straight, stopped = fresh(0), fresh(0)
    train(straight, data)
    train(stopped, data[:cut])
    ckpt = checkpoint_roundtrip(*stopped)
    resumed = fresh(4)
    resumed[0].load_state_dict(ckpt["model"])
    resumed[1].load_state_dict(ckpt["opt"])
    resumed[2].load_state_dict(ckpt["tb"])
    train(resumed, data[cut:])
    return straight, stopped, resumed, ckpt


def _fresh(seed=0):
    model = make_model(seed)
    opt = torch.optim.AdamW(user_groups(model))
    sched = SCHEDULES["sequential"](opt, 8)
    return model, opt, sched


def test_resume_is_bit_for_bit():
    data = batches(8)
    model, opt, sched = _fresh()
    tb = TempBalance(model, opt, base_scheduler=sched, interval=3, **KW)
    for b in data:
        train_step(model, opt, b)
        tb.step()

    model2, opt2, sched2 = _fresh()
    tb2 = TempBalance(model2, opt2, base_scheduler=sched2, interval=3, **KW)
    for b in data[:4]:
        train_step(model2, opt2, b)
        tb2.step()
    ckpt = checkpoint_roundtrip(model2, opt2, tb2)

    model3, opt3, sched3 = _fresh(seed=5)  # different init: everything must come from the checkpoint
    model3.load_state_dict(ckpt["model"])
    tb3 = TempBalance(model3, opt3, base_scheduler=sched3, interval=3, **KW)
    tb3.load_state_dict(ckpt["tb"])
    opt3.load_state_dict(ckpt["opt"])
    for b in data[4:]:
        train_step(model3, opt3, b)
        tb3.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, model3.state_dict()[k]), k
    assert tb.get_last_lr() == tb3.get_last_lr()
    assert tb.factors == tb3.factors and tb.step_count == tb3.step_count == 8
    assert len(tb.history) == len(tb3.history)


def test_load_state_dict_with_a_changed_model_names_the_layers():
    model, opt, sched = _fresh()
    state = TempBalance(model, opt, base_scheduler=sched, **KW).state_dict()
    other = make_model()
    other[3] = nn.Linear(48, 40)
    other[5] = nn.Linear(40, 24)
    tb = TempBalance(other, torch.optim.AdamW(user_groups(other)), base_scheduler=None, **KW)
    with pytest.raises(ValueError, match=r"shapes changed.*'3'"):
        tb.load_state_dict(state)
    extra = nn.Sequential(*make_model(), nn.Linear(3, 3))
    tb = TempBalance(extra, torch.optim.AdamW(user_groups(extra)), **KW)
    with pytest.raises(ValueError, match="new layers"):
        tb.load_state_dict(state)
    tb = TempBalance(model, torch.optim.AdamW(user_groups(model)), unit="layer", **KW)
    with pytest.raises(ValueError, match="unit='block'"):
        tb.load_state_dict(state)
    tb = TempBalance(model, torch.optim.AdamW(user_groups(model)), **KW)
    with pytest.raises(ValueError, match="base_scheduler"):
        tb.load_state_dict(state)


# --- failures ---------------------------------------------------------------------------------------------------
def test_nan_weights_mid_run_keep_factors_and_optimizer_state():
    model = make_model()
    opt = torch.optim.AdamW(user_groups(model))
    tb = TempBalance(model, opt, base_scheduler=SCHEDULES["hf_linear"](opt, T), interval=1, **KW)
    data = batches(T)
    for b in data[:2]:
        train_step(model, opt, b)
        tb.step()
    kept = tb.factors["3"]
    state_before = copy.deepcopy(opt.state_dict()["state"])
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"\['3'\].*layer '3'.*NaN"):
        tb.step()  # refresh sees the NaN
    assert tb.factors["3"] == kept and tb.history[-1]["failed"] == ["3"]
    assert all(math.isfinite(f) for f in tb.factors.values())
    assert all(math.isfinite(g["lr"]) for g in opt.param_groups)
    state_after = opt.state_dict()["state"]  # the spectral pass did not touch the optimizer state
    for k, st in state_before.items():
        for name, v in st.items():
            assert torch.equal(v, state_after[k][name])
    with torch.no_grad():
        model[3].weight[0, 0] = 0.0
    train_step(model, opt, data[2])
    tb.step()  # recovered: tuned again
    assert tb.history[-1]["failed"] == [] and math.isfinite(tb.alphas["3"])


def test_base_scheduler_exception_leaves_factors_applied():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    tb = TempBalance(model, opt, base_scheduler=sched, **KW)
    lrs = tb.get_last_lr()
    with pytest.raises(TypeError):
        tb.step()  # ReduceLROnPlateau needs its metric
    assert tb.get_last_lr() == lrs


def test_exception_inside_analysis_leaves_groups_untouched(monkeypatch):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, interval=1, **KW)
    factors, lrs = tb.factors, tb.get_last_lr()

    def boom(*a, **k):
        raise MemoryError("simulated")

    monkeypatch.setattr(analysis, "analyze_specs", boom)
    with pytest.warns(RuntimeWarning, match="simulated"):
        tb.step()
    assert tb.factors == factors and tb.get_last_lr() == lrs
    with pytest.raises(MemoryError):
        tb.refresh()
    assert tb.get_last_lr() == lrs


# --- interval / epoch / state -----------------------------------------------------------------------------------
def test_interval_and_epoch_end():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, interval=None, **KW)
    for b in batches(3):
        train_step(model, opt, b)
        tb.step()
    assert len(tb.history) == 1
    tb.epoch_end()
    assert len(tb.history) == 2 and tb.history[-1]["step"] == 3 and tb.epoch == 1
    assert tb.spectral_seconds >= sum(h["seconds"] for h in tb.history) * 0.999
    tb = TempBalance(model, opt, interval=2, **KW)
    tb.epoch_end()
    assert len(tb.history) == 1  # with an interval, epochs only count


def test_bad_arguments_name_the_argument():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs, match in [(dict(unit="blocks"), "unit"), (dict(mapping="tanh"), "mapping"), (dict(metric="x"), "metric"),
                          (dict(target="momentum"), "target"), (dict(interval=0), "interval"), (dict(tau=-1), "tau"),
                          (dict(min_eigs=-1), "min_eigs"), (dict(xmin_pos=1.0), "xmin_pos")]:
        with pytest.raises(ValueError, match=match):
            TempBalance(model, opt, **{**KW, **kwargs})


def test_silent_when_everything_is_fine():
    model = make_model()
    opt = torch.optim.AdamW(user_groups(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tb = TempBalance(model, opt, base_scheduler=SCHEDULES["hf_cosine"](opt, T), interval=1, **KW)
        for b in batches(2):
            train_step(model, opt, b)
            tb.step()
