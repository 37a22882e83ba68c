"""experiments/pretrain: the corpus split and batches against the raw file, the schedule against its closed form,
the Muon/AdamW split, the validation loss against a hand computation, the report's statistics against scipy, and
the smoke run on the real corpus with a tiny LLaMA (every output, resume)."""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
pytest.importorskip("transformers")
stats = pytest.importorskip("scipy.stats")
from experiments.pretrain import data as D  # noqa: E402
from experiments.pretrain import report as R  # noqa: E402
from experiments.pretrain import run as pretrain_run  # noqa: E402
from experiments.pretrain import train as T  # noqa: E402


def _corpus_or_skip() -> Path:
    try:
        return D.corpus_path()
    except D.MissingCorpusError as e:
        pytest.skip(str(e))


# --- data ----------------------------------------------------------------------------------------------------------
def test_split_is_by_article_disjoint_and_complete(tmp_path):
    articles = {f"Title {i}": f"Text of article {i} " + "é" * (i % 3) for i in range(400)}
    articles["Empty"] = "  "
    path = tmp_path / "s.json"
    path.write_text(json.dumps({t: {"title": t, "extract": x} for t, x in articles.items()}), encoding="utf-8")
    c = D.load_corpus(10.0, path)
    # the reference: the hash rule written out, the streams built by hand
    held = sorted(t for t in articles if articles[t].strip()
                  and int(hashlib.sha256(t.encode()).hexdigest()[:16], 16) / 2 ** 64 < 0.10)
    kept = sorted(t for t in articles if articles[t].strip() and t not in held)
    assert (c.val_articles, c.train_articles) == (len(held), len(kept)) and len(held) + len(kept) == 400
    assert 20 <= len(held) <= 60  # ~10 % of 400
    assert bytes(c.val.numpy()) == "\n\n".join(articles[t].strip() for t in held).encode()
    assert bytes(c.train.numpy()) == "\n\n".join(articles[t].strip() for t in kept).encode()
    with pytest.raises(ValueError, match="val_percent"):
        D.load_corpus(0.0, path)


def test_windows_are_slices_of_the_stream_and_the_batch_order_follows_the_seed():
    stream = torch.arange(1000, dtype=torch.int64).remainder(256).to(torch.uint8)
    x, y = D.train_batch(stream, 5, 16, torch.Generator().manual_seed(3))
    starts = torch.randint(0, 1000 - 17, (5,), generator=torch.Generator().manual_seed(3)).tolist()
    raw = stream.numpy().astype(np.int64)
    for i, s in enumerate(starts):
        np.testing.assert_array_equal(x[i].numpy(), raw[s:s + 16])
        np.testing.assert_array_equal(y[i].numpy(), raw[s + 1:s + 17])
    again, _ = D.train_batch(stream, 5, 16, torch.Generator().manual_seed(3))
    other, _ = D.train_batch(stream, 5, 16, torch.Generator().manual_seed(4))
    assert torch.equal(x, again) and not torch.equal(x, other)
    vx, vy = D.val_windows(stream, 3, 10)
    np.testing.assert_array_equal(vx.numpy().ravel(), raw[:30])
    np.testing.assert_array_equal(vy.numpy().ravel(), raw[1:31])
    with pytest.raises(ValueError, match="need 1001 bytes"):
        D.val_windows(stream, 100, 10)


def test_real_corpus_facts():
    path = _corpus_or_skip()
    raw = json.loads(path.read_text(encoding="utf-8"))
    c = D.load_corpus(5.0)
    assert c.train_articles + c.val_articles == len(raw) == 10033
    assert 0.04 < c.val_articles / len(raw) < 0.06
    text = bytes(c.val.numpy()).decode("utf-8")  # whole articles: the stream decodes
    assert raw[sorted(t for t in raw if D.in_validation(t, 5.0))[0]]["extract"].strip() in text


