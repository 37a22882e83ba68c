"""HF encoder adapter: blocks are encoder.layer.N / transformer.layer.N; heads and embeddings keep factor 1."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers as T

from schedule_cases import SCHEDULES, assert_sigmoid_factors, run_checked
from tempbalance.training.scheduler import TempBalance
from tempbalance.adapters import get_adapter

KW = dict(min_eigs=8, backend="torch", interval=2)


def tiny_roberta(seed=0):
    torch.manual_seed(seed)
    cfg = T.RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=24, num_labels=2)
    return T.RobertaForSequenceClassification(cfg)


def data(n, vocab=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, vocab, (4, 10), generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(n)]


def cls_loss(model, batch):
    x, y = batch
    return model(input_ids=x, labels=y).loss


def test_detects_roberta_and_distilbert_blocks():
    m = tiny_roberta()
    a = get_adapter(m)
    assert a.name == "hf_encoder"
    specs = a.enumerate(m)
    tuned = [s for s in specs if a.tuned(s)]
    assert sorted({s.unit for s in tuned}) == [f"roberta.encoder.layer.{i}" for i in range(3)]
    assert len(tuned) == 18 and not any("embed" in s.name for s in specs)
    assert [s.name for s in specs if not a.tuned(s)] == ["classifier.dense", "classifier.out_proj"]  # reported only
    d = T.DistilBertForSequenceClassification(T.DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2,
                                                                 hidden_dim=64, max_position_embeddings=24))
    assert get_adapter(d).name == "hf_encoder"
    ad = get_adapter(d)
    assert sorted({s.unit for s in ad.enumerate(d) if ad.tuned(s)}) == [f"distilbert.transformer.layer.{i}"
                                                                       for i in range(2)]


def test_block_unit_drives_every_block_parameter():
    m = tiny_roberta()
    a = get_adapter(m)
    params = a.unit_params(m, a.enumerate(m), "block")
    names = {id(p): n for n, p in m.named_parameters()}
    block0 = {names[id(p)] for p in params["roberta.encoder.layer.0"]}
    assert block0 == {n for n, _ in m.named_parameters() if n.startswith("roberta.encoder.layer.0.")}
    assert any("LayerNorm" in n for n in block0) and any(n.endswith("bias") for n in block0)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_training_under_every_schedule(schedule):
    m = tiny_roberta()
    tb = run_checked(m, cls_loss, data(4), schedule, **KW)
    assert tb.units == [f"roberta.encoder.layer.{i}" for i in range(3)]
    assert_sigmoid_factors(tb)
    heads = {id(p) for n, p in m.named_parameters() if "classifier" in n or "embeddings" in n}
    for g, u in zip(tb.optimizer.param_groups, tb.group_units):
        if {id(p) for p in g["params"]} & heads:
            assert u is None and g["tb_factor"] == 1.0


def test_include_embeddings_tunes_them():
    m = tiny_roberta()
    tb = TempBalance(m, torch.optim.AdamW(m.parameters(), lr=1e-3), include_embeddings=True, **KW)
    assert "roberta.embeddings.word_embeddings" in tb.units


def test_real_minilm_end_to_end(minilm):
    model = copy.deepcopy(minilm).train()  # the session fixture stays pretrained
    tb = run_checked(model, lambda m, x: m(input_ids=x).last_hidden_state.pow(2).mean(),
                     [torch.randint(1000, 5000, (2, 8), generator=torch.Generator().manual_seed(i)) for i in range(3)],
                     "hf_linear", interval=1, backend="torch")
    assert tb.units == [f"encoder.layer.{i}" for i in range(6)]
    assert all(math.isfinite(a) and 1.5 < a < 20 for a in tb.alphas.values())  # pretrained: every layer fitted
    assert len(tb.alphas) == 36 and len(tb.history) == 4
    assert_sigmoid_factors(tb)
    assert len(set(tb.factors.values())) == 6


def tiny_mpnet(seed=0):
    torch.manual_seed(seed)
    cfg = T.MPNetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=24, num_labels=2)
    return T.MPNetForSequenceClassification(cfg)


def test_detects_mpnet_blocks_and_their_six_matrices():
    """MPNet (all-mpnet-base-v2's architecture): blocks mpnet.encoder.layer.N with attention.attn.{q,k,v,o},
    intermediate.dense and output.dense; the relative-position bias, the embeddings and the RoBERTa-style head
    are outside every block and keep factor 1."""
    m = tiny_mpnet()
    a = get_adapter(m)
    assert a.name == "hf_encoder"
    specs = a.enumerate(m)
    tuned = [s for s in specs if a.tuned(s)]
    blocks = [f"mpnet.encoder.layer.{i}" for i in range(3)]
    assert sorted({s.unit for s in tuned}) == blocks
    for b in blocks:
        assert sorted(s.name[len(b) + 1:] for s in tuned if s.unit == b) == sorted(
            ["attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "intermediate.dense",
             "output.dense"])
    assert [s.name for s in specs if not a.tuned(s)] == ["classifier.dense", "classifier.out_proj"]
    params = a.unit_params(m, specs, "block")
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[id(p)] for p in params[blocks[1]]} == {
        n for n, _ in m.named_parameters() if n.startswith(blocks[1] + ".")}
    tb = run_checked(m, cls_loss, data(4), "linear", **KW)
    assert tb.units == blocks
    assert_sigmoid_factors(tb)
    outside = {id(p) for n, p in m.named_parameters() if not n.startswith("mpnet.encoder.layer.")}
    assert "mpnet.encoder.relative_attention_bias.weight" in {n for n, _ in m.named_parameters()}
    for g, u in zip(tb.optimizer.param_groups, tb.group_units):
        if {id(p) for p in g["params"]} & outside:
            assert u is None and g["tb_factor"] == 1.0
