"""One fine-tuning run on a tiny random BERT: accuracy bookkeeping, the paired design, TempBalance wiring, and
the block-wise STD of alpha against an independent numpy computation; one real-MiniLM smoke of a few steps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tempbalance.demo.finetune import (PAPER_TB, Encoded, RunConfig, TBSettings, accuracy, batch_size_for,
                                       block_alphas, block_name_index, finetune, param_groups, scores)


def _manual_accuracy(model, enc: Encoded) -> float:
    """One sentence at a time, full padding, no sorting: the plain definition."""
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(len(enc)):
            logits = model(input_ids=enc.input_ids[i:i + 1], attention_mask=enc.attention_mask[i:i + 1]).logits
            hits += int(logits.argmax(-1).item() == enc.labels[i].item())
    return hits / len(enc)


def test_accuracy_matches_plain_count(tiny_encoder, toy):
    model = tiny_encoder.fresh_model(3)
    enc = tiny_encoder.encode(toy(37, seed=5))
    assert accuracy(model, enc, batch_size=8) == pytest.approx(_manual_accuracy(model, enc), abs=1e-12)


def test_batch_cuts_shared_padding_only(tiny_encoder, toy):
    enc = tiny_encoder.encode(toy(6, seed=1))
    idx = torch.tensor([4, 0, 2])
    b = enc.batch(idx)
    assert b["input_ids"].shape[1] == int(enc.attention_mask[idx].sum(1).max()) < enc.input_ids.shape[1]
    model = tiny_encoder.fresh_model(0).eval()
    with torch.no_grad():
        short = model(**b).logits
        full = model(input_ids=enc.input_ids[idx], attention_mask=enc.attention_mask[idx]).logits
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)


def test_fresh_model_head_from_seed_and_pretrained_kept(tiny_encoder):
    a, b, c = tiny_encoder.fresh_model(1), tiny_encoder.fresh_model(1), tiny_encoder.fresh_model(2)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert float(a.classifier.weight.detach().std()) == pytest.approx(0.02, rel=0.3) and not a.classifier.bias.any()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(a.state_dict()[key], tiny_encoder.model.state_dict()[key], rtol=0, atol=0)


def test_finetune_learns_and_books_results(tiny_encoder, toy):
    train, held = toy(48, seed=0), toy(64, seed=1)
    steps = []
    before = accuracy(tiny_encoder.fresh_model(0), tiny_encoder.encode(held))
    res, model = finetune(tiny_encoder, train, RunConfig(lr=3e-3, epochs=6, seed=0), {"held": held},
                          progress=steps.append, return_model=True)
    assert res.arm == "FT" and res.size == 48 and res.batch_size == batch_size_for(48) == 4
    assert res.steps == math.ceil(48 / 4) * 6 == len(steps) and res.tb_history == []
    assert res.eval["held"] == pytest.approx(_manual_accuracy(model, tiny_encoder.encode(held)), abs=1e-12)
    assert res.eval["held"] >= 0.8 > before  # the sentiment word decides the label: learnable in a few steps
    assert math.isfinite(res.final_loss) and res.train_seconds > 0
    # the encoder's pristine weights are untouched by the run
    key = "bert.encoder.layer.1.output.dense.weight"
    assert not torch.equal(model.state_dict()[key], tiny_encoder.model.state_dict()[key])
    assert torch.equal(tiny_encoder.fresh_model(0).state_dict()[key], tiny_encoder.model.state_dict()[key])


def test_tempbalance_arm_is_paired_and_records_history(tiny_encoder, toy):
    train = toy(16, seed=2)
    ft = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=3, seed=7), {"t": train})
    tb = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=3, seed=7, tempbalance=True), {"t": train})
    again = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=3, seed=7), {"t": train})
    assert ft.final_loss == again.final_loss and ft.eval == again.eval  # a seed fixes head, order, dropout
    assert tb.arm == "TB" and len(tb.tb_history) == 1 + 3  # before training + after every epoch
    assert [h["epoch"] for h in tb.tb_history] == [0, 1, 2, 3]
    units = set(tb.tb_history[-1]["factors"])
    assert units == {"bert.encoder.layer.0", "bert.encoder.layer.1"}
    assert any(abs(f - 1) > 1e-6 for f in tb.tb_history[-1]["factors"].values())
    assert tb.spectral_seconds > 0 and ft.spectral_seconds == 0
    assert set(tb.to_dict()) == set(ft.to_dict()) and "report" not in tb.to_dict()


def _hill(eigs: np.ndarray) -> float:
    lam = np.sort(eigs)
    i = len(lam) // 2  # SPEC: xmin index floor(N / 2), n = N - i
    return 1 + (len(lam) - i) / np.sum(np.log(lam[i:] / lam[i]))


def test_block_alphas_against_numpy(tiny_encoder):
    model = tiny_encoder.fresh_model(0)
    _, means, block_std, layer_std = block_alphas(model)
    expect: dict[str, list[float]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".encoder.layer." in name:
            w = mod.weight.detach().double().numpy()
            small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            expect.setdefault(name.split(".attention")[0].split(".intermediate")[0].split(".output")[0], []).append(
                _hill(np.linalg.eigvalsh(small)))
    assert sorted(means, key=block_name_index) == sorted(expect, key=block_name_index)
    for unit, vals in expect.items():
        assert means[unit] == pytest.approx(np.mean(vals), rel=1e-4)
    assert block_std == pytest.approx(np.std([np.mean(v) for v in expect.values()]), rel=1e-3, abs=1e-6)
    assert layer_std == pytest.approx(np.std([a for v in expect.values() for a in v]), rel=1e-3, abs=1e-6)


def _confusion_scores(pred, labels):
    """Accuracy, macro-F1 and balanced accuracy from the 2x2 confusion matrix, written out by hand."""
    m = np.zeros((2, 2))
    for p, y in zip(pred, labels):
        m[y, p] += 1
    prec = [m[c, c] / m[:, c].sum() if m[:, c].sum() else 0.0 for c in (0, 1)]
    rec = [m[c, c] / m[c, :].sum() for c in (0, 1)]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(prec, rec)]
    return np.trace(m) / m.sum(), np.mean(f1), np.mean(rec)


@pytest.mark.parametrize("seed", range(5))
def test_scores_against_the_confusion_matrix(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(57) < 0.6).astype(int)
    pred = np.where(rng.random(57) < 0.7, labels, 1 - labels)
    got = scores(torch.as_tensor(pred), torch.as_tensor(labels))
    assert (got["acc"], got["macro_f1"], got["balanced_acc"]) == pytest.approx(_confusion_scores(pred, labels))


def test_scores_do_not_reward_a_constant_classifier():
    labels = np.array([1] * 58 + [0] * 42)
    const = scores(np.ones(100, dtype=int), labels)
    assert const["acc"] == pytest.approx(0.58) and const["balanced_acc"] == 0.5
    assert const["macro_f1"] == pytest.approx(0.5 * 2 * 58 / (2 * 58 + 42))  # F1 of class 1; class 0 scores 0
    with pytest.raises(ValueError, match="predictions for"):
        scores(np.ones(3), labels)


def test_finetune_records_scores_clips_gradients_and_runs_bf16(tiny_encoder, toy, monkeypatch):
    train = toy(12, seed=4)
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, max_norm, **k: norms.append(max_norm) or clip(
        p, max_norm, **k))
    res = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=2, seed=0), {"t": train})
    assert norms == [1.0] * res.steps
    assert set(res.scores["t"]) == {"acc", "macro_f1", "balanced_acc"} and res.eval["t"] == res.scores["t"]["acc"]
    assert res.seconds >= res.train_seconds > 0 and res.cpu_seconds > 0
    norms.clear()
    bf = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=2, seed=0, max_grad_norm=None, precision="bf16"),
                  {"t": train})
    assert norms == [] and math.isfinite(bf.final_loss) and 0 <= bf.eval["t"] <= 1


def test_tb_settings_cadence_and_paper_preset(tiny_encoder, toy):
    assert (PAPER_TB.s_lo, PAPER_TB.s_hi, PAPER_TB.xmin_pos, PAPER_TB.tau) == (1.25, 1.25, 1.5, 10.0)
    assert TBSettings().kwargs()["interval"] is None and TBSettings(cadence="adaptive").kwargs()["interval"] == "adaptive"
    with pytest.raises(ValueError, match="cadence"):
        TBSettings(cadence="sometimes")
    train = toy(16, seed=2)  # 4 steps an epoch: Adaptive (first refresh after 10 steps) refreshes once in 3 epochs
    tb = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=3, seed=7, tempbalance=True,
                                                 tb=TBSettings(cadence="adaptive")))
    assert [h["step"] for h in tb.tb_history] == [0, 10]


def test_block_lr_scale_drives_the_parameters_tempbalance_drives(tiny_encoder):
    """The fixed profile (the shuffle control) scales exactly the parameters TempBalance's block units own."""
    from tempbalance import TempBalance

    model = tiny_encoder.fresh_model(0)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {"bert.encoder.layer.0": 0.5, "bert.encoder.layer.1": 2.0}
    groups = param_groups(model, 1e-3, 0.1, scale)
    got = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(got) == len(names)  # every parameter once
    opt = torch.optim.AdamW(param_groups(model, 1e-3, 0.1), lr=1e-3)
    tb = TempBalance(model, opt, unit="block")
    tb.close()
    for g, unit in zip(opt.param_groups, tb.group_units):
        for p in g["params"]:
            name = names[id(p)]
            assert got[name] == pytest.approx((1e-3 * scale.get(unit, 1.0), 0.1 if p.ndim >= 2 else 0.0)), name
    plain = param_groups(model, 1e-3, 0.1)  # no profile: matrices with decay, then vectors without, model order
    assert [[names[id(p)] for p in g["params"]] for g in plain] == [
        [n for n, p in model.named_parameters() if p.ndim >= 2], [n for n, p in model.named_parameters() if p.ndim < 2]]
    with pytest.raises(ValueError, match="bert.encoder.layer.7"):
        param_groups(model, 1e-3, 0.1, {"bert.encoder.layer.7": 2.0})


