"""LLR (tempbalance.training.llr): ``TempBalance(preset="llr-...")`` against the transcription of the reference trainer
(tests/reference_oracles/llr.py) on a tiny float64 LLaMA, update by update, with AdamW and with [Muon, AdamW]; the
parity broken piece by piece; resume in the middle of a transition and after the LLR window; the default (non-compat)
policy against its closed form; misuse."""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

from compat_cases import RTOL, max_rel, recorder
from reference_oracles import llr as ref
from tempbalance import TempBalance
from tempbalance.training import presets
from tempbalance.training.cadence import EveryN
from tempbalance.training.llr import LLR, LLRCadence

transformers = pytest.importorskip("transformers")

F64 = torch.float64
VOCAB = 80
LR, MUON_LR, WD = 1e-3, 2e-2, 0.1


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    """2 blocks of 64 x 64 attention and 64 x 128 MLP matrices (64 eigenvalues: all tuned), an untied 80 x 64 head."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
                                   tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).to(F64)


def batches(n: int, seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, 9), generator=g) for _ in range(n)]


def loss_fn(model, ids):
    return model(input_ids=ids, labels=ids).loss


def is_hidden(name: str, p: torch.Tensor) -> bool:
    """Muon's share: the 2-d matrices but the embedding and the head."""
    return p.ndim == 2 and "embed" not in name and "head" not in name


def our_optimizers(model, muon: bool) -> list[torch.optim.Optimizer]:
    if not muon:
        return [torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)]
    named = list(model.named_parameters())
    return [torch.optim.Muon([p for n, p in named if is_hidden(n, p)], lr=MUON_LR),
            torch.optim.AdamW([p for n, p in named if not is_hidden(n, p)], lr=LR, weight_decay=WD)]


def reference_optimizers(entries: list[dict]) -> list[torch.optim.Optimizer]:
    """The oracle's groups on the same optimizers (tests/reference_oracles/llr.py ``train``)."""
    hidden = [dict(params=e["params"]) for e in entries if e["muon"]]
    rest = [dict(params=e["params"]) for e in entries if not e["muon"]]
    return ([torch.optim.Muon(hidden, lr=MUON_LR)] if hidden else []) + [torch.optim.AdamW(rest, lr=LR,
                                                                                            weight_decay=WD)]


def ref_args(*, muon: bool, every: int, steps: int, ratio: float = 1.0, lr_min: float = 1.0,
             lr_max: float = 5.0) -> ref.Args:
    return ref.Args(lr_min_ratio=lr_min, lr_max_ratio=lr_max, unbalancedlr_every=every, linear_steps=steps,
                    optimizer_name="muon" if muon else "adamw", learning_rate=LR, muon_lr=MUON_LR, stop_at=20,
                    LLR_ratio=ratio, t_warmup=3, alpha_f=0.1)


def preset_kwargs(args: ref.Args) -> dict:
    """The preset, its options set to the oracle's run (20 updates instead of 40000)."""
    name = "llr-muon-1b-20b" if args.muon else "llr-adamw-1b-20b"
    return dict(preset=name, lr_min_ratio=args.lr_min_ratio, lr_max_ratio=args.lr_max_ratio,
                linear_steps=args.linear_steps, every=args.unbalancedlr_every, max_steps=args.stop_at,
                llr_ratio=args.LLR_ratio, dtype=F64)


def build(model, args: ref.Args, **overrides):
    """The user's loop: the optimizers, the reference's schedule one step ahead (it steps before the update) as
    each optimizer's base scheduler, TempBalance from the preset."""
    opts = our_optimizers(model, args.muon)
    f = ref.schedule(args)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: f(k + 1)) for o in opts]
    kw = {**preset_kwargs(args), **overrides}
    for arg, options in (("interval", ("every",)), ("policy", ("lr_min_ratio", "lr_max_ratio", "linear_steps"))):
        if arg in overrides:  # the options only that argument takes would do nothing (the preset refuses them)
            for k in options:
                kw.pop(k)
    tb = TempBalance(model, opts, base_scheduler=scheds, **kw)
    return opts, tb


