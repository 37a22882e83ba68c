"""``TempBalance(compat=...)`` and ``preset=`` against the reference oracles (tests/reference_oracles/): the real
scheduler, in a training loop, gives every parameter the learning rate the reference code gives it, update by
update, in float64 to 1e-12 relative.

Each test trains two copies of one model on the same batches: one in the oracle's transcription of the reference
loop, one in a plain torch loop with TempBalance; the learning rate every update ran with is recorded per
parameter on both sides. ModelBalancing (its loop order: spectra at the top of a step, factors after the update,
linear warmup), the NeurIPS'23 CNN and LM code, the FNO trainer; resume with a deferred pass pending; presets;
the HF Trainer.
"""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from compat_cases import SIGMOID_PAIRS, SmallResNet, TinyFNO2d, TinyLM, assert_lrs, max_rel, recorder, tiny_encoder
from reference_oracles import modelbalancing as mb
from reference_oracles import modelbalancing_fno as fno
from reference_oracles import tempbalance_cnn as cnn
from reference_oracles import tempbalance_lm as lm
from tempbalance import TempBalance
from tempbalance.training import presets
from tempbalance.training.mapping import linear_range

transformers = pytest.importorskip("transformers")

F64 = torch.float64


def assert_runs(got: list[dict[str, float]], want: list[dict[str, float]]) -> float:
    """Every update's learning rates equal; returns the largest relative difference over the run."""
    assert len(got) == len(want)
    return max(assert_lrs(g, w) for g, w in zip(got, want))


def moving(records: list[dict[str, float]], steps: list[int]) -> bool:
    """Whether the factors (lr / the lr of an untuned parameter) change between the updates ``steps``: a timing
    error of one step would show."""
    def factors(r):
        base = next(iter(r.values()))
        return np.array([v / base for v in r.values()]) if base else None

    f = [factors(records[t]) for t in steps]
    return all(a is not None and b is not None and np.max(np.abs(a - b)) > 1e-9 for a, b in zip(f, f[1:]))


def distinct(record: dict[str, float]) -> int:
    """How many different learning rates one update used."""
    v = np.array(list(record.values()))
    return len(set(np.round(v / v.max(), 12)))


# ----------------------------------------------------------------------------------------------------------------
# ModelBalancing: the HF Trainer loop of the reference (oracle mb.train) vs a plain loop with TempBalance


def _mb_args(unit, func, pair, norm, remove_last, xmin_pos=1.5):
    return mb.Args(tb_unit=unit, schedule_func=func, sigmoid_min=pair[0], sigmoid_max=pair[1],
                   tb_lr_normalize=str(norm), xmin_pos=xmin_pos, remove_last_layer=str(remove_last))


def _mb_kwargs(args: mb.Args, interval: int, compat="modelbalancing") -> dict:
    """TempBalance's arguments for the reference's ``args`` (``compat=True`` picks the same scheme for an HF
    encoder)."""
    s1, s2 = linear_range(args.lr_min_ratio, args.lr_slope)
    return dict(compat=compat, unit=args.tb_unit,
                mapping={"sigmoid": "sigmoid", "linear_map": "linear", "rank": "rank"}[args.schedule_func],
                tau=args.exp_temp, s_lo=args.sigmoid_min, s_hi=args.sigmoid_max, s1=s1, s2=s2,
                normalize=args.tb_lr_normalize == "True", xmin_pos=args.xmin_pos, min_eigs=args.eigs_num_thresh,
                remove_last=args.remove_last_layer == "True", interval=interval, dtype=F64)