def test_block_lr_scale_changes_the_run_only_through_the_lr(tiny_encoder, toy):
    train = toy(16, seed=2)
    ft = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=2, seed=7), {"t": train})
    ones = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=2, seed=7, block_lr_scale={
        "bert.encoder.layer.0": 1.0, "bert.encoder.layer.1": 1.0}), {"t": train})
    other = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=2, seed=7, block_lr_scale={
        "bert.encoder.layer.1": 3.0}), {"t": train})
    assert ones.final_loss == pytest.approx(ft.final_loss, rel=1e-5) and other.final_loss != ft.final_loss


def test_layer_decay_trains_with_the_llrd_lrs(tiny_encoder, toy, monkeypatch):
    """``layer_decay`` gives the optimizer tempbalance.training.llrd.s lrs (block l of L: decay^(L-1-l), embeddings
    decay^L, head 1x; matrices with weight decay) and changes the run only through them (decay 1 = FT)."""
    from tempbalance.training.llrd import layer_decay_scales

    seen = []
    real = finetune.__globals__["adamw"]  # the module finetune runs in (other tests may reload the package)
    monkeypatch.setitem(finetune.__globals__, "adamw", lambda groups, lr: seen.append(groups) or real(groups, lr))
    train = toy(16, seed=2)
    ft = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=2, seed=7), {"t": train})
    one = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=2, seed=7, layer_decay=1.0), {"t": train})
    half = finetune(tiny_encoder, train, RunConfig(lr=1e-3, epochs=2, seed=7, layer_decay=0.5), {"t": train})
    assert one.final_loss == pytest.approx(ft.final_loss, rel=1e-5) and half.final_loss != ft.final_loss
    model = tiny_encoder.fresh_model(0)
    scales = layer_decay_scales(model, 0.5)
    assert scales["bert.embeddings.word_embeddings.weight"] == 0.25 and scales["classifier.weight"] == 1.0
    assert scales["bert.encoder.layer.0.output.dense.bias"] == 0.5
    by_shape = sorted((g["initial_lr"], g["weight_decay"], tuple(p.shape)) for g in seen[2] for p in g["params"])
    want = sorted((1e-3 * scales[n], 0.1 if p.ndim >= 2 else 0.0, tuple(p.shape)) for n, p in model.named_parameters())
    assert by_shape == want


