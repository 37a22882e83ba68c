"""AlphaDecay (tempbalance.training.alphadecay): ``TempBalance(preset="alphadecay-...")`` against the transcription of
``hed-ucas/AlphaDecay``'s ``WeightDecayUnbalance.py`` and its training loop (tests/reference_oracles/alphadecay.py),
every parameter's weight decay and learning rate at every update, for every assign function, in float64 to 1e-12
relative; the same test with the wiring broken (one step late, the default arithmetic, remove_first off) fails;
the policy's own defaults; learning rate and weight decay from one pass; resume; misuse refused."""
from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
from torch import nn

from compat_cases import RTOL, max_rel, recorder, tiny_llama
from reference_oracles import alphadecay as ad
from tempbalance import TempBalance, presets
from tempbalance.training.compat import SCHEMES
from tempbalance.training.alphadecay import ASSIGNS, AlphaDecay
from tempbalance.training.cadence import BeforeEveryN, EveryN
from tempbalance.training.mapping import MappingOptions
from tempbalance.training.policies import MappedPolicy
from test_scheduler_deferred import counted

pytest.importorskip("transformers")

F64 = torch.float64
UPDATES, EVERY = 10, 4  # passes before updates 3 and 7 (0-based), besides the one on the initial weights
LR, WARMUP = 2e-2, 2


def batches(n: int = UPDATES, seed: int = 3, vocab: int = 40) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (4, 12), generator=g) for _ in range(n)]


def lm_loss(m: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return m(input_ids=ids, labels=ids).loss


def schedule():
    return ad.cosine_with_min_lr(WARMUP, UPDATES, 0.1)


def make_optimizer(model: nn.Module, name: str, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=LR, weight_decay=weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=weight_decay)


def train(model: nn.Module, opt: torch.optim.Optimizer, tb: TempBalance, data) -> list[dict[str, dict[str, float]]]:
    """The loop a user writes, TempBalance stepped after each update. Returns per update ``{"lr": {...},
    "weight_decay": {...}}`` per parameter, as the update read them."""
    lrs, wds = recorder(model, opt), recorder(model, opt, "weight_decay")
    for ids in data:
        lm_loss(model, ids).backward()
        opt.step()
        tb.step()
        opt.zero_grad()
    return [{"lr": a, "weight_decay": b} for a, b in zip(lrs, wds)]


def run_ours(model: nn.Module, data, *, optimizer: str, weight_decay: float, **tb_kwargs):
    """The optimizer over all parameters, the reference's cosine as the base scheduler."""
    opt = make_optimizer(model, optimizer, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule())
    tb = TempBalance(model, opt, base_scheduler=sched, dtype=F64, **tb_kwargs)
    return train(model, opt, tb, data), tb


def run_reference(model: nn.Module, data, *, optimizer: str, weight_decay: float, opts: ad.Options):
    return ad.train(model, data, lm_loss, opts, optimizer=optimizer, lr=LR, weight_decay=weight_decay, every=EVERY,
                    schedule=schedule())


def worst(got, want) -> float:
    """The largest relative difference of any parameter's lr or weight decay at any update."""
    assert len(got) == len(want)
    return max(max_rel(g[k], w[k])[0] for g, w in zip(got, want) for k in ("lr", "weight_decay"))


def wd_moves(records, a: int, b: int) -> bool:
    """Whether the weight-decay factors differ between updates ``a`` and ``b`` (a pass between them)."""
    x, y = (np.array(list(records[t]["weight_decay"].values())) for t in (a, b))
    return float(np.max(np.abs(x / y - 1))) > 1e-9


CASES = ([(assign, "adam", 5e-6, 96) for assign in ASSIGNS]
         + [("tb_linear_map", "adamw", 0.1, 96), ("tb_sqrt", "adamw", 0.05, 96), ("tb_linear_map", "adamw", 0.1, 40)])


@pytest.mark.parametrize("assign, optimizer, weight_decay, vocab", CASES)
def test_alphadecay_loop_through_the_preset(assign, optimizer, weight_decay, vocab):
    """Ten updates of a tiny LLaMA: the pass on the initial weights drives updates 0-2, the pass before update 3
    (``(update_step + 1) % 4 == 0``) updates 3-6, the one before update 7 the rest; q_proj of block 0 (the first
    Linear), lm_head (the last) and the 32-eigenvalue k/v projections keep the base weight decay; every
    parameter's weight decay and lr equal the reference's. With a 40-word head (40 eigenvalues) the reference
    drops the first and last Linear before the threshold, so the last block's down_proj stays tuned."""
    model = tiny_llama(vocab=vocab)
    twin = copy.deepcopy(model)
    data = batches()
    preset = "alphadecay-llama-adam" if optimizer == "adam" else "alphadecay-llama-adamw"
    kw = presets.get(preset, assign=assign, every=EVERY)
    ratios = (kw["policy"].wd_min_ratio, kw["policy"].wd_max_ratio)
    opts = ad.Options(assign_func=assign, wd_min_ratio=ratios[0], wd_max_ratio=ratios[1])
    want = run_reference(model, data, optimizer=optimizer, weight_decay=weight_decay, opts=opts)
    got, tb = run_ours(twin, data, optimizer=optimizer, weight_decay=weight_decay, preset=preset, assign=assign,
                       every=EVERY)
    assert worst(got, want) <= RTOL
    assert tb.compat == "alphadecay" and len(tb.units) == 9 and tb.units[-1] == "model.layers.1.mlp.down_proj"
    assert wd_moves(got, 2, 3) and wd_moves(got, 6, 7) and not wd_moves(got, 3, 6)
    first = got[0]["weight_decay"]
    for untuned in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                    "lm_head.weight", "model.norm.weight", "model.embed_tokens.weight"):
        assert first[untuned] == weight_decay
    assert len({round(v / weight_decay, 12) for v in first.values()}) >= 8, "the case must exercise many decays"
    assert [h["step"] for h in tb.history] == [0, 3, 7]


