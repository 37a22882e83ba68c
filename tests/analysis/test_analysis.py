"""analyze(): which matrices, one batched pass, bad layers reported (never raised), bad options raised."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tempbalance import _backend, _native
from tempbalance.analysis import spectral_pass as analysis_module
from tempbalance.adapters import MatrixSpec, get_adapter, register_adapter
from tempbalance.adapters.generic import GenericAdapter
from tempbalance import analyze, analyze_specs


def np_alpha(w: np.ndarray, xmin_pos: float = 2.0) -> float:
    """Independent float64 PL_Alpha_Hill of a matrix: squared singular values, median xmin."""
    lam = np.sort(np.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2)
    i = int(math.floor(lam.size / xmin_pos))
    return 1 + (lam.size - i) / np.sum(np.log(lam[i:] / lam[i]))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(300, 64)
        self.fc1 = nn.Linear(64, 128)
        self.conv = nn.Conv2d(8, 32, 3)
        self.small = nn.Linear(10, 10)
        self.norm = nn.LayerNorm(128)
        self.head = nn.Linear(128, 96, bias=False)


@pytest.fixture
def tiny():
    return Tiny()


def test_analyze_module_rows(tiny, backend):
    rep = analyze(tiny, backend=backend, dtype=torch.float64)
    assert [r.name for r in rep.rows] == ["fc1", "conv", "small", "head"]
    assert [r.kind for r in rep.rows] == ["linear", "conv", "linear", "linear"]
    assert rep["fc1"].shape == (128, 64) and rep["conv"].shape == (32, 8, 3, 3)
    assert rep["fc1"].n_eigs == 64 and rep["conv"].n_eigs == 9 * 8 and rep["head"].n_eigs == 96
    assert rep["small"].status == "too_few_eigs" and "'small'" in rep["small"].reason
    for name in ("fc1", "head"):
        w = getattr(tiny, name).weight.detach().double().numpy()
        assert rep[name].alpha == pytest.approx(np_alpha(w), rel=1e-9)
        assert rep[name].spectral_norm == pytest.approx(np.linalg.norm(w, 2) ** 2, rel=1e-9)
        assert rep[name].frobenius == pytest.approx(np.sum(w.astype(np.float64) ** 2), rel=1e-9)
    assert rep["conv"].status == "ok"
    emb = analyze(tiny, backend=backend, include_embeddings=True)
    assert emb.rows[0].name == "embed" and emb.rows[0].kind == "embedding" and emb.rows[0].n_eigs == 64


def test_float32_close_to_float64(tiny, backend):
    r32 = analyze(tiny, backend=backend)
    r64 = analyze(tiny, backend=backend, dtype=torch.float64)
    for a, b in zip(r32.rows, r64.rows):
        if b.status == "ok":
            assert a.alpha == pytest.approx(b.alpha, rel=1e-4)


def test_state_dict_and_pairs_match_module(tiny, backend):
    by_module = analyze(tiny, backend=backend)
    sd = analyze(tiny.state_dict(), backend=backend)
    pairs = analyze(list(tiny.named_parameters()), backend=backend)
    for rep in (sd, pairs):
        names = [r.name for r in rep.rows]
        assert names == ["fc1.weight", "conv.weight", "small.weight", "head.weight"]
        for r in rep.rows:
            assert r.alpha == by_module[r.unit].alpha or (math.isnan(r.alpha) and math.isnan(by_module[r.unit].alpha))
        skipped = dict(rep.skipped)
        assert "embed.weight" in skipped and "fc1.bias" in skipped and "norm.weight" in skipped


def test_complex_weights_from_named_pairs(backend):
    w = torch.randn(16, 16, 4, 3, dtype=torch.complex64)
    rep = analyze([("fno.convs.0.weight", w)], backend=backend, min_eigs=20)
    row = rep.rows[0]
    assert row.kind == "spectral" and row.n_eigs == 16 * 12 and row.status == "ok"


def test_nan_and_inf_layers_are_reported_not_raised(tiny, backend):
    with torch.no_grad():
        tiny.fc1.weight[3, 5] = float("nan")
        tiny.head.weight[0, 0] = float("inf")
    rep = analyze(tiny, backend=backend)
    assert rep["fc1"].status == "non_finite" and "'fc1'" in rep["fc1"].reason and "1 NaN" in rep["fc1"].reason
    assert rep["head"].status == "non_finite" and "1 Inf" in rep["head"].reason
    assert math.isnan(rep["fc1"].alpha)
    assert rep["conv"].status == "ok"


def test_float64_weights_that_overflow_float32(backend):
    w = torch.randn(60, 60, dtype=torch.float64) * 1e39
    rep = analyze([("big", w)], backend=backend, dtype=torch.float32)
    assert rep["big"].status == "non_finite" and "overflows" in rep["big"].reason
    assert analyze([("big", w)], backend=backend)["big"].status != "non_finite"  # float64 weights: float64


@pytest.mark.parametrize("case", ["ok", "nan", "inf", "both_infs", "sum_overflows", "complex_nan", "complex_ok"])
def test_finite_check_agrees_with_numpy(case):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, 9, generator=g)
    if case == "nan":
        w[4, 6, 8] = float("nan")
    elif case == "inf":
        w[0, 0, 0] = float("-inf")
    elif case == "both_infs":  # the sum is NaN
        w[1, 2, 3], w[2, 3, 4] = float("inf"), float("-inf")
    elif case == "sum_overflows":  # every entry finite, their float32 sum is not
        w = torch.full((4, 8), 3e38)
    elif case.startswith("complex"):
        w = torch.complex(w, torch.randn(5, 7, 9, generator=g))
        if case == "complex_nan":
            w[2, 2, 2] = complex(0.0, float("nan"))
    assert analysis_module._all_finite(w) == bool(np.isfinite(w.numpy()).all())


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_models(tiny, backend, half):
    tiny = tiny.to(half)
    rep = analyze(tiny, backend=backend)
    w = tiny.fc1.weight.detach().float().numpy()
    assert rep["fc1"].status == "ok"
    assert rep["fc1"].alpha == pytest.approx(np_alpha(w), rel=1e-4)
    assert tiny.fc1.weight.dtype == half


def test_degenerate_layers(backend):
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(0, 64), nn.Linear(100, 80))
    with torch.no_grad():
        model[0].weight.zero_()  # zero matrix
        model[1].weight.copy_(torch.eye(64) * 3)  # all-equal spectrum
        model[3].weight.copy_(torch.randn(80, 5) @ torch.randn(5, 100))  # rank 5 of 80
    rep = analyze(model, backend=backend)
    assert rep["0"].status == "xmin_not_positive"
    assert rep["1"].status == "flat_tail" and rep["1"].xmin == pytest.approx(9.0)
    assert rep["2"].status == "empty" and "'2'" in rep["2"].reason
    assert rep["3"].status == "xmin_not_positive" and "'3'" in rep["3"].reason
    assert all(math.isnan(r.alpha) for r in rep.rows)


def test_failing_weight_callable_is_an_error_row(backend):
    def boom():
        raise RuntimeError("cannot densify")

    specs = [MatrixSpec("bad", "linear", boom, "bad"),
             MatrixSpec("good", "linear", lambda: torch.randn(80, 60), "good")]
    rep = analyze_specs(specs, backend=backend)
    assert rep["bad"].status == "error" and "cannot densify" in rep["bad"].reason and "'bad'" in rep["bad"].reason
    assert rep["good"].status == "ok"


def test_chunking_gives_the_same_numbers(tiny, backend):
    whole = analyze(tiny, backend=backend)
    tiny_chunks = analyze(tiny, backend=backend, chunk_bytes=1)
    for a, b in zip(whole.rows, tiny_chunks.rows):
        assert a.status == b.status
        assert a.alpha == b.alpha or (math.isnan(a.alpha) and math.isnan(b.alpha))


def test_model_is_not_modified(tiny, backend):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    grads = {k: p.requires_grad for k, p in tiny.named_parameters()}
    tiny.train()
    analyze(tiny, backend=backend, conv_scale=0.5, xmin_rule="fit")
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert grads == {k: p.requires_grad for k, p in tiny.named_parameters()}
    assert tiny.training
    assert all(p.grad is None for p in tiny.parameters())


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(xmin_pos=1.0), ValueError, "xmin_pos"),
        (dict(xmin_rule="best"), ValueError, "xmin_rule"),
        (dict(min_eigs=-3), ValueError, "min_eigs"),
        (dict(dtype=torch.float16), ValueError, "dtype"),
        (dict(backend="cuda"), ValueError, "backend"),
        (dict(num_threads=0), ValueError, "num_threads"),
        (dict(chunk_bytes=0), ValueError, "chunk_bytes"),
        (dict(conv_mode="pool"), ValueError, "conv_mode"),
        (dict(conv_scale=-0.5), ValueError, "conv_scale"),
        (dict(zero_rtol=-1.0), ValueError, "zero_rtol"),
        (dict(filter_zeros="yes"), ValueError, "filter_zeros"),
        (dict(include_embeddings=1), ValueError, "include_embeddings"),
        (dict(adapter="no-such-adapter"), ValueError, "adapter"),
    ],
)
def test_bad_options_raise(tiny, kw, exc, match):
    with pytest.raises(exc, match=match):
        analyze(tiny, **kw)


def test_bad_input_type_raises():
    with pytest.raises(TypeError, match="model_or_named_weights"):
        analyze(torch.randn(4, 4))
    with pytest.raises(TypeError, match="model_or_named_weights"):
        analyze(42)


def test_hf_conv1d_and_tied_weights(backend):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=2, n_positions=32, vocab_size=100)
    model = transformers.GPT2LMHeadModel(cfg)
    rep = analyze(model, backend=backend)
    kinds = {r.name: r.kind for r in rep.rows}
    assert kinds["transformer.h.0.attn.c_attn"] == "conv1d_hf"
    assert rep["transformer.h.0.attn.c_attn"].shape == (64, 192)  # stored (in, out)
    w = model.transformer.h[0].mlp.c_fc.weight.detach().numpy()
    assert rep["transformer.h.0.mlp.c_fc"].alpha == pytest.approx(np_alpha(w), rel=1e-4)
    with_emb = analyze(model, backend=backend, include_embeddings=True)
    names = [r.name for r in with_emb.rows]
    assert "transformer.wte" in names and "lm_head" not in names  # lm_head is tied to wte: analysed once


def test_multihead_attention_in_proj(backend):
    model = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True)
    rep = analyze(model, backend=backend)
    names = [r.name for r in rep.rows]
    assert names[0] == "self_attn.in_proj" and rep.rows[0].shape == (192, 64)
    assert {"self_attn.out_proj", "linear1", "linear2"} <= set(names)


def test_lora_effective_weight(backend):
    peft = pytest.importorskip("peft")

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(64, 80)
            self.out = nn.Linear(80, 70)

    model = peft.get_peft_model(M(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]))
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    rep = analyze(model, backend=backend, dtype=torch.float64)
    row = next(r for r in rep.rows if r.name.endswith("proj") and r.kind == "lora")
    assert not any("lora_A" in r.name or "base_layer" in r.name for r in rep.rows)
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    eff = layer.base_layer.weight.detach() + 2.0 * (b @ a)  # scaling = lora_alpha / r = 2
    assert row.alpha == pytest.approx(np_alpha(eff.numpy()), rel=1e-9)
    specs = GenericAdapter().enumerate(model)
    lora_spec = next(s for s in specs if s.kind == "lora")
    # the layer drives its trainable factors (and owns its frozen base weight, which has no gradient)
    assert {id(p) for p in lora_spec.params} == {id(layer.lora_A["default"].weight),
                                                   id(layer.lora_B["default"].weight), id(layer.base_layer.weight),
                                                   id(layer.base_layer.bias)}
    unscaled = GenericAdapter(lora_scaling=False).enumerate(model)
    eff1 = next(s for s in unscaled if s.kind == "lora").weight()
    assert torch.allclose(eff1, layer.base_layer.weight + b @ a)


def test_adapter_registry():
    class Marked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(60, 60)

    class OnlyFirst(GenericAdapter):
        name = "only_first"
        min_eigs = 7

        def enumerate(self, model, include_embeddings=False):
            return super().enumerate(model, include_embeddings)[:1]

    register_adapter("test_marked", lambda m: isinstance(m, Marked), OnlyFirst, priority=50)
    assert isinstance(get_adapter(Marked()), OnlyFirst)
    assert isinstance(get_adapter(nn.Linear(3, 3)), GenericAdapter)
    assert isinstance(get_adapter(Marked(), "generic"), GenericAdapter)
    rep = analyze(Marked(), backend="torch")
    assert rep.settings["min_eigs"] == 7  # the adapter's default
    with pytest.raises(ValueError, match="adapter name"):
        register_adapter("auto", lambda m: True, OnlyFirst)


def test_unit_params_layer_and_block(tiny):
    ad = GenericAdapter()
    specs = ad.enumerate(tiny)
    layer = ad.unit_params(tiny, specs, unit="layer")
    assert [id(p) for p in layer["fc1"]] == [id(tiny.fc1.weight), id(tiny.fc1.bias)]
    assert ad.unit_params(tiny, specs, unit="block").keys() == layer.keys()
    with pytest.raises(ValueError, match="unit"):
        ad.unit_params(tiny, specs, unit="model")


@pytest.mark.skipif(_native.core is not None, reason="the fallback warning only exists without the native core")
def test_auto_backend_warns_once(tiny, monkeypatch):
    monkeypatch.setattr(_backend, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analyze(tiny)
        analyze(tiny)
    assert sum("native core unavailable" in str(w.message) for w in caught) == 1
    with pytest.raises(RuntimeError, match="native"):
        analyze(tiny, backend="native")


# --- the real pretrained MiniLM ------------------------------------------------------------------------------
def test_minilm_torch_matches_float64_oracle(minilm):
    rep = analyze(minilm, backend="torch")
    assert len(rep.rows) == 6 * 6 + 1 and all(r.status == "ok" for r in rep.rows)
    for name in ("encoder.layer.0.attention.self.query", "encoder.layer.3.intermediate.dense",
                 "encoder.layer.5.output.dense"):
        w = minilm.get_submodule(name).weight.detach().numpy()
        assert rep[name].alpha == pytest.approx(np_alpha(w), rel=1e-4)
    assert 1.5 < rep.summary["alpha_mean"] < 4


@pytest.mark.skipif(_native.core is None, reason=f"native core not built ({_native.unavailable_reason})")
@pytest.mark.parametrize("rule", ["median", "fit"])
def test_minilm_native_agrees_with_torch(minilm, rule):
    nat = analyze(minilm, backend="native", xmin_rule=rule)
    ref = analyze(minilm, backend="torch", xmin_rule=rule)
    for a, b in zip(nat.rows, ref.rows):
        assert a.name == b.name and a.status == b.status == "ok"
        assert a.alpha == pytest.approx(b.alpha, rel=1e-4)
        assert a.spectral_norm == pytest.approx(b.spectral_norm, rel=1e-5)
        assert a.stable_rank == pytest.approx(b.stable_rank, rel=1e-5)


# --- precision follows the weights (case 12) ------------------------------------------------------------------------
def test_default_precision_follows_the_weight(backend):
    from tempbalance import esd

    w = torch.randn(128, 80, dtype=torch.float64)
    ref = np.sort(np.linalg.svd(w.numpy(), compute_uv=False) ** 2)
    e = esd(w, backend=backend)
    assert e.dtype == torch.float64
    np.testing.assert_allclose(e.numpy(), ref, rtol=1e-11)  # was float32: 7e-7
    for lower in (torch.float32, torch.float16, torch.bfloat16):
        assert esd(w.to(lower), backend=backend).dtype == torch.float32
    assert esd(w, dtype=torch.float32, backend=backend).dtype == torch.float32
    assert analyze([("w", w)], backend=backend)["w"].alpha == pytest.approx(np_alpha(w.numpy()), rel=1e-11)
    assert analyze([("w", w)], backend=backend).settings["dtype"] == "auto"


def test_tempbalance_analyses_a_float64_model_in_float64():
    from tempbalance import TempBalance

    model = nn.Sequential(nn.Linear(40, 64), nn.Linear(64, 48)).double()
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), min_eigs=8, backend="torch")
    for name in ("0", "1"):
        w = model[int(name)].weight.detach().numpy()
        assert tb.alphas[name] == pytest.approx(np_alpha(w), rel=1e-11)


# --- tied weights and weights no rule analyses (cases 4, 7) ---------------------------------------------------------
def tiny_llama(tied: bool):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(cfg)


def test_a_head_tied_to_the_embedding_is_the_embedding(backend):
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=64, n_head=2, n_positions=32,
                                                                vocab_size=100))
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    rep = analyze(gpt2, backend=backend)
    assert "lm_head" not in rep and ("transformer.wte.weight", "embedding (include_embeddings=False)") in rep.skipped
    from tempbalance import TempBalance

    opt = torch.optim.AdamW(gpt2.parameters(), lr=1e-3)
    tb = TempBalance(gpt2, opt, min_eigs=8, backend=backend)
    assert "lm_head" not in tb.units  # the embedding was tuned as "lm_head" (factor 2.97 seen)
    wte = next(i for i, g in enumerate(opt.param_groups) if any(p is gpt2.transformer.wte.weight for p in g["params"]))
    assert tb.group_units[wte] is None and opt.param_groups[wte]["lr"] == 1e-3
    llama = tiny_llama(tied=True)
    assert llama.lm_head.weight is llama.model.embed_tokens.weight
    rep = analyze(llama, backend=backend)
    assert "lm_head" not in rep
    with_emb = analyze(llama, backend=backend, include_embeddings=True)
    assert [r.name for r in with_emb.rows if r.kind == "embedding"] == ["model.embed_tokens"]
    assert "lm_head" not in with_emb
    assert "lm_head" in analyze(tiny_llama(tied=False), backend=backend)  # an untied head is a linear layer


def test_state_dict_with_a_tied_head(backend):
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=64, n_head=2, n_positions=32,
                                                                vocab_size=100))
    state = dict(gpt2.state_dict(keep_vars=True))
    rep = analyze(state, backend=backend)
    assert "lm_head.weight" not in rep
    assert ("lm_head.weight", "tied to an embedding (include_embeddings=False)") in rep.skipped


def test_multihead_attention_with_other_key_and_value_sizes(backend):
    mha = nn.MultiheadAttention(64, 4, kdim=96, vdim=80)
    rep = analyze(mha, backend=backend)
    assert [(r.name, r.shape) for r in rep.rows] == [("q_proj", (64, 64)), ("k_proj", (64, 96)),
                                                     ("v_proj", (64, 80)), ("out_proj", (64, 64))]
    assert rep["k_proj"].alpha == pytest.approx(np_alpha(mha.k_proj_weight.detach().numpy()), rel=1e-4)
    assert rep.skipped == []


def test_recurrent_and_bare_weights_are_reported_as_skipped(backend):
    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(16, 64, num_layers=2)
            self.gate = nn.Parameter(torch.randn(64, 64))
            self.head = nn.Linear(64, 64)

    rep = analyze(Policy(), backend=backend)
    assert [r.name for r in rep.rows] == ["head"]
    skipped = dict(rep.skipped)
    assert set(skipped) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1", "gate"}
    assert "LSTM recurrent weight" in skipped["rnn.weight_hh_l0"] and "no adapter rule" in skipped["gate"]
    assert "not analysed: 5 tensor(s)" in str(rep)
