"""HF Trainer: TempBalance as the Trainer's scheduler - factors survive the schedule, gradient accumulation counts
optimizer steps, checkpoints resume TempBalance's state."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import transformers as T

from tempbalance.integrations.hf_trainer import TempBalanceCallback, tempbalance_optimizers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
STEPS, LR, WARMUP = 4, 1e-3, 1


class Data(torch.utils.data.Dataset):
    def __init__(self, n=16, vocab=64, length=10):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(3, vocab, (n, length), generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


def tiny_bert():
    torch.manual_seed(0)
    return T.BertForSequenceClassification(T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=64,
                                                        max_position_embeddings=16, num_labels=2))


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                max_steps=STEPS, learning_rate=LR, warmup_steps=WARMUP, lr_scheduler_type="linear", weight_decay=0.01,
                report_to=[], use_cpu=True, logging_steps=1, save_strategy="no", seed=0, dataloader_num_workers=0,
                disable_tqdm=True)
    return T.TrainingArguments(**{**base, **kw})


def linear_lr(t: int) -> float:
    """transformers' linear warmup/decay, independently."""
    return LR * (t / WARMUP if t < WARMUP else max(0.0, (STEPS - t) / (STEPS - WARMUP)))


def test_trainer_with_tempbalance_as_scheduler(tmp_path):
    model = tiny_bert()
    a = args(tmp_path)
    opt, tb = tempbalance_optimizers(model, a, STEPS, interval=1, min_eigs=8, backend="torch")
    calls = []
    orig_step = opt.step

    def counting_step(*x, **k):
        calls.append(1)
        return orig_step(*x, **k)

    opt.step = counting_step
    trainer = T.Trainer(model=model, args=a, train_dataset=Data(), optimizers=(opt, tb),
                        callbacks=[TempBalanceCallback(tb)])
    trainer.train()
    assert len(calls) == STEPS and tb.step_count == STEPS  # gradient accumulation: one tb.step per optimizer step
    assert len(tb.history) == STEPS + 1
    assert tb.units == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    wd = {g["weight_decay"] for g in opt.param_groups}
    assert wd == {0.01, 0.0}  # the Trainer's decay / no-decay groups survive the split
    for g, u in zip(opt.param_groups, tb.group_units):
        assert g["lr"] == pytest.approx(linear_lr(STEPS - 1 + 1) * (tb.factors[u] if u else 1.0), abs=1e-15)
    # the Trainer logs get_last_lr()[0]: at step 2 that is base(1) x the factor from the refresh after step 1
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == STEPS and all("tb/alpha_std" in h for h in logged)
    u0 = tb.group_units[0]
    f0 = tb.history[1]["factors"][u0] if u0 else 1.0
    assert logged[1]["learning_rate"] == pytest.approx(linear_lr(1) * f0, rel=1e-12)