@pytest.mark.parametrize("broken, assign", [
    ("EveryN: one update late", "tb_linear_map"),
    ("remove_first=False", "tb_linear_map"),
    ("the default arithmetic", "tb_sqrt"),
    ("the default arithmetic", "tb_log2"),
    ("the default arithmetic", "layerwise_sigmoid"),
    ("sigmoid groups by block, not name part", "layerwise_sigmoid"),
])
def test_the_loop_test_fails_with_the_wiring_broken(broken, assign):
    """The parity test above is not vacuous: each broken wiring misses the reference by far more than 1e-12."""
    model = tiny_llama(layers=3)
    twin = copy.deepcopy(model)
    data = batches()
    want = run_reference(model, data, optimizer="adam", weight_decay=1e-5,
                         opts=ad.Options(assign_func=assign, wd_min_ratio=0.6666, wd_max_ratio=3.0))
    kw = presets.get("alphadecay-llama-adam", weight_decay=1e-5, assign=assign, every=EVERY)
    if broken.startswith("EveryN"):
        kw["interval"] = EveryN(EVERY)
    elif broken.startswith("remove_first"):
        kw["remove_first"] = False
    elif broken.startswith("the default"):  # the reference's selection without compat: AlphaDecay's own arithmetic
        kw.pop("compat")
    else:  # names like "model.layers.2.mlp" vs the block "model.layers.2": the same groups - break them
        kw["policy"].bind = lambda units, blocks, plan: AlphaDecay.bind(
            kw["policy"], units, [u.rsplit(".", 1)[-1] for u in units], None)
        kw.pop("compat")
    got, _ = run_ours(twin, data, optimizer="adam", weight_decay=1e-5, **kw)
    assert worst(got, want) > 1e-9


def test_the_default_selection_reproduces_the_linear_map_without_compat():
    """On a LLaMA the reference's selection is also reachable without compat (generic adapter, one unit per
    Linear, remove_first / remove_last on the units, min_eigs 50), and tb_linear_map has no reference arithmetic of
    its own: the same weight decays. (The other assign functions differ there: the test above.)"""
    model = tiny_llama()
    twin = copy.deepcopy(model)
    data = batches()
    want = run_reference(model, data, optimizer="adamw", weight_decay=0.1, opts=ad.Options(wd_max_ratio=5.0))
    kw = presets.get("alphadecay-llama-adamw", every=EVERY)
    kw.pop("compat")
    got, tb = run_ours(twin, data, optimizer="adamw", weight_decay=0.1, **kw)
    assert worst(got, want) <= RTOL and tb.compat is None