def hf_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The HF Trainer's two groups: weight decay on every parameter but biases and LayerNorms."""
    decay = set(mb.decay_parameter_names(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]


def mb_run_ours(model, batches, loss_fn, *, lr, weight_decay, schedule, tb_kwargs, max_grad_norm=1.0):
    """The loop a user writes: AdamW over HF's groups, the warmup schedule as the base scheduler, TempBalance
    stepped after each update."""
    opt = torch.optim.AdamW(hf_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    tb = TempBalance(model, opt, base_scheduler=sched, **tb_kwargs)
    records = recorder(model, opt)
    for batch in batches:
        loss_fn(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        tb.step()
        opt.zero_grad()
    return records, tb


def _bert_batches(n, vocab=120, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (4, 12), generator=g), torch.randint(0, 2, (4,), generator=g))
            for _ in range(n)]


def _cls_loss(m, batch):
    return m(input_ids=batch[0], labels=batch[1]).loss


# (model, unit, schedule_func, (s_lo, s_hi), tb_lr_normalize, remove_last, interval)
MB_LOOP_CASES = (
    [("bert", u, "sigmoid", pair, False, True, iv) for u in ("block", "layer") for pair in SIGMOID_PAIRS
     for iv in (1, 3)]
    + [("bert", u, f, (2.0, 1.0), False, True, 3) for u in ("block", "layer") for f in ("linear_map", "rank")]
    + [("bert", u, "sigmoid", (2.0, 1.0), True, rl, 3) for u in ("block", "layer") for rl in (True, False)]
    + [("roberta", "layer", "rank", (2.0, 1.0), True, True, 1), ("roberta", "block", "sigmoid", (1.25, 1.25), False,
                                                                 False, 3)]
)


@pytest.mark.parametrize("kind, unit, func, pair, norm, remove_last, interval", MB_LOOP_CASES)
def test_modelbalancing_loop(kind, unit, func, pair, norm, remove_last, interval):
    """10 updates with linear warmup (3 steps): update 0 at factor 1 (and lr 0), the pass at the top of step t
    driving updates t + 1 ..., every parameter's lr equal to the reference's."""
    model = tiny_encoder(kind).train()
    twin = copy.deepcopy(model)
    batches = _bert_batches(10)
    args = _mb_args(unit, func, pair, norm, remove_last)
    lr, schedule = 1e-3, mb.linear_warmup(3, 10)
    want = mb.train(model, batches, _cls_loss, args, lr=lr, weight_decay=0.1, schedule=schedule, interval=interval)
    got, tb = mb_run_ours(twin, batches, _cls_loss, lr=lr, weight_decay=0.1, schedule=schedule,
                          tb_kwargs=_mb_kwargs(args, interval, compat=True if kind == "bert" else "modelbalancing"))
    assert tb.compat == "modelbalancing"
    assert_runs([r["lrs"] for r in want], got)
    assert moving(got, [1 + interval, 1 + 2 * interval]), "the factors must change between passes"
    assert distinct(got[5]) >= (4 if unit == "block" else 8), "the case must exercise several learning rates"


@pytest.mark.parametrize("lag, interval", [(1, 1), (1, 3), (2, 3)])
def test_modelbalancing_loop_with_background_passes(lag, interval):
    """``lag=1`` analyses a copy of the weights in a background thread and is the reference's timing too (the pass
    at step t acts from update t + 1); ``lag=2`` acts one update later than the reference (documented)."""
    model = tiny_encoder("bert").train()
    twin = copy.deepcopy(model)
    batches = _bert_batches(10)
    args = _mb_args("layer", "sigmoid", (1.25, 1.25), False, True)
    lr, schedule = 1e-3, mb.linear_warmup(3, 10)
    want = mb.train(model, batches, _cls_loss, args, lr=lr, weight_decay=0.1, schedule=schedule, interval=interval)
    got, tb = mb_run_ours(twin, batches, _cls_loss, lr=lr, weight_decay=0.1, schedule=schedule,
                          tb_kwargs=dict(_mb_kwargs(args, interval), lag=lag))
    if lag == 1:
        assert_runs([r["lrs"] for r in want], got)
        assert not tb.skipped_refreshes
    else:
        assert max_rel(got[1], want[1]["lrs"])[0] > 1e-3  # update 1 still at factor 1: one update later


@pytest.mark.parametrize("unit, func, pair, norm, remove_last, interval", [
    ("block", "sigmoid", (2.0, 1.0), False, True, 1),
    ("layer", "rank", (2.0, 1.0), True, False, 2),
])
def test_modelbalancing_loop_on_minilm(minilm, unit, func, pair, norm, remove_last, interval):
    """The real MiniLM-L6 (37 matrices, pooler.dense the last analysed one), 8 updates; the word embeddings frozen
    (as the reference, TempBalance leaves frozen parameters out of every group's update)."""
    model = copy.deepcopy(minilm).double().eval()
    model.embeddings.word_embeddings.weight.requires_grad_(False)
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(5)
    batches = [torch.randint(0, 30000, (2, 10), generator=g) for _ in range(8)]

    def loss_fn(m, ids):
        return m(input_ids=ids).pooler_output.square().mean()

    args = _mb_args(unit, func, pair, norm, remove_last)
    lr, schedule = 2e-3, mb.linear_warmup(2, 8)
    want = mb.train(model, batches, loss_fn, args, lr=lr, weight_decay=0.1, schedule=schedule, interval=interval)
    got, tb = mb_run_ours(twin, batches, loss_fn, lr=lr, weight_decay=0.1, schedule=schedule,
                          tb_kwargs=_mb_kwargs(args, interval))
    assert_runs([r["lrs"] for r in want], got)
    assert moving(got, [1 + interval, 1 + 2 * interval])
    assert ("pooler.dense" in tb.units) != remove_last


@pytest.mark.parametrize("unit, norm", [("block", False), ("layer", True)])
def test_remove_last_on_minilm_is_the_reference(minilm, unit, norm):
    """remove_last under compat drops pooler.dense (the last analysed matrix, outside every block): the learning
    rates of one pass equal the reference's; without compat remove_last drops the last block instead."""
    model = copy.deepcopy(minilm).double().eval()
    args = _mb_args(unit, "sigmoid", (2.0, 1.0), norm, True)
    want = mb.reference_lrs(model, args, 1e-3)
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=1e-3), **_mb_kwargs(args, 1))
    tb.refresh()
    lr_of = {id(p): g["lr"] for g in tb.optimizer.param_groups for p in g["params"]}
    assert_lrs({n: lr_of[id(p)] for n, p in model.named_parameters()}, want)
    assert "pooler.dense" not in tb.units and len(tb.units) == 36
    ours = TempBalance(model, torch.optim.SGD(model.parameters(), lr=1e-3), unit=unit, s_lo=2.0, s_hi=1.0,
                       xmin_pos=1.5, remove_last=True, dtype=F64)
    lr_of = {id(p): g["lr"] for g in ours.optimizer.param_groups for p in g["params"]}
    rel, _ = max_rel({n: lr_of[id(p)] for n, p in model.named_parameters()}, want)
    assert rel > 0.1, "without compat, remove_last leaves the last block untuned (a documented difference)"