def run(model, opts, tb, data) -> list[dict[str, float]]:
    """Per update, every parameter's lr as the update read it (both optimizers)."""
    records = [recorder(model, o) for o in opts]
    for ids in data:
        for o in opts:
            o.zero_grad()
        loss_fn(model, ids).backward()
        for o in opts:
            o.step()
        tb.step()
    names = [n for n, _ in model.named_parameters()]
    return [{n: {k: v for r in rs for k, v in r.items()}[n] for n in names} for rs in zip(*records)]


def worst(got, want) -> float:
    assert len(got) == len(want)
    return max(max_rel(g, w)[0] for g, w in zip(got, want))


def reference_run(args: ref.Args, n: int = 18) -> tuple[torch.nn.Module, list]:
    model = tiny_llama()
    return model, ref.train(copy.deepcopy(model), batches(n), loss_fn, args, make_optimizers=reference_optimizers)


# (muon, every, linear_steps, LLR_ratio, lr_min_ratio): transitions that end before the next refresh (the flag of
# train.py:1087-1089 fires), that are cut by it (never fires), the LLR window ending in the middle of a transition
# (the idle scheduler resumes) or after one, and lr_min_ratio < 1 (the rest's target, min of all, dips)
CASES = [
    (False, 4, 2, 1.0, 1.0), (False, 3, 3, 1.0, 0.666), (False, 4, 2, 0.5, 0.666), (False, 3, 3, 0.5, 1.0),
    (False, 5, 1, 0.55, 0.666), (True, 4, 2, 0.5, 0.666), (True, 3, 4, 0.45, 1.0),
]


@pytest.mark.parametrize("muon, every, steps, ratio, lr_min", CASES)
def test_llr_preset_reproduces_the_reference_update_by_update(muon, every, steps, ratio, lr_min):
    """18 updates, 3 - 6 refreshes, a cosine with 3 warmup updates: every parameter's lr (17 units: 14 matrices,
    embedding, head, the norms) equals the reference trainer's to 1e-12, through two or more transitions."""
    args = ref_args(muon=muon, every=every, steps=steps, ratio=ratio, lr_min=lr_min)
    model, want = reference_run(args)
    opts, tb = build(model, args)
    got = run(model, opts, tb, batches(18))
    assert worst(got, want) <= RTOL
    assert tb.compat == "llr" and len(tb.history) >= 3 and len(tb.units) == 17
    assert tb.units[-3:] == ["model.embed_tokens", "lm_head", "(rest)"]
    lrs = np.array([list(r.values()) for r in got])
    assert len({round(v, 12) for v in lrs[8] / lrs[8].max()}) >= 8, "many learning rates at once"
    if muon:  # Muon's units scale off muon_lr, the norms (AdamW) off lr
        hidden = [v for n, v in got[8].items() if n.endswith("proj.weight")]
        assert min(hidden) > 2 * max(v for n, v in got[8].items() if "norm" in n)


def _first_span_plus_one(committed):
    def broken(self, factors, step, groups):
        self._passes = max(self._passes, 1)  # every refresh as if it were not the first
        committed(self, factors, step, groups)
    return broken


BROKEN = {  # piece -> how to break it: (monkeypatch, policy keywords, reference arguments)
    "transition at once": lambda m, kw, args: kw.update(linear_steps=1),
    "first span linear_steps + 1": lambda m, kw, args: m.setattr(LLR, "committed", _first_span_plus_one(LLR.committed)),
    "min and max swapped": lambda m, kw, args: kw.update(lr_min_ratio=args.lr_max_ratio, lr_max_ratio=args.lr_min_ratio),
    "the rest's target not the smallest": lambda m, kw, args: m.setattr(LLR, "_rest_target", lambda self, v: max(v)),
    "no idle scheduler after the window": lambda m, kw, args: m.setattr(LLR, "_idle_schedule",
                                                                        lambda self, groups, book, n: book.base()),
    "TempBalance's timing": lambda m, kw, args: kw.update(interval=EveryN(args.unbalancedlr_every)),
}


