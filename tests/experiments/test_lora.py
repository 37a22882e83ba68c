"""experiments/lora: answer scoring against hand-computed log-likelihoods, prompt masking, and the smoke run."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("peft")
pytest.importorskip("transformers")

_DIR = Path(__file__).resolve().parents[2] / "experiments" / "lora"
_PKG = "_tb_experiment_lora"  # a private package name: other experiments also have data.py / run.py


def _load(name: str):
    if _PKG not in sys.modules:
        spec = importlib.util.spec_from_file_location(_PKG, _DIR / "__init__.py", submodule_search_locations=[str(_DIR)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[_PKG] = pkg
        spec.loader.exec_module(pkg)
    return importlib.import_module(f"{_PKG}.{name}")


D, T, R = _load("data"), _load("train"), _load("report")
TOK = T.ByteTokenizer()


class Bigram(nn.Module):
    """logits[t] = table[token t]: log p(next | prefix) depends on the previous token only, so every
    log-likelihood is a sum of table look-ups computable by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def _hand_logprob(table: np.ndarray, prompt: str, cont: str) -> float:
    ids = list((prompt + cont).encode())
    start = len(prompt.encode())
    total = 0.0
    for j in range(start, len(ids)):
        row = table[ids[j - 1]]
        total += row[ids[j]] - (row.max() + math.log(np.exp(row - row.max()).sum()))
    return total


def test_uniform_model_closed_form():
    # all logits equal: every token has probability 1/257, so a 3-byte continuation scores -3 ln 257
    model = Bigram(torch.zeros(257, 257))
    [(s, n)] = D.continuation_logprobs(model, TOK, [("Question: x?\nAnswer:", " ab")], max_len=64)
    assert n == 3
    assert s == pytest.approx(-3 * math.log(257), rel=1e-6)


def test_scores_match_hand_computation_across_padded_batches():
    table = torch.randn(257, 257, generator=torch.Generator().manual_seed(0)) * 3
    model = Bigram(table)
    pairs = [("Q: short?\nA:", " yes"), ("Question: a much longer prompt here?\nAnswer:", " a longer answer"),
             ("Q?", " x"), ("Question: mid?\nAnswer:", " maybe so")]
    got = D.continuation_logprobs(model, TOK, pairs, max_len=128, batch_size=3)  # sorted + right-padded batches
    ref = table.double().numpy()
    for (p, c), (s, n) in zip(pairs, got):
        assert n == len(c.encode())
        assert s == pytest.approx(_hand_logprob(ref, p, c), rel=1e-5, abs=1e-4)


def test_rank_choices_each_normalisation_by_hand():
    scores = [(-6.0, 3), (-4.0, 1), (-5.0, 2)]
    conts = [" abcde", " a", " abcdefghi"]  # 6, 2, 10 characters
    assert D.rank_choices(scores, conts, "per_char") == 2   # -1.0, -2.0, -0.5
    assert D.rank_choices(scores, conts, "per_token") == 0  # -2.0, -4.0, -2.5
    assert D.rank_choices(scores, conts, "raw") == 1        # -6, -4, -5
    with pytest.raises(ValueError, match="norm"):
        D.rank_choices(scores, conts, "per_word")


def test_shared_prompt_scoring_equals_full_sequence_scoring():
    # question_logprobs runs the prompt once and repeats its KV cache for the choices; the numbers must be those of
    # scoring every prompt + choice as its own sequence (checked by hand above)
    model, tok = T.tiny_llama(seed=0)
    qs = [D.Question("q1", "Question: which gas do plants take in?\nAnswer:", ("oxygen", "carbon dioxide", "a"), 1),
          D.Question("q2", "Q: two?\nA:", ("yes it is", "no"), 0)]
    shared = D.question_logprobs(model, tok, qs, max_len=96)
    # batches of questions with left-padded prompts of different lengths give the same numbers
    single = D.question_logprobs(model, tok, qs, max_len=96, batch_questions=1)
    np.testing.assert_allclose([s for x in single for s, _ in x], [s for x in shared for s, _ in x], atol=2e-4)
    full = D.continuation_logprobs(model, tok, [(q.query, q.continuation(k)) for q in qs for k in range(len(q.choices))],
                                   max_len=96, batch_size=2)
    flat = [x for per_q in shared for x in per_q]
    assert [n for _, n in flat] == [n for _, n in full]
    np.testing.assert_allclose([s for s, _ in flat], [s for s, _ in full], rtol=1e-4, atol=2e-4)
    ok = D.correctness(model, tok, qs, max_len=96)
    for norm in D.NORMS:
        expect = [D.rank_choices(full[0:3], [q.continuation(k) for k in range(3)], norm) == 1 for q in qs[:1]]
        expect += [D.rank_choices(full[3:5], [qs[1].continuation(k) for k in range(2)], norm) == 0]
        assert ok[norm] == expect
    assert D.accuracy(model, tok, qs, max_len=96)["raw"] == pytest.approx(50.0 * sum(ok["raw"]))


