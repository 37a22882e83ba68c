"""LLaMA-style adapter: model.layers.N blocks, PEFT LoRA effective weights (rsLoRA), block LR on lora_A/lora_B."""
from __future__ import annotations

import math

import peft
import pytest
import torch
import transformers as T

from schedule_cases import SCHEDULES, assert_sigmoid_factors, run_checked
from tempbalance.adapters import get_adapter
from tempbalance.training.scheduler import TempBalance

KW = dict(min_eigs=8, backend="torch", interval=2)
SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             intermediate_size=48, max_position_embeddings=32)


def tiny_llama(seed=0, tie=True):
    torch.manual_seed(seed)
    return T.LlamaForCausalLM(T.LlamaConfig(**SMALL, tie_word_embeddings=tie))


def lora(model, **kw):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], **kw)
    return peft.get_peft_model(model, cfg)


def lm_loss(model, x):
    return model(input_ids=x, labels=x).loss


def data(n):
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 64, (2, 12), generator=g) for _ in range(n)]


@pytest.mark.parametrize("cfg", [T.LlamaConfig, T.MistralConfig, T.Qwen2Config])
def test_detects_decoder_families(cfg):
    m = T.AutoModelForCausalLM.from_config(cfg(**SMALL))
    a = get_adapter(m)
    assert a.name == "llama"
    specs = [s for s in a.enumerate(m) if a.tuned(s)]
    assert sorted({s.unit for s in specs}) == ["model.layers.0", "model.layers.1"]
    assert len(specs) == 14 and not any("lm_head" in s.name or "embed" in s.name for s in specs)
    assert [s.name for s in a.enumerate(m) if not a.tuned(s)] == ["lm_head"]  # reported, factor 1


def test_lora_effective_weight_with_rslora_and_compat():
    m = lora(tiny_llama(), use_rslora=True)
    q = m.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    with torch.no_grad():
        q.lora_B["default"].weight.normal_()  # PEFT starts B at zero
    W, A, B = q.base_layer.weight, q.lora_A["default"].weight, q.lora_B["default"].weight
    spec = {s.name: s for s in get_adapter(m).enumerate(m)}["base_model.model.model.layers.0.self_attn.q_proj"]
    assert spec.kind == "lora"
    torch.testing.assert_close(spec.weight(), W + 8 / math.sqrt(4) * B @ A)  # rsLoRA: alpha / sqrt(r)
    tb = TempBalance(m, torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3), compat=True, **KW)
    compat_w = {s.name: s for s in tb._specs}["base_model.model.model.layers.0.self_attn.q_proj"].weight()
    torch.testing.assert_close(compat_w, W + B @ A)  # the reference code leaves the scaling out


def test_block_lr_drives_the_trainable_lora_factors():
    m = lora(tiny_llama())
    trainable = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    tb = TempBalance(m, opt, **KW)
    assert tb.units == ["base_model.model.model.layers.0", "base_model.model.model.layers.1"]
    names = {id(p): n for n, p in m.named_parameters()}
    for g, u in zip(opt.param_groups, tb.group_units):
        for p in g["params"]:
            assert "lora_" in names[id(p)] and names[id(p)].startswith(u + ".")
            assert g["lr"] == 1e-3 * tb.factors[u]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable) == 12


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_lora_training_under_every_schedule(schedule):
    m = lora(tiny_llama(), use_rslora=True)
    tb = run_checked(m, lm_loss, data(4), schedule, **KW)
    assert len(tb.units) == 2
    assert_sigmoid_factors(tb)


def test_full_finetuning_without_peft_and_tied_embeddings_once():
    m = tiny_llama(tie=True)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    tb = run_checked(m, lm_loss, data(3), "hf_cosine", include_embeddings=True, **KW)
    assert tb.units == ["model.embed_tokens", "model.layers.0", "model.layers.1"]
    assert "lm_head" not in tb.alphas and len(tb.alphas) == 15
    assert_sigmoid_factors(tb)
    head_group = [u for g, u in zip(tb.optimizer.param_groups, tb.group_units)
                  if any(p is m.lm_head.weight for p in g["params"])]
    assert head_group == ["model.embed_tokens"]  # the tied head follows its embedding's unit


def test_dora_is_refused_naming_the_layer():
    m = lora(tiny_llama(), use_dora=True)
    with pytest.raises(NotImplementedError, match=r"layers\.0\.self_attn\.q_proj.*DoRA"):
        TempBalance(m, torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3), **KW)