@pytest.mark.parametrize("piece", sorted(BROKEN))
def test_the_parity_fails_when_a_piece_of_the_wiring_is_broken(piece, monkeypatch):
    """Each rule the parity test relies on, broken on its own, makes the learning rates differ from the reference's
    by far more than the tolerance (so the parity test can fail)."""
    args = ref_args(muon=False, every=4, steps=2, ratio=0.5, lr_min=0.666)
    model, want = reference_run(args, n=14)
    kw: dict = {}
    BROKEN[piece](monkeypatch, kw, args)
    overrides = {}
    if "interval" in kw:
        overrides["interval"] = kw.pop("interval")
    if kw:
        overrides["policy"] = LLR(**{**dict(lr_min_ratio=args.lr_min_ratio, lr_max_ratio=args.lr_max_ratio,
                                            linear_steps=args.linear_steps, until=10), **kw})
    opts, tb = build(model, args, **overrides)
    got = run(model, opts, tb, batches(14))
    assert worst(got, want) > 1e-4


def _save(*objs) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save([o.state_dict() for o in objs], buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("muon, stop", [(False, 5), (True, 5), (False, 12), (True, 13)])
def test_resume_mid_transition_and_after_the_window_repeats_the_run_exactly(muon, stop):
    """Save after update 5 (inside the transition of the refresh at update 4: updates 4-6) or 12 / 13 (after the
    LLR window, update 10, while the scheduler left at the refresh of update 8 runs again), load into fresh objects
    (weights_only): every later lr and the final weights equal the uninterrupted run's bit for bit."""
    args = ref_args(muon=muon, every=4, steps=2, ratio=0.5, lr_min=0.666)
    data = batches(16)
    init = tiny_llama()
    whole = copy.deepcopy(init)
    want = run(whole, *build(whole, args), data)
    first = copy.deepcopy(init)
    opts, tb = build(first, args)
    run(first, opts, tb, data[:stop])
    saved = tb.state_dict()["policies"][0]
    assert saved["open"]["start"] == (3 if stop == 5 else 7)
    if stop == 5:
        assert (saved["phase"]["start"], saved["phase"]["span"]) == (3, 3)
    states = torch.load(_save(first, *opts, tb), weights_only=True)
    second = tiny_llama(seed=5)
    opts2, tb2 = build(second, args)
    second.load_state_dict(states[0])
    for o, s in zip(opts2, states[1:-1]):
        o.load_state_dict(s)
    tb2.load_state_dict(states[-1])
    got = run(second, opts2, tb2, data[stop:])
    assert got == want[stop:]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), second.state_dict().values()))


def test_a_state_of_the_other_mode_is_refused_before_anything_changes():
    args = ref_args(muon=False, every=4, steps=2)
    model = tiny_llama()
    opts, tb = build(model, args)
    run(model, opts, tb, batches(5))
    state = tb.state_dict()
    plain = TempBalance(model, torch.optim.AdamW(model.parameters(), lr=LR), policy=LLR(), unit="layer",
                        adapter="generic", include_embeddings=True, interval=4, dtype=F64)
    before = (tb.get_last_lr(), copy.deepcopy(tb.state_dict()["policies"]))
    broken = copy.deepcopy(state)
    broken["policies"][0]["mode"] = "default"
    with pytest.raises(ValueError, match="saved with the default transitions, this object runs the reference"):
        tb.load_state_dict(broken)
    assert (tb.get_last_lr(), tb.state_dict()["policies"]) == before
    with pytest.raises(ValueError, match="saved with compat=None"):
        tb.load_state_dict(plain.state_dict())
    assert (tb.get_last_lr(), tb.state_dict()["policies"]) == before


# --- the default policy -----------------------------------------------------------------------------------------
def default_tb(model, opts, linear_steps=3, interval=4, **kw):
    return TempBalance(model, opts, policy=LLR(lr_min_ratio=0.5, lr_max_ratio=2.0, linear_steps=linear_steps, **kw),
                       unit="layer", adapter="generic", include_embeddings=True, interval=interval, dtype=F64)