def test_resume_between_passes_repeats_the_run_bit_for_bit():
    """Save after update 5 (the pass before update 3 in force, the next due before update 7), load into a fresh
    model / optimizer / scheduler / TempBalance: every later weight decay and lr and the final weights are the
    uninterrupted run's."""
    data = batches()

    def build(model, **timing):
        opt = make_optimizer(model, "adamw", 0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule())
        return opt, TempBalance(model, opt, base_scheduler=sched, preset="alphadecay-llama-adamw",
                                assign="layerwise_sigmoid", dtype=F64, **(timing or dict(every=EVERY)))

    init = tiny_llama()
    whole = copy.deepcopy(init)
    want = train(whole, *build(whole), data)
    first = copy.deepcopy(init)
    opt, tb = build(first)
    train(first, opt, tb, data[:5])
    saved = copy.deepcopy(dict(m=first.state_dict(), o=opt.state_dict(), tb=tb.state_dict()))
    assert saved["tb"]["cadence"]["type"] == "BeforeEveryN" and saved["tb"]["settings"]["compat"] == "alphadecay"
    second = tiny_llama(seed=99)
    opt2, tb2 = build(second)
    second.load_state_dict(saved["m"])
    opt2.load_state_dict(saved["o"])
    tb2.load_state_dict(saved["tb"])
    assert train(second, opt2, tb2, data[5:]) == want[5:]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), second.state_dict().values()))
    _, other = build(tiny_llama(), interval=EVERY)
    with pytest.raises(ValueError, match="cadence: saved with BeforeEveryN, this object has EveryN"):
        other.load_state_dict(saved["tb"])


# ----------------------------------------------------------------------------------------------------------------
# the policy alone: compat arithmetic = the reference's get_layer_temps, the defaults


# what AlphaDecay.bind reads of a compat plan: its scheme (the policy's own tests build no model)
SCHEME_ONLY = types.SimpleNamespace(scheme=SCHEMES["alphadecay"])
NAMES = [f"model.layers.{b}.{m}" for b in range(3) for m in ("self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")]


def _bound(assign: str, compat: bool, names=NAMES, blocks=None, **kw) -> AlphaDecay:
    policy = AlphaDecay(assign, **kw)
    policy.bind(names, blocks if blocks is not None else [n.rsplit(".", 2)[0] for n in names],
                SCHEME_ONLY if compat else None)
    return policy


@pytest.mark.parametrize("assign", ASSIGNS)
@pytest.mark.parametrize("alphas", [
    [2.1, 3.4, 2.9, 4.8, 2.2, 3.0, 3.3, 2.7, 5.1],
    [3.0] * 9,  # equal alphas: the linear map's upper end, sigmoids 1 (0 / 1e-8)
    [2.5, 2.5, 2.5, 3.1, 4.0, 2.2, 6.0, 6.0, 6.0],  # one group of equal alphas
])
def test_compat_factors_are_the_references_weight_decays(assign, alphas):
    v = np.array(alphas)
    opts = ad.Options(assign_func=assign, wd_min_ratio=0.6666, wd_max_ratio=3.0)
    want = ad.layer_wds(NAMES, v, 1e-5, opts)
    policy = _bound(assign, True, wd_min_ratio=0.6666, wd_max_ratio=3.0)
    got = 1e-5 * policy.factors(v, np.ones(v.size, dtype=np.int64))
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)


