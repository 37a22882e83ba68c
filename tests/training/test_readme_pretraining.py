"""The README's pretraining block (Muon + AdamW, ``preset="llr-muon-1b-20b"``), run as written on a tiny float64
LLaMA: every parameter's lr at every update equals the LLR reference trainer's (tests/reference_oracles/llr.py)
for the same run - one refresh at update 1, its 50-update transition cut by the LLR window (20 updates x 0.2)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from compat_cases import RTOL
from reference_oracles import llr as ref
from test_llr import batches, reference_optimizers, tiny_llama, worst

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block() -> str:
    text = README.read_text()
    found = re.search(r"<!-- pretraining-muon-example -->\n```python\n(.*?)```\n<!-- /pretraining-muon-example -->",
                      text, re.S)
    assert found, "the README lost its pretraining example"
    return found.group(1)


def test_the_readme_pretraining_block_runs_llr_with_muon_as_the_reference(monkeypatch):
    pytest.importorskip("transformers")
    import test_llr

    monkeypatch.setattr(test_llr, "LR", 5e-4)  # the block's AdamW lr, for the oracle's optimizers
    args = ref.Args(lr_min_ratio=1.0, lr_max_ratio=5.0, unbalancedlr_every=100, linear_steps=50,
                    optimizer_name="muon", learning_rate=5e-4, muon_lr=2e-2, stop_at=20, LLR_ratio=0.2, t_warmup=3,
                    alpha_f=0.1)
    model = tiny_llama()
    want = ref.train(tiny_llama(), batches(20), test_llr.loss_fn, args, make_optimizers=reference_optimizers)
    f = ref.schedule(args)
    names = {id(p): n for n, p in model.named_parameters()}
    seen: list[dict[str, float]] = []

    def record(optimizer, *_):
        seen.append({names[id(p)]: float(g["lr"]) for g in optimizer.param_groups for p in g["params"]})

    handle = register_optimizer_step_pre_hook(record)
    scope = dict(model=model, loader=[dict(input_ids=ids, labels=ids) for ids in batches(20)], total_steps=20,
                 warmup_cosine=lambda k: f(k + 1))  # the reference steps its schedule before the update
    try:
        exec(compile(readme_block(), str(README), "exec"), scope)
    finally:
        handle.remove()
    assert len(seen) == 40  # Muon, then AdamW, at each of the 20 updates
    order = [n for n, _ in model.named_parameters()]
    got = [{n: {**seen[2 * t], **seen[2 * t + 1]}[n] for n in order} for t in range(20)]
    assert worst(got, want) <= RTOL
    tb = scope["tb"]
    assert [h["step"] for h in tb.history] == [0] and tb.state_dict()["policies"][0]["open"] is not None
    # in the transition: the norms' target is the smallest of all - here the head's (AdamW's lr x 5 < Muon's)
    assert got[2]["lm_head.weight"] == got[2]["model.norm.weight"] < got[2]["model.layers.0.mlp.up_proj.weight"]
    # after the window (update 4) the reference's idle scheduler runs on from update 1, every factor 1
    assert got[10]["lm_head.weight"] == got[10]["model.norm.weight"] == pytest.approx(5e-4 * f(11 - 4), rel=1e-12)