# ----------------------------------------------------------------------------------------------------------------
# NeurIPS'23 CNN (oracle cnn.train) through the tempbalance-cifar preset


def per_epoch(fn, steps_per_epoch: int):
    """A per-epoch schedule as a per-step lambda (TempBalance steps its base scheduler after every update)."""
    return lambda s: fn(s // steps_per_epoch)


def test_cnn_loop_through_the_cifar_preset():
    """SGD with momentum and weight decay, the reference's per-epoch cosine (epochs 0 and 1 at lr), 3 epochs of 3
    updates: the pass on the initial weights drives epoch 0, the pass at the end of epoch e drives epoch e + 1;
    BatchNorms ``bnK`` follow ``convK``, conv1 and linear (first and last) untuned."""
    torch.manual_seed(5)
    model = SmallResNet().double()
    twin = copy.deepcopy(model)
    data = [[(torch.randn(4, 3, 8, 8, dtype=F64), torch.randint(0, 10, (4,))) for _ in range(3)] for _ in range(3)]
    lr, epochs = 0.1, 4

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    want = cnn.train(model, data, loss_fn, cnn.Options(), lr=lr, num_epochs=epochs)
    opt = torch.optim.SGD(twin.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, per_epoch(
        lambda e: 1.0 if e == 0 else cnn.cosine_decay(1.0, e - 1, epochs), 3))
    tb = TempBalance(twin, opt, base_scheduler=sched, preset="tempbalance-cifar", dtype=F64)
    got = recorder(twin, opt)
    for batches in data:
        for batch in batches:
            opt.zero_grad()
            loss_fn(twin, batch).backward()
            opt.step()
            tb.step()
        tb.epoch_end()
    assert_runs(want, got)
    assert tb.compat == "tempbalance_cnn" and "conv1" not in tb.units and "linear" not in tb.units
    assert got[0]["layer1.0.bn2.weight"] == got[0]["layer1.0.conv2.weight"] != got[0]["layer2.0.shortcut.1.weight"]
    assert moving(got, [0, 3, 6])


# ----------------------------------------------------------------------------------------------------------------
# ModelBalancing's FNO trainer (oracle fno.train) through the modelbalancing-fno-cfd preset


@pytest.mark.parametrize("reduced_batch", [1, 4])
def test_fno_loop_through_the_fno_preset(reduced_batch):
    """Adam with coupled weight decay, StepLR per epoch (every 2 epochs here), 4 epochs of 2 updates; eigenvalues
    <= 1e-5 dropped before the fit (w3 starts with 5 zero rows: 15 of 20 left), fc2 (4 eigenvalues) untuned."""
    torch.manual_seed(2)
    model = TinyFNO2d().double()
    with torch.no_grad():
        model.w3.weight[:5] = 0.0
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(4)
    data = [[(torch.randn(2, 8, 8, 14, generator=g, dtype=F64), torch.randn(2, 8, 8, 4, generator=g, dtype=F64))
             for _ in range(2)] for _ in range(4)]
    kw = presets.get("modelbalancing-fno-cfd", reduced_batch=reduced_batch)
    s_lo, s_hi = kw["s_lo"], kw["s_hi"]
    lr = 2.5e-3

    def loss_fn(m, batch):
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    want = fno.train(model, data, loss_fn, lr=lr, s_lo=s_lo, s_hi=s_hi, weight_decay=1e-4, step_size=2, gamma=0.5)
    opt = torch.optim.Adam(twin.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2 * 2, gamma=0.5)  # per epoch, as steps
    tb = TempBalance(twin, opt, base_scheduler=sched, preset="modelbalancing-fno-cfd", reduced_batch=reduced_batch,
                     dtype=F64)
    got = recorder(twin, opt)
    for batches in data:
        for batch in batches:
            loss = loss_fn(twin, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tb.step()
        tb.epoch_end()
    assert_runs(want, got)
    assert tb.units == ["fc0", "w0", "w1", "w2", "w3", "fc1", "fc2"]
    assert got[0]["fc2.weight"] == got[0]["conv0.weights1"] == lr != got[0]["w3.weight"]
    assert tb.analysis_options["filter_zeros"] and tb.analysis_options["min_eigs"] == 12
    assert moving(got, [0, 2, 4])


def test_fno_first_pass_needs_more_than_min_eigs_filtered_eigenvalues():
    """The first pass tunes a layer with more than ``eigs_thres`` (12) filtered eigenvalues (train.py:194): w2
    with exactly 12 stays untuned, as in the reference's first pass."""
    torch.manual_seed(2)
    model = TinyFNO2d().double()
    with torch.no_grad():
        model.w2.weight[:8] = 0.0
    want = fno.reference_lrs(model, s_lo=0.5, s_hi=0.5, base_lr=1.0)
    tb = TempBalance(model, torch.optim.Adam(model.parameters(), lr=1.0), preset="modelbalancing-fno-cfd",
                     reduced_batch=2, dtype=F64)
    lr_of = {id(p): g["lr"] for g in tb.optimizer.param_groups for p in g["params"]}
    assert_lrs({n: lr_of[id(p)] for n, p in model.named_parameters()}, want)
    assert want["w2.weight"] == 1.0 and tb.last_report.rows[3].n_eigs == 12


# ----------------------------------------------------------------------------------------------------------------
# NeurIPS'23 LM trainer (oracle lm.train) through the tempbalance-lm-ptb preset


@pytest.mark.parametrize("esd_interval, assign", [(1, "tb_linear_map"), (10, "tb_linear_map"), (3, "tbr")])
def test_lm_loop_through_the_lm_preset(esd_interval, assign):
    """Adam, clip 0.25, the per-step cosine; the initial pass drives the first updates, a pass after every
    ``esd_interval``-th update drives the next ones, and between passes every lr (the base included) is held
    (``tb_update=stage``). LayerNorms follow the Linear before them; the last Linear (head) and the 16-wide gate
    are untuned."""
    torch.manual_seed(9)
    model = TinyLM().double()
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(6)
    batches = [torch.randint(0, 60, (4, 9), generator=g) for _ in range(12)]
    lr, max_step = 5e-3, 12

    def loss_fn(m, ids):
        logits = m(ids[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    args = lm.Args(esd_interval=esd_interval, assign_func=assign)
    want = lm.train(model, batches, loss_fn, args, lr=lr, max_step=max_step)
    opt = torch.optim.Adam(twin.parameters(), lr=lr)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, max_step) / max_step))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    # the published rows have esd_interval 1, 10 or 25; others, and the rank mapping, are overrides
    choice = dict(esd_interval=esd_interval) if esd_interval in (1, 10) else dict(interval=esd_interval)
    extra = {} if assign == "tb_linear_map" else dict(mapping="rank")
    tb = TempBalance(twin, opt, base_scheduler=sched, preset="tempbalance-lm-ptb", dtype=F64, **choice, **extra)
    got = recorder(twin, opt)
    for batch in batches:
        opt.zero_grad()
        loss_fn(twin, batch).backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.25)
        opt.step()
        tb.step()
    assert_runs(want, got)
    assert got[0]["layers.0.ln1.weight"] == got[0]["layers.0.attn.weight"] != lr
    assert got[0]["layers.0.ln2.bias"] == got[0]["layers.0.ff2.bias"]
    assert got[0]["layers.0.gate.weight"] == got[0]["head.weight"] == got[0]["ln_f.weight"] == lr
    if esd_interval > 1:  # held: the base rate does not follow the cosine between passes
        assert got[1]["emb.weight"] == got[0]["emb.weight"] == lr
    assert moving(got, [0, esd_interval, 2 * esd_interval] if esd_interval < 10 else [0, 10])