def test_default_factors():
    """Without compat: no 1e-8 terms, equal alphas -> 1, means over the matrices, NaN units untuned (factor 1,
    left out of min / max / mean / z-scores), layerwise_sigmoid over the adapter's blocks."""
    v = np.array([2.0, np.nan, 3.0, 4.0, 5.0, 2.5])
    m = np.array([1, 1, 2, 1, 1, 3])
    lin = _bound("tb_linear_map", False, names=list("abcdef"), blocks=[None] * 6).factors(v, m)
    np.testing.assert_allclose(lin, [0.5, 1.0, 0.5 + 1 / 3, 0.5 + 2 / 3, 1.5, 0.5 + 1 / 6], rtol=1e-15)
    root = _bound("tb_sqrt", False, names=list("abcdef"), blocks=[None] * 6).factors(v, m)
    fin = np.isfinite(v)
    assert root[1] == 1.0
    np.testing.assert_allclose(root[fin], np.sqrt(v[fin]) / (np.sum(m[fin] * np.sqrt(v[fin])) / m[fin].sum()),
                               rtol=1e-15)
    assert np.sum(m[fin] * root[fin]) / m[fin].sum() == pytest.approx(1.0, abs=1e-15)
    log = _bound("tb_log2", False, names=list("abcdef"), blocks=[None] * 6).factors(v, m)
    np.testing.assert_allclose(log[fin], np.log2(v[fin]) / (np.sum(m[fin] * np.log2(v[fin])) / m[fin].sum()),
                               rtol=1e-15)
    sig = _bound("layerwise_sigmoid", False, names=list("abcdef"), blocks=["x", "x", "x", "y", "y", None],
                 sigmoid_alpha=2.0).factors(v, m)
    z = np.array([-1.0, 0.0, 1.0, -1.0, 1.0, 0.0])  # x: (2, 3) -> -1, 1; y: (4, 5) -> -1, 1; alone: 0
    want = 2 / (1 + np.exp(-2.0 * z))
    want[1] = want[5] = 1.0
    np.testing.assert_allclose(sig, want, rtol=1e-15)
    assert list(_bound("tb_linear_map", False).factors(np.full(9, 3.0), np.ones(9))) == [1.0] * 9
    assert list(_bound("tb_sqrt", True).factors(np.full(9, np.nan), np.ones(9))) == [1.0] * 9


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError, match="assign must be one of"):
        AlphaDecay("tb_step")
    with pytest.raises(ValueError, match="wd_min_ratio must be a finite number > 0"):
        AlphaDecay(wd_min_ratio=0.0)
    with pytest.raises(ValueError, match="sigmoid_alpha must be a finite number"):
        AlphaDecay(sigmoid_alpha=float("nan"))
    with pytest.raises(ValueError, match="metric must be one of"):
        AlphaDecay(metric="gradnorm")
    with pytest.raises(ValueError, match="compat='alphadecay' reproduces AlphaDecay with metric='alpha'"):
        AlphaDecay(metric="stable_rank").bind(NAMES, [None] * 9, SCHEME_ONLY)
    with pytest.raises(ValueError, match=r"layer 'fc' has none"):
        AlphaDecay("layerwise_sigmoid").bind(["a.b.c", "fc"], [None, None], SCHEME_ONLY)
    with pytest.raises(ValueError, match="bound to 9 units and got 3 values"):
        _bound("layerwise_sigmoid", False).factors(np.ones(3), np.ones(3))


def test_misuse_is_refused_before_anything_changes():
    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match=r"compat='alphadecay' maps the spectra with the reference's own rules: pass "
                                         r"policy=tempbalance.training.alphadecay.AlphaDecay"):
        TempBalance(model, opt, compat="alphadecay")
    with pytest.raises(ValueError, match=r"give one \(the policy reproduces compat='alphadecay'\)"):
        TempBalance(model, opt, compat="tempbalance_cnn", policy=AlphaDecay())
    with pytest.raises(ValueError, match="give one"):
        TempBalance(model, opt, compat=True, policy=AlphaDecay())
    with pytest.raises(ValueError, match="give one"):
        TempBalance(model, opt, compat="alphadecay", policy=[MappedPolicy(), AlphaDecay()])
    with pytest.raises(ValueError, match="metric='alpha'"):
        TempBalance(model, opt, preset="alphadecay-llama-adamw", policy=AlphaDecay(metric="spectral_norm"))
    with pytest.raises(ValueError, match=r"\['assign'\] shape the preset's policy, and policy= given replaces it"):
        TempBalance(model, opt, preset="alphadecay-llama-adamw", assign="tb_sqrt", policy=AlphaDecay())
    with pytest.raises(ValueError, match=r"every \(the reference's --unbalancedWD_every\) must be an integer >= 1"):
        TempBalance(model, opt, preset="alphadecay-llama-adamw", every=0)
    with pytest.raises(ValueError, match=r"weight_decay=0.1 is not a published configuration"):
        presets.get("alphadecay-llama-adam", weight_decay=0.1)
    with pytest.raises(ValueError, match=r"nor the preset's options"):
        presets.get("alphadecay-llama-adam", wd_ratio=2.0)
    seq = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64))
    seq_opt = torch.optim.AdamW(seq.parameters(), lr=1e-3, weight_decay=0.1)
    seq_before = [dict(g) for g in seq_opt.param_groups]
    with pytest.raises(ValueError, match="layer '1' has none"):
        TempBalance(seq, seq_opt, preset="alphadecay-llama-adamw", assign="layerwise_sigmoid")
    assert [dict(g) for g in opt.param_groups] == before and [dict(g) for g in seq_opt.param_groups] == seq_before