def test_tiny_llama_batched_scores_equal_single_sequence_scores():
    model, tok = T.tiny_llama(seed=0)
    pairs = [("Question: which?\nAnswer:", " the first one"), ("Q?", " no"), ("Question: why so?\nAnswer:", " because")]
    batched = D.continuation_logprobs(model, tok, pairs, max_len=64, batch_size=8)
    for pair, (s, n) in zip(pairs, batched):
        ids, n_prompt = D.encode_pair(tok, *pair, max_len=64)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        ref = sum(float(lp[j - 1, ids[j]]) for j in range(n_prompt, len(ids)))
        assert n == len(ids) - n_prompt
        assert s == pytest.approx(ref, abs=2e-4)


def test_prompt_tokens_are_masked():
    q = D.Question("q", "Question: What melts ice?\nAnswer:", ("heat", "cold"), 0)
    ids, labels = D.train_features(TOK, q, max_len=128)
    n_prompt = len(q.query.encode())
    assert ids == list((q.query + " heat").encode())
    assert labels[:n_prompt] == [D.IGNORE] * n_prompt
    assert labels[n_prompt:] == list(b" heat")


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_answer():
    q = D.Question("q", "Question: " + "long " * 30 + "?\nAnswer:", ("a full answer",), 0)
    ids, labels = D.train_features(TOK, q, max_len=40)
    assert len(ids) == 40
    assert bytes(ids).endswith(b"?\nAnswer: a full answer")
    assert [x for x in labels if x != D.IGNORE] == list(b" a full answer")


def test_loss_is_the_mean_cross_entropy_over_answer_tokens_only():
    table = torch.randn(257, 257, generator=torch.Generator().manual_seed(1))
    qs = [D.Question("a", "Q: one?\nA:", ("yes",), 0), D.Question("b", "Question: two two?\nAnswer:", ("a no",), 0)]
    batch = D.pad_batch([D.train_features(TOK, q, 64) for q in qs], TOK.pad_token_id)
    assert (batch["labels"][batch["attention_mask"] == 0] == D.IGNORE).all()
    loss = D.lm_loss(Bigram(table)(batch["input_ids"]).logits, batch["labels"])
    ref = table.double().numpy()
    nll = [-_hand_logprob(ref, q.query, q.continuation(0)) for q in qs]
    n_tok = sum(len(q.continuation(0).encode()) for q in qs)
    assert loss.item() == pytest.approx(sum(nll) / n_tok, rel=1e-5)


def test_reset_lora_restores_the_seeded_init():
    model, _ = T.tiny_llama(seed=0, layers=1)
    model = T.add_lora(model)
    T.reset_lora(model, 5)
    first = T.lora_state(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    T.reset_lora(model, 5)
    again = T.lora_state(model)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert all(float(v.abs().sum()) == 0.0 for k, v in again.items() if "lora_B" in k)  # B = 0: starts as the base


def test_mcnemar_and_paired_tests_by_hand():
    lora = [[True, False, False, False, False, False]]
    tb = [[True, True, True, True, True, True]]
    mc = R.mcnemar(lora, tb)
    assert (mc["only_tb"], mc["only_lora"]) == (5, 0)
    assert mc["p"] == pytest.approx(2 * 0.5 ** 5)  # exact two-sided binomial
    pt = R.paired_tests([50.0, 52.0, 51.0], [51.0, 52.0, 53.0])
    assert pt["mean_diff"] == pytest.approx(1.0)
    assert (pt["wins"], pt["ties"], pt["losses"]) == (2, 1, 0)
    d = np.array([1.0, 0.0, 2.0])  # paired t: mean / (sd / sqrt(n)) with 2 degrees of freedom
    from scipy import stats
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert pt["t_test_p"] == pytest.approx(2 * stats.t.sf(t, 2))


def test_smoke_run_writes_every_output(tmp_path):
    run = _load("run")
    payload = run.main(["--smoke", "--out", str(tmp_path), "--threads", "1"])
    for f in ("results.json", "runs.csv", "summary.csv", "summary.md", "accuracy_vs_n.png", "alpha_std.png",
              "tb_factors.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = saved["runs"]
    assert sorted({(r["n_train"], r["arm"], r["seed"]) for r in runs}) == sorted(
        (n, arm, s) for n in (8, 16) for arm in ("lora", "lora+tb") for s in (0, 1))
    for r in runs:
        assert len(r["correct"]) == 12 and set(r["correct"]) <= {"0", "1"}
        assert r["alpha_track"][0]["step"] == 0 and r["alpha_track"][0]["n_units"] == 2
    tb_runs = [r for r in runs if r["arm"] == "lora+tb"]
    for r in tb_runs:
        assert len(r["tb_history"]) == 1 + r["steps"] // saved["config"]["tb_interval"]  # initial + every k steps
        assert all(h["alpha_std"] is not None and math.isfinite(h["alpha_std"]) for h in r["tb_history"])
        assert any(abs(f - 1.0) > 1e-6 for f in r["tb_factors"].values())
    assert all(not r["tb_history"] for r in runs if r["arm"] == "lora")
    table = (tmp_path / "summary.md").read_text()
    assert "| 8 |" in table and "| 16 |" in table and "zero-shot" in table
    assert payload["chosen_lr"][8]["lora"] == 1e-3