# ----------------------------------------------------------------------------------------------------------------
# Resume in the middle of a compat run


def _save(*objs) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save([o.state_dict() for o in objs], buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("scheme", ["modelbalancing", "tempbalance_lm"])
def test_resume_with_a_pass_pending_repeats_the_run_bit_for_bit(scheme):
    """Save after update 5 - ModelBalancing: the pass on those weights is pending (it acts from update 6); LM: the
    base rate is held since the pass at update 3 - load into a freshly built model / optimizer / TempBalance and
    go on: every later learning rate and the final weights equal the uninterrupted run's exactly."""
    if scheme == "modelbalancing":
        make = lambda: tiny_encoder("bert").train()  # noqa: E731
        batches, loss_fn = _bert_batches(10), _cls_loss
        kwargs = dict(compat=scheme, unit="layer", interval=1, xmin_pos=1.5, remove_last=True, dtype=F64)
    else:
        make = lambda: TinyLM().double()  # noqa: E731
        g = torch.Generator().manual_seed(6)
        batches = [torch.randint(0, 60, (4, 9), generator=g) for _ in range(10)]

        def loss_fn(m, ids):
            logits = m(ids[:, :-1])
            return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        kwargs = dict(preset="tempbalance-lm-ptb", interval=3, dtype=F64)

    def build(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
        return opt, TempBalance(model, opt, base_scheduler=sched, **kwargs)

    def run(model, opt, tb, part):
        lrs = recorder(model, opt)
        for batch in part:
            opt.zero_grad()
            loss_fn(model, batch).backward()
            opt.step()
            tb.step()
        return lrs

    torch.manual_seed(1)
    init = make()
    whole = copy.deepcopy(init)
    want = run(whole, *build(whole), batches)
    first = copy.deepcopy(init)
    opt, tb = build(first)
    run(first, opt, tb, batches[:5])
    saved = tb.state_dict()
    if scheme == "modelbalancing":
        assert saved["passes"]["pending"]["started_step"] == 5 and saved["passes"]["pending"]["due_step"] == 6
    else:
        assert saved["progress"]["held_base"] != tb.get_base_lr()  # held since step 3, the schedule moved on
    states = torch.load(_save(first, opt, tb), weights_only=True)
    second = copy.deepcopy(init)
    opt2, tb2 = build(second)
    second.load_state_dict(states[0])
    opt2.load_state_dict(states[1])
    tb2.load_state_dict(states[2])
    got = run(second, opt2, tb2, batches[5:])
    assert got == want[5:]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), second.state_dict().values()))