@pytest.mark.parametrize("muon", [False, True])
def test_default_llr_maps_alphas_linearly_and_ramps_the_factors_on_the_base_schedule(muon):
    """Factors: the alphas of the tuned layers np.interp-ed onto [0.5, 2] (largest alpha -> 2), embedding and head 2;
    between refreshes every group runs at base(t) x the factor ramped linearly from the one before over 3 updates
    (1 before the first refresh), never compounding with each optimizer's own schedule."""
    model = tiny_llama()
    opts = our_optimizers(model, muon)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0 / (1 + 0.05 * k)) for o in opts]
    tb = TempBalance(model, opts, base_scheduler=scheds, policy=LLR(lr_min_ratio=0.5, lr_max_ratio=2.0,
                                                                    linear_steps=3),
                     unit="layer", adapter="generic", include_embeddings=True, interval=4, dtype=F64)
    factors_at = {0: tb.factors}
    tb.add_refresh_callback(lambda record: factors_at.update({record["step"]: dict(record["factors"])}))
    records = run(model, opts, tb, batches(13))
    assert sorted(factors_at) == [0, 4, 8, 12] and factors_at[4] != factors_at[8]
    alphas = tb.unit_alphas
    tuned = [u for u in tb.units if "embed" not in u and "head" not in u]
    a = np.array([alphas[u] for u in tuned])
    np.testing.assert_allclose([tb.factors[u] for u in tuned], np.interp(a, [a.min(), a.max()], [0.5, 2.0]),
                               rtol=1e-15)
    assert tb.factors["model.embed_tokens"] == tb.factors["lm_head"] == 2.0 and min(tb.factors.values()) == 0.5
    expected, now, phase = [], {u: 1.0 for u in tb.units}, None
    for k in range(13):  # written after step k, for update k + 1
        if k in factors_at:
            phase = (k, dict(now), factors_at[k])
        start, before, target = phase
        w = min(1.0, (k - start + 1) / 3)
        now = {u: before[u] + (target[u] - before[u]) * w for u in tb.units}
        expected.append(now)
    unit_of = {id(p): g["tb_unit"] for o in opts for g in o.param_groups for p in g["params"]}
    base_lr = {id(p): o.defaults["lr"] for o in opts for g in o.param_groups for p in g["params"]}
    for t, got in enumerate(records):
        for name, p in model.named_parameters():
            u = unit_of[id(p)]
            f = expected[t][u] if u is not None else 1.0
            assert got[name] == pytest.approx(base_lr[id(p)] / (1 + 0.05 * t) * f, rel=1e-12), (name, t)


def test_default_llr_resumes_mid_ramp_exactly():
    data = batches(12)
    init = tiny_llama()
    whole = copy.deepcopy(init)
    opts = our_optimizers(whole, True)
    want = run(whole, opts, default_tb(whole, opts), data)
    first = copy.deepcopy(init)
    opts1 = our_optimizers(first, True)
    tb1 = default_tb(first, opts1)
    run(first, opts1, tb1, data[:5])
    assert tb1.state_dict()["policies"][0]["phase"]["start"] == 4
    states = torch.load(_save(first, *opts1, tb1), weights_only=True)
    second = tiny_llama(seed=2)
    opts2 = our_optimizers(second, True)
    tb2 = default_tb(second, opts2)
    second.load_state_dict(states[0])
    for o, s in zip(opts2, states[1:-1]):
        o.load_state_dict(s)
    tb2.load_state_dict(states[-1])
    assert run(second, opts2, tb2, data[5:]) == want[5:]


def test_cadence_counts_the_reference_way():
    c = LLRCadence(4, until=10)
    assert [k for k in range(1, 20) if c.due_after_step(k)] == [3, 7]  # updates 4 and 8 (12 > until)
    assert [k for k in range(1, 12) if LLRCadence(3).due_after_step(k)] == [2, 5, 8, 11]
    assert "every 4 updates up to update 10" in c.describe()
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        LLRCadence(0)