def test_trainer_checkpoint_resumes_tempbalance(tmp_path):
    def run(resume=None, max_steps=STEPS, save=False):
        model = tiny_bert()
        a = args(tmp_path, max_steps=STEPS, save_strategy="steps" if save else "no", save_steps=2)
        opt, tb = tempbalance_optimizers(model, a, STEPS, interval=1, min_eigs=8, backend="torch")
        trainer = T.Trainer(model=model, args=a, train_dataset=Data(), optimizers=(opt, tb))
        trainer.train(resume_from_checkpoint=resume)
        return model, tb

    straight_model, straight = run()
    run(save=True)
    resumed_model, resumed = run(resume=str(tmp_path / "checkpoint-2"))
    assert resumed.step_count == STEPS and len(resumed.history) == len(straight.history)
    assert resumed.get_last_lr() == straight.get_last_lr()
    assert resumed.factors == straight.factors
    for (n, p), q in zip(straight_model.named_parameters(), resumed_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("callback", [False, True])
def test_per_epoch_cadence_refreshes_every_epoch_as_the_readme_shows(tmp_path, callback):
    """The README's Trainer(optimizers=tempbalance_optimizers(...)) with the default per-epoch cadence: without the
    callback nothing calls epoch_end(); the epoch length known from args stands in (one warning)."""
    import warnings

    model = tiny_bert()
    a = args(tmp_path, max_steps=-1, num_train_epochs=2)
    steps = 2 * 4  # 16 examples, batch 2, accumulation 2: 4 optimizer steps an epoch
    opt, tb = tempbalance_optimizers(model, a, steps, min_eigs=8, backend="torch")
    trainer = T.Trainer(model=model, args=a, train_dataset=Data(), optimizers=(opt, tb),
                        callbacks=[TempBalanceCallback(tb)] if callback else [])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        trainer.train()
    assert tb.step_count == steps
    # with the callback, the pass after the last epoch runs when read; without, nothing marks the last epoch's end
    assert [h["step"] for h in tb.history] == ([0, 4, 8] if callback else [0, 4])
    noted = [w for w in rec if "no epoch_end" in str(w.message)]
    assert len(noted) == (0 if callback else 1)


def test_trainer_with_the_glue_preset_is_the_modelbalancing_reference(tmp_path):
    """The Trainer, built by tempbalance_optimizers(preset="modelbalancing-glue"), gives every parameter the
    learning rate of the reference's own Trainer loop (oracle), update by update: 40 examples in batches of 4 (10
    updates, the reference's interval max(1, 10 // 10) = 1), linear warmup over 3, AdamW on HF's groups, clipping."""
    from compat_cases import assert_lrs, recorder, tiny_encoder
    from reference_oracles import modelbalancing as mb

    model = tiny_encoder("bert").train()
    start = copy.deepcopy(model)
    a = args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=-1,
             num_train_epochs=1, warmup_steps=3, weight_decay=0.1, optim="adamw_torch", max_grad_norm=1.0)
    opt, tb = tempbalance_optimizers(model, a, 10, preset="modelbalancing-glue", ratio=0.05, dtype=torch.float64)
    assert (tb.compat, tb.interval, tb.map_options["s_lo"], tb.map_options["s_hi"]) == ("modelbalancing", 1, 2.0, 1.0)
    got = recorder(model, opt)
    batches = []

    def collate(features):
        batch = T.default_data_collator(features)
        batches.append({k: v.clone() for k, v in batch.items()})
        return batch

    trainer = T.Trainer(model=model, args=a, train_dataset=Data(40, vocab=120, length=12), optimizers=(opt, tb),
                        data_collator=collate)
    trainer.train()
    ref_args = mb.Args(tb_unit="block", schedule_func="sigmoid", sigmoid_min=2.0, sigmoid_max=1.0, xmin_pos=1.5,
                       remove_last_layer="True")
    want = mb.train(start, batches, lambda m, b: m(**b).loss, ref_args, lr=LR, weight_decay=0.1,
                    schedule=mb.linear_warmup(3, 10), interval=1)
    assert len(got) == len(want) == 10
    for g, w in zip(got, want):
        assert_lrs(g, w["lrs"])


def _readme_block(containing: str) -> str:
    """The README's python code block that contains ``containing`` (dedented: it may sit in a list item)."""
    import re
    import textwrap
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [textwrap.dedent(b) for _, b in re.findall(r"^( *)```python\n(.*?)^\1```", readme, re.M | re.S)]
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"the README has {len(found)} python blocks with {containing!r}"
    return found[0]


def test_the_readmes_trainer_snippet_gives_tb_and_its_callback(tmp_path):
    """The README's Trainer code, run as written: it names where the callback comes from and gives the user the
    ``tb`` the callback needs; the callback refreshes at the Trainer's epoch ends (no stand-in, no warning)."""
    import warnings

    a = args(tmp_path, max_steps=-1, num_train_epochs=2)
    scope = {"model": tiny_bert(), "args": a, "num_training_steps": 8, "train_dataset": Data()}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        exec(compile(_readme_block("TempBalanceCallback(tb)"), "README.md", "exec"), scope)
    tb = scope["tb"]
    assert any(isinstance(c, TempBalanceCallback) and c.tb is tb for c in scope["trainer"].callback_handler.callbacks)
    assert scope["trainer"].lr_scheduler is tb and tb.step_count == 8
    assert [h["step"] for h in tb.history] == [0, 4, 8]  # 4 optimizer steps an epoch; the last pass when read
    assert not [w for w in rec if "no epoch_end" in str(w.message)]