# ----------------------------------------------------------------------------------------------------------------
# learning rate and weight decay from one pass (what no reference code combines)


def test_tempbalance_lrs_and_alphadecay_weight_decays_from_one_pass_and_one_state_dict():
    """TempBalance's TBSigmoid learning rates and AlphaDecay's block-wise sigmoid weight decays on one LLaMA,
    one Linear per unit: one spectral pass per refresh drives both knobs, each the closed form of the same alphas
    (the decays z-scored within each block), and one state dict resumes both exactly."""
    data = batches(9)

    def build(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.1 * t))
        return opt, TempBalance(model, opt, base_scheduler=sched, unit="layer", interval=3, dtype=F64,
                                policy=[MappedPolicy(), AlphaDecay("layerwise_sigmoid")])

    model = tiny_llama(layers=3)
    init = copy.deepcopy(model)
    opt, tb = build(model)
    calls = counted(tb)
    want = train(model, opt, tb, data)
    assert calls == [3, 6, 9]  # one pass per refresh for both knobs
    assert tb.adapter.name == "llama" and len(tb.units) == 21  # every matrix of the 3 blocks (the head: no block)
    alphas = np.array([tb.unit_alphas[u] for u in tb.units])
    np.testing.assert_allclose([tb.factors_by_target["lr"][u] for u in tb.units],
                               MappingOptions().factors(alphas), rtol=1e-14)
    wd = tb.factors_by_target["weight_decay"]
    fitted = np.isfinite(alphas)
    assert fitted.sum() == 15 and all(wd[u] == 1.0 for u, f in zip(tb.units, fitted) if not f)  # k/v: 32 eigs
    for b in range(3):
        members = [k for k, u in enumerate(tb.units) if u.startswith(f"model.layers.{b}.") and fitted[k]]
        a = alphas[members]
        z = (a - a.mean()) / a.std()
        np.testing.assert_allclose([wd[tb.units[k]] for k in members], 2 / (1 + np.exp(-4 * z)), rtol=1e-13)
    group_wd = {u: g["weight_decay"] for g, u in zip(opt.param_groups, tb.group_units)}
    group_lr = {u: g["lr"] for g, u in zip(opt.param_groups, tb.group_units)}
    assert group_wd[None] == 0.1 and group_wd[tb.units[0]] == pytest.approx(0.1 * wd[tb.units[0]], rel=1e-15)
    assert group_lr[tb.units[0]] == pytest.approx(tb.get_base_lr()[0] * tb.factors[tb.units[0]], rel=1e-15)

    first = copy.deepcopy(init)
    opt1, tb1 = build(first)
    train(first, opt1, tb1, data[:4])
    saved = copy.deepcopy(dict(m=first.state_dict(), o=opt1.state_dict(), tb=tb1.state_dict()))
    assert saved["tb"]["settings"]["targets"] == ["lr", "weight_decay"]
    second = tiny_llama(layers=3, seed=5)
    opt2, tb2 = build(second)
    second.load_state_dict(saved["m"])
    opt2.load_state_dict(saved["o"])
    tb2.load_state_dict(saved["tb"])
    assert train(second, opt2, tb2, data[4:]) == want[4:]


def test_the_readmes_alphadecay_example_runs_as_written():
    """README, "Methods": the preset (AlphaDecay's weight decays, lr untouched), then TempBalance's lrs and
    AlphaDecay's weight decays from one pass."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "alphadecay-llama-adamw" in b]
    assert len(blocks) == 1
    model = tiny_llama()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(adamw, lambda t: 1.0)
    first, second = blocks[0].strip().splitlines()
    scope = dict(TempBalance=TempBalance, model=model, adamw=adamw, sched=sched, MappedPolicy=MappedPolicy,
                 AlphaDecay=AlphaDecay)
    exec(first, scope)
    tb = scope["tb"]
    assert tb.compat == "alphadecay" and tb.cadence.describe().startswith("before every 500th")
    assert {g["lr"] for g in adamw.param_groups} == {1e-3} and len({g["weight_decay"] for g in adamw.param_groups}) > 5
    exec(second, scope)
    tb = scope["tb"]
    assert set(tb.factors_by_target) == {"lr", "weight_decay"} and tb.compat is None
    assert len({g["lr"] for g in adamw.param_groups}) > 5 and len({g["weight_decay"] for g in adamw.param_groups}) > 5
