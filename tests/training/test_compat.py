"""tempbalance.compat against independent transcriptions of the papers' reference code (tests/reference_oracles/).

Per-parameter learning rates in float64, relative error <= 1e-12: each side reads the spectra of the same weights
with its own estimator and assigns the rates with its own rules. ModelBalancing (block and two-level layer units,
every published (s_lo, s_hi) pair, linear map, rank, tb_lr_normalize, remove_last) on a tiny BERT and RoBERTa built
from configs and on the real MiniLM; the NeurIPS'23 CNN reference on a small ResNet and VGG. The training-loop
tests replay the references' step order with the package's functions; TempBalance itself is tested against the
same oracles in test_scheduler_compat.py.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from compat_cases import SIGMOID_PAIRS, SmallResNet, TinyFNO2d, assert_lrs, small_vgg, tiny_encoder
from reference_oracles import modelbalancing as mb
from reference_oracles import modelbalancing_fno as fno
from reference_oracles import tempbalance_cnn as cnn
from tempbalance import analysis
from tempbalance.training import compat
from tempbalance.adapters import MatrixSpec, get_adapter
from tempbalance.training.mapping import linear_range

transformers = pytest.importorskip("transformers")

# (unit, schedule_func, (s_lo, s_hi), tb_lr_normalize)
MB_CASES = (
    [(u, "sigmoid", pair, False) for u in ("block", "layer") for pair in SIGMOID_PAIRS]
    + [(u, f, (2.0, 1.0), norm) for u in ("block", "layer") for f in ("sigmoid", "linear_map", "rank")
       for norm in (True,)]
    + [(u, f, (2.0, 1.0), False) for u in ("block", "layer") for f in ("linear_map", "rank")]
)


@pytest.fixture(scope="module", params=["bert", "roberta", "minilm"])
def encoder(request):
    """(name, float64 model): tiny BERT / RoBERTa with a classification head, and the real MiniLM-L6 (BertModel
    with its pooler)."""
    if request.param == "minilm":
        return "minilm", copy.deepcopy(request.getfixturevalue("minilm")).double().eval()
    return request.param, tiny_encoder(request.param)


def _package_side(model, xmin_pos):
    adapter = get_adapter(model)
    specs = adapter.enumerate(model)
    blocks = compat.block_of_specs(adapter, specs)
    report = analysis.analyze_specs(specs, xmin_pos=xmin_pos, dtype=torch.float64, min_eigs=50)
    return specs, blocks, np.array([r.alpha for r in report.rows])


def _args(unit, func, pair, norm, xmin_pos=1.5, remove_last=True):
    return mb.Args(tb_unit=unit, schedule_func=func, sigmoid_min=pair[0], sigmoid_max=pair[1],
                   tb_lr_normalize=str(norm), xmin_pos=xmin_pos, remove_last_layer=str(remove_last))


def _mb_factors(model, specs, blocks, alphas, args: mb.Args, backend="auto"):
    s1, s2 = linear_range(args.lr_min_ratio, args.lr_slope)
    mapping = {"sigmoid": "sigmoid", "linear_map": "linear", "rank": "rank"}[args.schedule_func]
    return compat.param_factors(
        model, specs, alphas, scheme="modelbalancing", blocks=blocks, unit=args.tb_unit,
        remove_last=args.remove_last_layer == "True", min_eigs=args.eigs_num_thresh, mapping=mapping,
        tau=args.exp_temp, s_lo=args.sigmoid_min, s_hi=args.sigmoid_max, s1=s1, s2=s2,
        normalize=args.tb_lr_normalize == "True", backend=backend)


# ----------------------------------------------------------------------------------------------------------------
# ModelBalancing


@pytest.fixture(scope="module")
def encoder_sides(encoder):
    name, model = encoder
    return name, model, _package_side(model, 1.5), mb.esd(model, mb.Args(xmin_pos=1.5))


def test_modelbalancing_estimator_matches(encoder_sides):
    """The same matrices (nn.Linear with >= 50 eigenvalues), in the same order, with the same alphas."""
    _, _, (specs, _, alphas), ref_rows = encoder_sides
    ours = [(s.name, a) for s, a in zip(specs, alphas) if np.isfinite(a)]
    assert [n for n, _ in ours] == [n for n, _ in ref_rows]
    np.testing.assert_allclose([a for _, a in ours], [a for _, a in ref_rows], rtol=1e-12)


@pytest.mark.parametrize("unit, func, pair, norm", MB_CASES)
def test_modelbalancing_param_lrs(encoder_sides, unit, func, pair, norm):
    name, model, (specs, blocks, alphas), ref_rows = encoder_sides
    args = _args(unit, func, pair, norm)
    base = 3e-5
    names = [r[0] for r in ref_rows][:-1]  # remove_last_layer=True
    ref_alphas = np.array([r[1] for r in ref_rows])[:-1]
    want = mb.param_lrs(model, names, mb.scheduled_lrs(names, ref_alphas, args, base), base)
    got = {n: base * f for n, f in _mb_factors(model, specs, blocks, alphas, args).items()}
    assert_lrs(got, want)
    distinct = np.unique(np.round(np.array(list(want.values())) / base, 12))
    assert distinct.size >= (4 if unit == "block" else 8), "the case must exercise several learning rates"


def test_modelbalancing_layer_unit_norms_borrow_the_previous_weight(encoder_sides):
    """The norm rule itself, spelled out on block 0: attention.output.LayerNorm takes attention.output.dense's lr,
    output.LayerNorm takes output.dense's; biases their layer's; the removed last matrix moves no block."""
    name, model, (specs, blocks, alphas), _ = encoder_sides
    f = _mb_factors(model, specs, blocks, alphas, _args("layer", "sigmoid", (2.0, 1.0), False))
    pre = next(s.name for s in specs if s.name.endswith("layer.0.attention.self.query"))[: -len("attention.self.query")]
    assert f[pre + "attention.output.LayerNorm.weight"] == f[pre + "attention.output.dense.weight"]
    assert f[pre + "output.LayerNorm.bias"] == f[pre + "output.dense.weight"]
    assert f[pre + "attention.self.key.bias"] == f[pre + "attention.self.key.weight"]
    assert f[pre + "attention.output.dense.weight"] != f[pre + "output.dense.weight"]
    assert all(v == 1.0 for k, v in f.items() if ".layer." not in k)  # embeddings, pooler, classifier


@pytest.mark.parametrize("remove_last", [False, True])
def test_modelbalancing_remove_last_drops_a_matrix_not_a_block(encoder_sides, remove_last):
    """remove_last=False keeps the last analysed matrix (pooler / classifier.dense: outside every block) in the
    tb_lr_normalize mean; the package follows either way."""
    name, model, (specs, blocks, alphas), ref_rows = encoder_sides
    args = _args("layer", "sigmoid", (1.25, 1.25), True, remove_last=remove_last)
    base = 2e-5
    rows = ref_rows[:-1] if remove_last else ref_rows
    names, ref_alphas = [r[0] for r in rows], np.array([r[1] for r in rows])
    want = mb.param_lrs(model, names, mb.scheduled_lrs(names, ref_alphas, args, base), base)
    got = {n: base * f for n, f in _mb_factors(model, specs, blocks, alphas, args).items()}
    assert_lrs(got, want)
    kept = compat.select(specs, scheme="modelbalancing", remove_last=remove_last)
    dropped = {s.name for s in specs} - {specs[i].name for i in kept}
    assert blocks[[s.name for s in specs].index(ref_rows[-1][0])] is None, "the last analysed matrix is outside"
    assert (ref_rows[-1][0] in dropped) == remove_last


def test_modelbalancing_xmin_pos_2_and_native_torch_agree(encoder_sides):
    name, model, _, _ = encoder_sides
    specs, blocks, alphas = _package_side(model, 2.0)
    args = _args("layer", "rank", (2.0, 1.0), True, xmin_pos=2.0)
    want = mb.reference_lrs(model, args, 1.0)
    for backend in ("torch", "auto"):
        assert_lrs(_mb_factors(model, specs, blocks, alphas, args, backend=backend), want)


def test_modelbalancing_training_loop_timing():
    """The reference's loop (oracle): spectra at the top of step t, factors written after update t. Replayed with
    the package's functions on the weights the oracle analysed: update 0 runs at factor 1, update t >= 1 at
    base(t) x factors of the last analysis at or before step t - 1. 10 steps, interval 3, linear warmup."""
    model = tiny_encoder("bert").train()
    start = copy.deepcopy(model)
    torch.manual_seed(3)
    batches = [(torch.randint(0, 120, (4, 12)), torch.randint(0, 2, (4,))) for _ in range(10)]
    snapshots: dict[int, dict] = {}

    def loss_fn(m, batch):
        return m(input_ids=batch[0], labels=batch[1]).loss

    args = _args("layer", "sigmoid", (1.25, 1.25), False)
    interval, lr, schedule = 3, 1e-3, mb.linear_warmup(3, 10)
    records = mb.train(model, batches, loss_fn, args, lr=lr, weight_decay=0.1, schedule=schedule,
                       interval=interval, on_esd=lambda t, m: snapshots.setdefault(t, copy.deepcopy(m.state_dict())))
    assert sorted(snapshots) == [0, 3, 6, 9]
    assert all("esd_names" in records[t] for t in snapshots)
    for t, rec in enumerate(records):
        base = lr * schedule(t)
        if t == 0:
            want = {n: base for n in rec["lrs"]}
        else:
            r = (t - 1) // interval * interval
            start.load_state_dict(snapshots[r])
            specs, blocks, alphas = _package_side(start, 1.5)
            want = {n: base * f for n, f in _mb_factors(start, specs, blocks, alphas, args).items()}
        assert_lrs(rec["lrs"], want)
        if t >= 1:
            assert len(set(np.round(list(rec["lrs"].values()), 15))) > 4


def test_reference_interval_rule():
    for n, want in ((5, 1), (9, 1), (10, 1), (57, 5), (999, 99), (1000, 100), (50000, 100)):
        assert compat.reference_interval(n) == want == mb.esd_interval(n, mb.Args())
    assert compat.reference_interval(4000, grad_accum=2, max_steps=400) == 20 == mb.esd_interval(4000, mb.Args(), 2, 400)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        compat.reference_interval(0)
    with pytest.raises(ValueError, match="max_steps"):
        compat.reference_interval(100, grad_accum=4)


# ----------------------------------------------------------------------------------------------------------------
# NeurIPS'23 CNN reference


def _cnn_factors(model, opts: cnn.Options, backend="auto"):
    adapter = get_adapter(model, "generic")
    specs = adapter.enumerate(model)
    report = analysis.analyze_specs(specs, xmin_pos=opts.xmin_pos, dtype=torch.float64, min_eigs=0,
                                    conv_scale=opts.conv_norm)
    mapping = {"tb_linear_map": "linear", "tb_step": "rank"}[opts.assign_func]
    return compat.param_factors(
        model, specs, [r.alpha for r in report.rows], scheme="tempbalance_cnn", min_eigs=opts.eigs_thresh,
        remove_first=opts.remove_first_layer, remove_last=opts.remove_last_layer, mapping=mapping,
        s1=opts.lr_min_ratio, s2=opts.lr_max_ratio, backend=backend)


@pytest.mark.parametrize("net", ["resnet", "vgg"])
@pytest.mark.parametrize("assign", ["tb_linear_map", "tb_step"])
@pytest.mark.parametrize("ends", [(True, True), (False, False), (True, False)])
def test_cnn_param_lrs(net, assign, ends):
    torch.manual_seed(11)
    model = (SmallResNet() if net == "resnet" else small_vgg()).double()
    opts = cnn.Options(assign_func=assign, remove_first_layer=ends[0], remove_last_layer=ends[1])
    base = 0.05
    want = cnn.reference_lrs(model, opts, base)
    got = {n: base * f for n, f in _cnn_factors(model, opts).items()}
    assert_lrs(got, want)
    tuned, _ = cnn.tuned_layers(model, opts)
    assert len(set(np.round(list(want.values()), 14))) >= 4
    if net == "resnet":  # BatchNorms named like their conv follow it; shortcut BatchNorms keep the base lr
        assert got["layer1.0.bn2.weight"] == got["layer1.0.conv2.weight"] != base
        assert got["layer2.0.shortcut.1.weight"] == base and "layer2.0.shortcut.0" not in tuned  # 8 eigenvalues
        assert got["bn1.weight"] == base  # conv1 (27 eigenvalues) is removed first or thresholded


def test_cnn_training_loop_two_epochs():
    """The reference's epoch loop (oracle): groups from the initial weights, then after epoch e a pass on the
    epoch's final weights at cosine_decay(lr, e). Replayed with the package's functions over 2 epochs (+ the
    start of a third)."""
    torch.manual_seed(5)
    model = SmallResNet().double()
    start = copy.deepcopy(model)
    data = [[(torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))) for _ in range(3)]
            for _ in range(3)]
    snapshots: list[dict] = []
    opts = cnn.Options()
    lr, epochs = 0.1, 4

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    records = cnn.train(model, data, loss_fn, opts, lr=lr, num_epochs=epochs,
                        on_pass=lambda m: snapshots.append(copy.deepcopy(m.state_dict())))
    assert len(records) == 9 and len(snapshots) == 4
    for e in range(3):
        base = lr if e == 0 else cnn.cosine_decay(lr, e - 1, epochs)
        start.load_state_dict(snapshots[e])
        want = {n: base * f for n, f in _cnn_factors(start, opts).items()}
        for t in range(3 * e, 3 * e + 3):
            assert_lrs(records[t], want)


# ----------------------------------------------------------------------------------------------------------------
# ModelBalancing's FNO trainer


@pytest.mark.parametrize("pair", [(0.125, 0.125), (0.5, 0.5), (1.0, 1.0), (0.25, 0.25)])
def test_fno_param_lrs(pair):
    """Per-layer TBSigmoid over the filtered spectra (eigenvalues <= 1e-5 dropped after the conv x0.5), layers
    with <= 12 filtered eigenvalues untuned: w2 loses 9 of its 20 (11 left: untuned), w3 loses 5 (15: tuned),
    fc2 has 4."""
    torch.manual_seed(2)
    model = TinyFNO2d().double()
    with torch.no_grad():
        model.w2.weight[:9] = 0.0
        model.w3.weight[:5] = 0.0
    base = 2.5e-3
    want = fno.reference_lrs(model, s_lo=pair[0], s_hi=pair[1], base_lr=base)
    specs = get_adapter(model, "generic").enumerate(model)
    assert [s.name for s in specs] == ["fc0", "w0", "w1", "w2", "w3", "fc1", "fc2"]
    report = analysis.analyze_specs(specs, xmin_pos=2.0, dtype=torch.float64, min_eigs=13, filter_zeros=True,
                                    zero_tol=1e-5, conv_scale=0.5)
    assert [r.name for r in report.rows if not r.ok] == ["w2", "fc2"]
    got = compat.param_factors(model, specs, [r.alpha for r in report.rows], scheme="modelbalancing_fno",
                               min_eigs=0, mapping="sigmoid", tau=10.0, s_lo=pair[0], s_hi=pair[1])
    assert_lrs({n: base * f for n, f in got.items()}, want)
    assert want["w2.weight"] == want["conv0.weights1"] == base != want["w3.weight"]


# ----------------------------------------------------------------------------------------------------------------
# The pure functions' own contracts


def test_select_orders():
    """ModelBalancing thresholds first, then drops the last listed; TempBalance drops the ends, then thresholds."""
    mats = [nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10)]
    specs = [MatrixSpec(f"l{i}", "linear", (lambda m=m: m.weight), f"l{i}", list(m.parameters()))
             for i, m in enumerate(mats)]
    assert compat.select(specs, scheme="modelbalancing", remove_last=True) == [0]
    assert compat.select(specs, scheme="tempbalance_cnn", remove_last=True) == [0, 1]
    assert compat.select(specs, scheme="tempbalance_cnn", remove_first=True, remove_last=True) == [1]
    assert compat.select(specs, scheme="modelbalancing", remove_first=True, remove_last=True, min_eigs=0) == [1]
    with pytest.raises(ValueError, match="scheme"):
        compat.select(specs, scheme="resnet")
    with pytest.raises(ValueError, match="sizes"):
        compat.select(specs, scheme="modelbalancing", sizes=[1, 2])


def test_spectrum_size_from_shapes():
    conv = nn.Conv2d(16, 32, 3)
    spec = MatrixSpec("c", "conv", lambda: conv.weight, "c")
    assert compat.spectrum_size(spec) == 9 * 16
    spec = MatrixSpec("l", "linear", lambda: torch.zeros(10, 384), "l")
    assert compat.spectrum_size(spec) == 10


def test_layer_factors_closed_form():
    """Two blocks: alphas (2, 4) and (3, 5, 4); block means 3 and 4 -> sigmoid factors; layer unit multiplies the
    linear map of each alpha within its block; a matrix outside blocks gets 1 and counts in the normalisation."""
    v = [2.0, 4.0, 3.0, 5.0, 4.0, 7.0]
    blocks = ["a", "a", "b", "b", "b", None]
    sig = 1 / (1 + math.exp(-10 * 0.5))
    fa, fb = 10 ** (2 * ((1 - sig) - 0.5)), 10 ** (1 * (sig - 0.5))
    np.testing.assert_allclose(compat.layer_factors(v, blocks), [fa, fa, fb, fb, fb, 1.0], rtol=1e-14)
    layer = compat.layer_factors(v, blocks, unit="layer")
    np.testing.assert_allclose(layer, [fa * 0.5, fa * 1.5, fb * 0.5, fb * 1.5, fb * 1.0, 1.0], rtol=1e-14)
    norm = compat.layer_factors(v, blocks, unit="layer", normalize=True)
    np.testing.assert_allclose(norm, layer / layer.mean(), rtol=1e-14)
    rank = compat.layer_factors(v, blocks, mapping="rank", s1=0.5, s2=1.5)
    np.testing.assert_allclose(rank, [0.5, 0.5, 1.0, 1.0, 1.0, 1.0], rtol=1e-14)
    single = compat.layer_factors([3.0, 4.0], ["a", "b"], unit="layer", mapping="linear")  # one matrix per block
    np.testing.assert_allclose(single, [0.5 * 1.5, 1.5 * 1.5])
    np.testing.assert_allclose(compat.layer_factors([3.0, 1.0, 2.0], None, mapping="linear"), [1.5, 0.5, 1.0])
    v, blocks = [2.0, np.nan, 4.0, np.nan], ["a", "a", "b", "c"]  # an unfitted alpha: out of means, maps and ranks
    nan, block = compat.layer_factors(v, blocks, unit="layer"), compat.layer_factors(v, blocks)
    assert nan[1] == block[1] and nan[0] == 1.5 * block[0] and nan[3] == block[3] == 1.0


def test_param_owners_rules():
    """The LM rule (a LayerNorm follows the Linear before it) and the FNO rule (nothing follows)."""
    model = nn.Sequential(OrderedDict(fc=nn.Linear(64, 64), ln=nn.LayerNorm(64), head=nn.Linear(64, 64),
                                      ln2=nn.LayerNorm(64)))
    specs = [MatrixSpec(n, "linear", (lambda m=m: m.weight), n, list(m.parameters()))
             for n, m in model.named_children() if isinstance(m, nn.Linear)]
    lm = compat.param_owners(model, specs[:1], scheme="tempbalance_lm")
    assert lm == {"fc.weight": "fc", "fc.bias": "fc", "ln.weight": "fc", "ln.bias": "fc", "head.weight": None,
                  "head.bias": None, "ln2.weight": None, "ln2.bias": None}
    fno = compat.param_owners(model, specs, scheme="modelbalancing_fno")
    assert fno["ln.weight"] is None and fno["head.bias"] == "head"
    model.ln.requires_grad_(False)  # frozen parameters keep their owner: it follows the structure
    assert compat.param_owners(model, specs[:1], scheme="tempbalance_lm") == lm
    with pytest.raises(ValueError, match="blocks"):
        compat.param_factors(model, specs, [3.0, 4.0], scheme="modelbalancing")
