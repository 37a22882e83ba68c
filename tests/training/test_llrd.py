"""Layer-wise lr decay (tempbalance.training.llrd) against lrs written out by hand: a small model with embeddings, a shared
position table registered after the blocks, a pooler and a head; a tiny random MPNet and BERT (real HF encoder
classes); the real MiniLM when its package is installed. Plus the blocks being TempBalance's units, and bad
input."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tempbalance
from tempbalance import TempBalance, layer_decay_groups, layer_decay_profile
from tempbalance.training.llrd import layer_decay_scales, layer_depths


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.dense = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)


class Embeddings(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.word = nn.Embedding(10, d)
        self.norm = nn.LayerNorm(d)


class Encoder(nn.Module):
    def __init__(self, d, n):
        super().__init__()
        self.layer = nn.ModuleList(Block(d) for _ in range(n))
        self.rel_bias = nn.Embedding(4, 2)  # after the blocks, read by every block: input side


class Toy(nn.Module):
    """Hand-made BERT-like layout: ``emb``, ``encoder.layer.{0,1,2}``, ``encoder.rel_bias``, ``pooler``,
    ``classifier``."""

    def __init__(self, d=8, n=3):
        super().__init__()
        self.emb = Embeddings(d)
        self.encoder = Encoder(d, n)
        self.pooler = nn.Linear(d, d)
        self.classifier = nn.Linear(d, 2)


def _lr_of(groups):
    return {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_toy_model_lrs_by_hand():
    model = Toy()
    lr, decay = 0.1, 0.5
    # L = 3 blocks: block 2 (top) 1x, block 1 0.5x, block 0 0.25x, input side 0.125x, pooler/head 1x
    expected = {"emb.word.weight": 0.0125, "emb.norm.weight": 0.0125, "emb.norm.bias": 0.0125,
                "encoder.rel_bias.weight": 0.0125, "pooler.weight": 0.1, "pooler.bias": 0.1,
                "classifier.weight": 0.1, "classifier.bias": 0.1}
    for i, f in enumerate((0.025, 0.05, 0.1)):
        for leaf in ("dense.weight", "dense.bias", "norm.weight", "norm.bias"):
            expected[f"encoder.layer.{i}.{leaf}"] = f
    groups = layer_decay_groups(model, lr=lr, decay=decay, weight_decay=0.01)
    got = _lr_of(groups)
    named = dict(model.named_parameters())
    assert len(got) == sum(len(g["params"]) for g in groups) == len(named)  # every parameter once
    for name, p in named.items():
        assert got[id(p)][0] == pytest.approx(expected[name]), name
        assert got[id(p)][1] == (0.01 if p.ndim >= 2 else 0.0), name
    assert layer_decay_scales(model, decay) == pytest.approx({k: v / lr for k, v in expected.items()})
    # groups run from the input side up: embeddings, blocks 0..2, head
    assert [g["lr"] for g in groups] == pytest.approx([0.0125] * 2 + [0.025] * 2 + [0.05] * 2 + [0.1] * 2 + [0.1] * 2)


def test_profile_and_depths():
    model = Toy(n=4)
    prof = layer_decay_profile(model, 0.8)
    assert prof == pytest.approx({"encoder.layer.0": 0.8 ** 3, "encoder.layer.1": 0.8 ** 2, "encoder.layer.2": 0.8,
                                  "encoder.layer.3": 1.0, "embeddings": 0.8 ** 4, "head": 1.0})
    depth = layer_depths(model)
    assert depth["encoder.rel_bias.weight"] == depth["emb.word.weight"] == "embeddings"
    assert depth["pooler.weight"] == depth["classifier.bias"] == "head"
    assert depth["encoder.layer.3.norm.bias"] == "encoder.layer.3"


def test_decay_one_is_plain_fine_tuning_and_frozen_left_out():
    model = Toy()
    model.emb.word.weight.requires_grad_(False)
    groups = layer_decay_groups(model, lr=3e-4, decay=1.0)
    assert all(g["lr"] == 3e-4 and g["weight_decay"] == 0.0 for g in groups)
    ids = {id(p) for g in groups for p in g["params"]}
    assert id(model.emb.word.weight) not in ids and len(ids) == len(list(model.parameters())) - 1


def test_optimizer_step_applies_the_profile():
    """SGD from the groups moves each parameter by its own lr times its gradient."""
    torch.manual_seed(0)
    model = Toy()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(layer_decay_groups(model, lr=0.1, decay=0.5))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    scales = layer_decay_scales(model, 0.5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(before[n] - p.detach(), torch.full_like(p, 0.1 * scales[n]))


def _tiny_hf(kind: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "mpnet":
        cfg = transformers.MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=40)
        return transformers.MPNetForSequenceClassification(cfg)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=40)
    return transformers.BertForSequenceClassification(cfg)


def _expected_hf(name: str, blocks: int, prefix: str, decay: float) -> float:
    """The LLRD rule written for HF names: ``<prefix>.encoder.layer.<l>.`` -> decay^(L-1-l); embeddings and MPNet's
    shared relative-position table -> decay^L; pooler and classifier -> 1."""
    if name.startswith(f"{prefix}.encoder.layer."):
        return decay ** (blocks - 1 - int(name.split(".")[3]))
    if name.startswith(f"{prefix}.embeddings.") or name == f"{prefix}.encoder.relative_attention_bias.weight":
        return decay ** blocks
    assert name.startswith((f"{prefix}.pooler.", "classifier.")), name
    return 1.0


@pytest.mark.parametrize("kind,prefix,blocks", [("mpnet", "mpnet", 4), ("bert", "bert", 3)])
def test_hf_encoders_by_name(kind, prefix, blocks):
    model = _tiny_hf(kind)
    scales = layer_decay_scales(model, 0.85)
    assert set(scales) == {n for n, _ in model.named_parameters()}
    for name, s in scales.items():
        assert s == pytest.approx(_expected_hf(name, blocks, prefix, 0.85)), name


def test_blocks_are_tempbalance_units():
    model = _tiny_hf("bert")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TempBalance(model, opt, min_eigs=4)
    try:
        units = set(tb.factors)
    finally:
        tb.close()
    assert units == set(layer_decay_profile(model, 0.9)) - {"embeddings", "head"}


def test_real_minilm(minilm_dir):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=2,
                                                                            local_files_only=True)
    got = _lr_of(layer_decay_groups(model, lr=1e-4, decay=0.85, weight_decay=0.1))
    for name, p in model.named_parameters():
        assert got[id(p)][0] == pytest.approx(1e-4 * _expected_hf(name, 6, "bert", 0.85)), name
    assert min(v[0] for v in got.values()) == pytest.approx(1e-4 * 0.85 ** 6)


@pytest.mark.parametrize("decay", [0, -0.5, 1.5, math.nan, True, "0.8"])
def test_bad_decay(decay):
    with pytest.raises(ValueError, match="decay"):
        layer_decay_groups(Toy(), lr=0.1, decay=decay)


@pytest.mark.parametrize("kw", [dict(lr=0), dict(lr=math.inf), dict(lr=0.1, weight_decay=-1)])
def test_bad_lr_or_weight_decay(kw):
    with pytest.raises(ValueError, match="lr" if "weight_decay" not in kw else "weight_decay"):
        layer_decay_groups(Toy(), decay=0.9, **{"lr": 0.1, **kw})


def test_model_without_blocks_is_refused():
    with pytest.raises(ValueError, match="adapter finds none in Sequential"):
        layer_decay_groups(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), lr=0.1, decay=0.9)


def test_exported():
    assert tempbalance.layer_decay_groups is layer_decay_groups and "layer_decay_profile" in tempbalance.__all__