def test_run_config_rejects_bad_values():
    with pytest.raises(ValueError, match="max_grad_norm"):
        RunConfig(lr=1e-4, max_grad_norm=0)
    with pytest.raises(ValueError, match="precision"):
        RunConfig(lr=1e-4, precision="fp16")
    with pytest.raises(ValueError, match="lr"):
        RunConfig(lr=0)
    with pytest.raises(ValueError, match="epochs"):
        RunConfig(lr=1e-4, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        RunConfig(lr=1e-4, batch_size=0)
    with pytest.raises(ValueError, match=r"block_lr_scale\['b.0'\]"):
        RunConfig(lr=1e-4, block_lr_scale={"b.0": 0.0})
    with pytest.raises(ValueError, match="tempbalance"):
        RunConfig(lr=1e-4, tempbalance=True, block_lr_scale={"b.0": 2.0})
    with pytest.raises(ValueError, match="layer_decay"):
        RunConfig(lr=1e-4, layer_decay=1.2)
    with pytest.raises(ValueError, match="layer_decay"):
        RunConfig(lr=1e-4, tempbalance=True, layer_decay=0.8)


def test_real_minilm_few_steps(minilm_dir, data_packages):
    """The shipped MiniLM-L6: two TempBalance steps on 8 RT sentences, then 16 test sentences."""
    from tempbalance.demo.finetune import Encoder

    torch.set_num_threads(1)
    enc = Encoder(minilm_dir)
    train = data_packages.subsample(data_packages.load_pool(), 8, seed=0)
    test = data_packages.load_test_set().take(np.arange(16))
    res = finetune(enc, train, RunConfig(lr=1e-4, epochs=1, seed=0, tempbalance=True), {"test": test})
    assert res.steps == 2 and 0.0 <= res.eval["test"] <= 1.0 and round(16 * res.eval["test"]) == 16 * res.eval["test"]
    assert len(res.block_alpha) == 6 and all(1.0 < a < 10.0 for a in res.block_alpha.values())
    assert 0 < res.block_alpha_std < res.layer_alpha_std
    assert len(res.tb_history) == 2 and len(res.tb_history[0]["factors"]) == 6