def test_compat_settings_are_checked_on_load():
    model = tiny_encoder("bert")
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), compat=True, unit="layer", interval=2)
    state = tb.state_dict()
    other = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), unit="layer", interval=2)
    with pytest.raises(ValueError, match=r"saved with compat='modelbalancing', this object has compat=None"):
        other.load_state_dict(state)
    normalized = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), compat=True, unit="layer",
                             interval=2, normalize=True)
    with pytest.raises(ValueError, match="saved with normalize=False, this object has normalize=True"):
        normalized.load_state_dict(state)
    state["version"] = 2
    with pytest.raises(ValueError, match="version 3 .got version 2"):
        TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), compat=True, unit="layer",
                    interval=2).load_state_dict(state)


# ----------------------------------------------------------------------------------------------------------------
# preset= is presets.get(); compat's argument checks


def test_preset_argument_equals_presets_get(minilm):
    model = copy.deepcopy(minilm)
    a = TempBalance(model, torch.optim.SGD(model.parameters(), lr=1e-3), preset="modelbalancing-glue", ratio=0.0002,
                    steps_per_epoch=57, dtype=F64)
    b = TempBalance(model, torch.optim.SGD(model.parameters(), lr=1e-3),
                    **presets.get("modelbalancing-glue", ratio=0.0002, steps_per_epoch=57), dtype=F64)
    assert a.state_dict()["settings"] == b.state_dict()["settings"] and a.compat == "modelbalancing"
    assert a.interval == b.interval == 5 and a.map_options == b.map_options and a.units == b.units
    assert a.analysis_options == b.analysis_options and a.analysis_options["xmin_pos"] == 1.5
    assert a.map_options["s_lo"] == 0.25
    c = TempBalance(model, torch.optim.SGD(model.parameters(), lr=1e-3), preset="modelbalancing-glue", ratio=0.0002,
                    interval=3, s_lo=2.0)  # explicit arguments win over the preset's
    assert (c.interval, c.map_options["s_lo"], c.map_options["s_hi"]) == (3, 2.0, 0.25)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['ratio'\].*needs preset="):
        TempBalance(model, torch.optim.SGD(model.parameters(), lr=1e-3), ratio=0.0002)
    with pytest.raises(ValueError, match="ratio=0.003 is not a published"):
        TempBalance(model, torch.optim.SGD(model.parameters(), lr=1e-3), preset="modelbalancing-glue", ratio=0.003,
                    interval=3)
    import inspect
    params = inspect.signature(TempBalance).parameters
    assert {"preset", "compat", "normalize", "filter_zeros", "s_lo"} <= set(params)