def test_misuse_is_an_error_naming_the_argument():
    model = tiny_llama()
    opts = our_optimizers(model, True)
    for bad, match in ((dict(linear_steps=0), "linear_steps"), (dict(lr_min_ratio=-1.0), "lr_min_ratio"),
                       (dict(edge_factor=float("nan")), "edge_factor"), (dict(edge_names="embed"), "edge_names"),
                       (dict(alpha_positively_with_lr=1), "alpha_positively_with_lr"), (dict(until=0), "until")):
        with pytest.raises(ValueError, match=match):
            LLR(**bad)
    before = [[dict(g) for g in o.param_groups] for o in opts]
    with pytest.raises(ValueError, match="compat='llr' maps the spectra with the reference's own rules: pass policy=tempbalance.training.llr.LLR"):
        TempBalance(model, opts, compat="llr")
    with pytest.raises(ValueError, match="policy= replaces the mapping"):
        TempBalance(model, opts[1:], compat="modelbalancing", policy=LLR())
    with pytest.raises(ValueError, match="one optimizer"):
        TempBalance(model, opts, compat="modelbalancing")
    with pytest.raises(ValueError, match="nor the preset's options"):
        presets.get("llr-adamw-1b-20b", linear_step=3)
    with pytest.raises(ValueError, match="lr_max_ratio=6 is not a published configuration"):
        presets.get("llr-adamw-1b-20b", lr_max_ratio=6)
    with pytest.raises(ValueError, match="option every must be an integer"):
        presets.get("llr-muon-1b-20b", every=0)
    assert [[dict(g) for g in o.param_groups] for o in opts] == before


def test_presets_read_the_run_scripts():
    """run_scripts/hed_scripts_1B_20B/LLR.sh, LLR_new1.sh, LLR_new2.sh and the 100B LLR.sh, with the yaml's
    stop_at and LLR_ratio: the policy's numbers and the window."""
    for ratio_max, until in ((5.0, 8000), (4.0, 8000), (3.0, 40000)):
        kw = presets.get("llr-adamw-1b-20b", lr_max_ratio=ratio_max)
        p, c = kw["policy"], kw["interval"]
        assert (p.lr_min_ratio, p.lr_max_ratio, p.linear_steps, p.edge_factor, p.until) == (1.0, ratio_max, 50,
                                                                                            ratio_max, until)
        assert (c.every, c.until) == (100, until)
        assert (kw["compat"], kw["unit"], kw["xmin_pos"], kw["min_eigs"]) == ("llr", "layer", 2.0, 50)
    kw = presets.get("llr-adamw-1b-100b")
    assert (kw["policy"].until, kw["interval"].until, kw["policy"].lr_max_ratio) == (40000, 40000, 5.0)
    a, b = presets.get("llr-muon-1b-20b"), presets.get("llr-muon-1b-20b")
    assert a["policy"] is not b["policy"] and a["interval"] is not b["interval"]  # fresh objects for each run
    assert presets.get("llr-muon-1b-20b", max_steps=3000)["policy"].until == 600
    assert presets.training("llr-muon-1b-20b")["lr"] == 5e-4
    text = presets.describe("llr-muon-1b-20b")
    assert "LRUnbalance.py:198-204" in text and "bbd0dcf86af80b8843866a9a041086a37de35897" in text
    assert all(name in presets.names() for name in ("llr-adamw-1b-20b", "llr-adamw-1b-100b", "llr-muon-1b-20b"))


def test_the_plan_lists_the_reference_rows():
    """compat.edge_plan: the Linear rows but the head are analysed, the embedding and head are units without a
    matrix, every other parameter (the RMSNorms) is the rest; remove_first drops the embedding row."""
    from tempbalance.training import compat

    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    policy = LLR()
    tb = TempBalance(model, opt, compat="llr", policy=policy, interval=LLRCadence(4), dtype=F64)
    rows = [r["longname"] for r in ref.layer_stats(model, ref.Args())]
    assert tb.units == [r for r in rows if r not in ("model.embed_tokens", "lm_head")] + [
        "model.embed_tokens", "lm_head", compat.REST_UNIT]
    assert [s.name for s in tb._specs] == rows[1:-1]
    owners = tb._chosen.plan.owners
    assert owners["model.norm.weight"] == owners["model.layers.0.input_layernorm.weight"] == compat.REST_UNIT
    assert owners["lm_head.weight"] == "lm_head" and owners["model.embed_tokens.weight"] == "model.embed_tokens"
    cut = TempBalance(model, torch.optim.AdamW(model.parameters(), lr=LR), compat="llr", policy=LLR(),
                      remove_first=True, dtype=F64)
    kept = [r["longname"] for r in ref.layer_stats(model, ref.Args(remove_first_layer=True))]
    assert cut.units == kept[:-1] + ["lm_head", compat.REST_UNIT] and "model.embed_tokens" not in kept
    assert math.isnan(cut.unit_alphas["lm_head"])
    with pytest.warns(UserWarning, match="no matrix to analyse"):
        small = TempBalance(model, torch.optim.AdamW(model.parameters(), lr=LR), compat="llr", policy=LLR(),
                            min_eigs=65, dtype=F64)
    assert small.units == [compat.REST_UNIT]  # no matrix has 65 eigenvalues: the embedding and head go too (LU:175)