# --- schedule and optimizers ---------------------------------------------------------------------------------------
@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_schedule_closed_form_and_what_the_optimizer_sees():
    warm, total, lo = 4, 24, 0.1
    want = [(t + 1) / warm for t in range(warm)]
    want += [lo + (1 - lo) * (1 + math.cos(math.pi * (t - warm) / (total - 1 - warm))) / 2 for t in range(warm, total)]
    got = [T.lr_multiplier(t, warm, total, lo) for t in range(total)]
    np.testing.assert_allclose(got, want, rtol=1e-14)
    assert got[warm] == 1.0 and got[-1] == pytest.approx(lo) and got[(warm + total - 1) // 2] > lo
    cfg = T.TrainConfig(model=pretrain_run.SMOKE_MODEL, optimizer="muon", lr=0.01, warmup=warm, steps=total,
                        min_lr_ratio=lo)
    opts = T.build_optimizers(T.build_model(cfg.model, 0), cfg)
    scheds = T.build_schedulers(opts, cfg)
    seen = []
    for _ in range(total):
        seen.append([g["lr"] for o in opts for g in o.param_groups])
        for s in scheds:
            s.step()
    for t, lrs in enumerate(seen):
        assert lrs == pytest.approx([0.01 * want[t]] * len(lrs), rel=1e-12)


def test_muon_takes_exactly_the_blocks_matrices():
    cfg = T.TrainConfig(model=pretrain_run.SMOKE_MODEL, optimizer="muon")
    model = T.build_model(cfg.model, 0)
    muon, adamw = T.build_optimizers(model, cfg)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    want = sorted(f"model.layers.{i}.{m}.{w}_proj.weight" for i in range(2)
                  for m, ws in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down"))) for w in ws)
    assert in_muon == want
    in_adamw = [names[id(p)] for g in adamw.param_groups for p in g["params"]]
    assert sorted(in_muon + in_adamw) == sorted(names.values())  # every parameter once
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(in_adamw)
    for g in adamw.param_groups:  # decay the matrices, not the norm gains
        assert all(p.ndim == (2 if g["weight_decay"] > 0 else 1) for p in g["params"])
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    (single,) = T.build_optimizers(model, T.TrainConfig(model=cfg.model))
    assert sum(len(g["params"]) for g in single.param_groups) == len(names)
    with pytest.raises(ValueError, match="optimizer must be"):
        T.build_optimizers(model, T.TrainConfig(optimizer="sgd"))


def test_validation_loss_by_hand():
    """A bigram table as the model: the mean cross-entropy is a sum of log-softmax look-ups."""
    table = torch.randn(D.VOCAB, D.VOCAB, generator=torch.Generator().manual_seed(0)) * 2

    class Bigram(nn.Module):
        def forward(self, input_ids):
            return SimpleNamespace(logits=table[input_ids])

    x = torch.randint(0, 256, (5, 7), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 256, (5, 7), generator=torch.Generator().manual_seed(2))
    t = table.double().numpy()
    logz = np.log(np.exp(t - t.max(1, keepdims=True)).sum(1)) + t.max(1)
    want = np.mean([logz[a] - t[a, b] for a, b in zip(x.numpy().ravel(), y.numpy().ravel())])
    assert T.evaluate(Bigram(), x, y, batch=2) == pytest.approx(want, rel=1e-6)  # batches of 2, 2, 1 windows


# --- report --------------------------------------------------------------------------------------------------------
def fake(arm, seed, ppl, seconds=100.0, spectral=0.0, refreshes=0, curve=(300.0, 20.0, 10.0)):
    loss = math.log(ppl)
    return dict(arm=arm, seed=seed, final_ppl=ppl, final_loss=loss, final_bpb=loss / math.log(2), diverged=False,
                seconds=seconds, cpu_seconds=seconds * 0.9, train_seconds=seconds * 0.8, eval_seconds=seconds * 0.1,
                spectral_seconds=spectral, refreshes=refreshes,
                curve=[dict(step=10 * i, tokens=1000 * i, val_loss=math.log(v), val_ppl=v) for i, v in enumerate(curve)])


def test_comparisons_against_scipy():
    rng = np.random.default_rng(0)
    base = {s: 3.0 + rng.uniform(0, 0.2) for s in range(4)}
    llr = {s: base[s] - 0.05 - rng.uniform(0, 0.01) for s in range(3)}  # seed 3 unfinished: not paired
    runs = [fake("adamw", s, p) for s, p in base.items()] + [fake("adamw+llr", s, p, spectral=5.0, refreshes=4)
                                                              for s, p in llr.items()]
    comps = R.comparisons(R.Runs(runs))
    (c,) = comps
    assert (c["arm"], c["baseline"], c["seeds"]) == ("adamw+llr", "adamw", [0, 1, 2])
    a, b = [llr[s] for s in range(3)], [base[s] for s in range(3)]
    assert c["ppl"]["diff_mean"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert c["ppl"]["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert c["ppl"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon(np.subtract(a, b)).pvalue)
    assert c["ppl"]["losses"] == 3 and c["arm_ppl"][0] == pytest.approx(np.mean(a))
    assert c["bpb"]["diff_mean"] == pytest.approx(np.mean(np.log2(a) - np.log2(b)))
    assert c["reading"].startswith("At this scale adamw+llr's validation perplexity is lower than adamw's on all 3")


def test_reading_says_no_more_than_the_numbers():
    def test(d):
        return R.paired_test(np.zeros(len(d)), np.asarray(d, dtype=float))

    assert "too few" in R.reading("a", "b", test([-1.0, -2.0]))
    mixed = R.reading("a", "b", test([-1.0, 0.5, -0.2]))
    assert mixed.startswith("The 3 paired seeds do not separate a from b") and "2/3 seeds lower" in mixed
    assert R.reading("a", "b", test([1.0, 1.1, 0.9])).startswith("At this scale a's validation perplexity is higher")
    uneven = R.reading("a", "b", test([-1.0, -1.1, -0.9, -1.2, -1.05, 0.01]))
    assert "not on every seed (5/6 lower)" in uneven


def test_spectral_share_cost_and_curves():
    runs = R.Runs([fake("adamw", 0, 3.0), fake("adamw+llr", 0, 2.9, seconds=200.0, spectral=10.0, refreshes=5),
                   fake("adamw+llr", 1, 2.9, seconds=100.0, spectral=10.0, refreshes=5,
                        curve=(300.0, 30.0, 12.0, 11.0))])
    (s,) = R.spectral_share(runs)
    assert s["arm"] == "adamw+llr" and s["share_pct"] == pytest.approx((5.0 + 10.0) / 2)  # mean of per-run shares
    assert (s["share_min"], s["share_max"], s["per_refresh_s"]) == pytest.approx((5.0, 10.0, 2.0))
    tokens, mean, lo, hi = R.mean_curve(runs.get("adamw+llr", {0, 1}))
    np.testing.assert_allclose(tokens, [0, 1000, 2000])  # the evaluations both runs reached
    np.testing.assert_allclose(mean, [300.0, 25.0, 11.0])
    np.testing.assert_allclose((lo[1], hi[1]), (20.0, 30.0))
    assert {c["arm"]: c["seconds"] for c in R.cost(runs)} == {"adamw": 100.0, "adamw+llr": 150.0}


# --- the smoke run -------------------------------------------------------------------------------------------------
def test_smoke_run_outputs_and_resume(tmp_path, capsys):
    _corpus_or_skip()
    out = tmp_path / "smoke"
    assert pretrain_run.main(["--smoke", "--out", str(out), "--no-progress"]) == 0
    lines = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    arms = list(pretrain_run.ARMS)
    assert sorted((r["arm"], r["seed"]) for r in lines) == sorted((a, s) for a in arms for s in (0, 1))
    for r in lines:
        cfg = pretrain_run.SMOKE
        assert [p["step"] for p in r["curve"]] == [0, 4, 8, 12]
        assert r["curve"][0]["val_loss"] == pytest.approx(math.log(D.VOCAB), abs=0.3)  # untrained: ~uniform
        assert r["curve"][-1]["val_loss"] < r["curve"][0]["val_loss"]
        assert r["tokens"] == cfg.steps * cfg.batch * cfg.model.seq_len and not r["diverged"]
        assert r["final_bpb"] == pytest.approx(r["final_loss"] / math.log(2))
        assert (r["refreshes"] > 0) == (pretrain_run.ARMS[r["arm"]].tb is not None)
    by = {(r["arm"], r["seed"]): r for r in lines}
    assert by["adamw", 0]["final_loss"] != by["muon", 0]["final_loss"]
    assert by["adamw", 0]["curve"][0] == by["muon", 0]["curve"][0]  # same seed: the same initial model
    for name in ("results.md", "summary.json", "runs.csv", "curves.png", "meta.json"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"] == len(lines) and summary["comparisons"][0]["seeds"] == [0, 1]
    capsys.readouterr()
    # resume: nothing left to run, nothing appended; without --resume the stored runs are protected
    assert pretrain_run.main(["--smoke", "--out", str(out), "--no-progress", "--resume"]) == 0
    assert "0 to run" in capsys.readouterr().out
    assert len((out / "runs.jsonl").read_text().splitlines()) == len(lines)
    with pytest.raises(SystemExit, match="--resume continues it"):
        pretrain_run.main(["--smoke", "--out", str(out)])


def test_a_run_is_reproducible_from_its_seed():
    _corpus_or_skip()
    corpus = D.load_corpus()
    cfg = pretrain_run.SMOKE
    a, b = T.train_run(corpus, cfg, 0), T.train_run(corpus, cfg, 0)
    assert a.final_loss == b.final_loss and a.curve == b.curve
    assert T.train_run(corpus, cfg, 1).final_loss != a.final_loss
    draw = lambda seed: D.train_batch(corpus.train, 4, 8, T.batch_order(seed))[0]  # noqa: E731
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))