def test_compat_argument_errors():
    model = tiny_encoder("bert")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="compat must be True, False or one of"):
        TempBalance(model, opt, compat="bert")
    with pytest.raises(ValueError, match="stagger"):
        TempBalance(model, opt, compat=True, stagger=2)
    with pytest.raises(ValueError, match="compat='tempbalance_cnn' gives every layer its own factor"):
        TempBalance(model, opt, compat="tempbalance_cnn", unit="block")
    cnn_model = SmallResNet()
    with pytest.raises(ValueError, match=r"none of the \d+ matrices is in one"):
        TempBalance(cnn_model, torch.optim.SGD(cnn_model.parameters(), lr=0.1), compat="modelbalancing")
    with pytest.raises(ValueError, match="normalize must be True or False"):
        TempBalance(model, opt, normalize=1)
    assert TempBalance(cnn_model, torch.optim.SGD(cnn_model.parameters(), lr=0.1), compat=True).compat == \
        "tempbalance_cnn"


def test_parameters_frozen_at_construction_take_their_reference_factor_once_unfrozen():
    """Ownership follows the model's structure (issue 17's gradual unfreezing) under compat too: a block whose
    parameters are frozen when TempBalance is built gets the reference's per-parameter rates once unfrozen."""
    model = tiny_encoder("bert")
    block = "bert.encoder.layer.1."
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith(block))
    args = _mb_args("layer", "sigmoid", (2.0, 1.0), False, True)
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=1e-3), **_mb_kwargs(args, 1))
    tb.refresh()
    for p in model.parameters():
        p.requires_grad_(True)
    want = mb.reference_lrs(model, args, 1e-3)  # the reference with every parameter trainable
    lr_of = {id(p): g["lr"] for g in tb.optimizer.param_groups for p in g["params"]}
    assert_lrs({n: lr_of[id(p)] for n, p in model.named_parameters()}, want)
    assert want[block + "output.LayerNorm.weight"] == want[block + "output.dense.weight"] != 1e-3


def test_normalize_without_compat_makes_the_mean_factor_over_the_matrices_one():
    model = tiny_encoder("bert")
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), normalize=True, dtype=F64)
    plain = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), dtype=F64)
    per_matrix = [tb.factors[s.unit] for s in tb._specs]
    assert np.mean(per_matrix) == pytest.approx(1.0, abs=1e-14)
    ratio = {u: tb.factors[u] / plain.factors[u] for u in tb.units}
    assert max(ratio.values()) - min(ratio.values()) < 1e-14 and abs(next(iter(ratio.values())) - 1) > 1e-6