def test_a_policy_reused_by_a_new_tempbalance_starts_afresh():
    """A notebook cell run twice: the second TempBalance on the same LLR object runs as with a new one."""
    policy = LLR(lr_min_ratio=0.5, lr_max_ratio=2.0, linear_steps=3)
    first = tiny_llama()
    opts = our_optimizers(first, True)
    run(first, opts, TempBalance(first, opts, policy=policy, unit="layer", interval=4, dtype=F64), batches(6))
    again, fresh = tiny_llama(), tiny_llama()
    o1, o2 = our_optimizers(again, True), our_optimizers(fresh, True)
    got = run(again, o1, TempBalance(again, o1, policy=policy, unit="layer", interval=4, dtype=F64), batches(6))
    want = run(fresh, o2, TempBalance(fresh, o2, policy=LLR(lr_min_ratio=0.5, lr_max_ratio=2.0, linear_steps=3),
                                      unit="layer", interval=4, dtype=F64), batches(6))
    assert got == want and got[1] != got[0]


def test_llr_lrs_and_alphadecay_weight_decays_from_one_pass_with_muon_and_adamw():
    """LLR's learning rates and AlphaDecay's weight decays, both optimizers of a Muon set-up, one pass per refresh:
    each knob is its closed form of the same alphas (linear maps between the min and max alpha), and one state dict
    resumes both exactly."""
    from test_scheduler_deferred import counted

    from tempbalance.training.alphadecay import AlphaDecay

    data = batches(9)

    def build(model):
        opts = our_optimizers(model, muon=True)
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1.0 / (1 + 0.1 * t)) for o in opts]
        return opts, TempBalance(model, opts, base_scheduler=scheds, unit="layer", interval=3, dtype=F64,
                                 policy=[LLR(lr_min_ratio=1.0, lr_max_ratio=3.0, linear_steps=1), AlphaDecay()])

    model = tiny_llama()
    init = copy.deepcopy(model)
    opts, tb = build(model)
    calls = counted(tb)
    want = run(model, opts, tb, data)
    assert calls == [3, 6, 9]  # one pass per refresh drives both knobs of both optimizers
    alphas = np.array([tb.unit_alphas[u] for u in tb.units])
    assert len(tb.units) == 14 and np.isfinite(alphas).all()
    share = (alphas - alphas.min()) / (alphas.max() - alphas.min())
    lr, wd = tb.factors_by_target["lr"], tb.factors_by_target["weight_decay"]
    np.testing.assert_allclose([lr[u] for u in tb.units], 1.0 + 2.0 * share, rtol=1e-13)
    np.testing.assert_allclose([wd[u] for u in tb.units], 0.5 + 1.0 * share, rtol=1e-13)
    scale = 1.0 / (1 + 0.1 * 9)
    for opt, base_wd in zip(opts, (opts[0].defaults["weight_decay"], WD)):
        for g in opt.param_groups:
            unit = next((u for u in tb.units if any(p is q for p in g["params"]
                                                    for n, q in model.named_parameters() if n.startswith(u + "."))),
                        None)
            f_lr, f_wd = (lr[unit], wd[unit]) if unit is not None else (1.0, 1.0)
            assert g["lr"] == pytest.approx(g["initial_lr"] * scale * f_lr, rel=1e-12)
            assert g["weight_decay"] == pytest.approx(base_wd * f_wd, rel=1e-12)

    first = copy.deepcopy(init)
    opts1, tb1 = build(first)
    run(first, opts1, tb1, data[:4])
    saved = _save(first, *opts1, tb1)
    second = tiny_llama(seed=5)
    opts2, tb2 = build(second)
    for obj, state in zip((second, *opts2, tb2), torch.load(saved, weights_only=False)):
        obj.load_state_dict(state)
    assert run(second, opts2, tb2, data[4:]) == want[4:]
