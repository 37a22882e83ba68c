"""experiments/text: the report's statistics on synthetic runs against scipy and hand computations (selection on
dev macro-F1, paired comparisons at the selected and at every lr, trend, alpha movement, cadence check), the
run plan, and a smoke run on the real RT/SST-2 data with a tiny random BERT (every output, resume)."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.text import report as R  # noqa: E402
from experiments.text import run as text_run  # noqa: E402

stats = pytest.importorskip("scipy.stats")
PRE = {"enc.layer.0": 3.0, "enc.layer.1": 3.5}


def fake_run(size, arm, lr, seed, dev_f1, test_acc, test_f1=None, alphas=(3.0, 3.5), factors=None, **extra):
    run = dict(size=size, arm=arm, lr=lr, seed=seed, seconds=2.0, cpu_seconds=1.5, train_seconds=1.0,
               spectral_seconds=0.1 if arm != "FT" else 0.0, block_alpha=dict(zip(PRE, alphas)),
               block_alpha_std=float(np.std(alphas)),
               scores=dict(dev=dict(acc=0.5, macro_f1=dev_f1, balanced_acc=0.5),
                           test=dict(acc=test_acc, macro_f1=test_f1 if test_f1 is not None else test_acc - 0.05,
                                     balanced_acc=test_acc)),
               tb_history=[] if arm == "FT" else [dict(factors=f) for f in (factors or [{"u0": 0.8, "u1": 1.2}] * 2)])
    run.update(extra)
    return run


def synthetic(rng, sizes=(13, 32), seeds=4, lrs=(1e-5, 1e-4), arms=("FT", "TB-default", "TB-paper")):
    return [fake_run(n, arm, lr, s, dev_f1=rng.uniform(0.3, 0.8), test_acc=rng.uniform(0.5, 0.9))
            for n in sizes for arm in arms for lr in lrs for s in range(seeds)]


def test_selection_uses_mean_dev_macro_f1_not_accuracy():
    """A constant classifier can have the best dev accuracy on an unbalanced split; with balanced dev and
    macro-F1 it loses. Ties go to the smaller lr."""
    runs = [fake_run(13, "FT", 1e-4, s, dev_f1=0.33, test_acc=0.52, scores=None) for s in range(2)]
    for r in runs:
        r["scores"] = dict(dev=dict(acc=0.58, macro_f1=0.37, balanced_acc=0.5), test=dict(acc=0.51, macro_f1=0.34,
                                                                                          balanced_acc=0.5))
    runs += [fake_run(13, "FT", 3e-5, s, dev_f1=0.60, test_acc=0.6) for s in range(2)]
    for r in runs[2:]:
        r["scores"]["dev"]["acc"] = 0.55
    idx = R.Runs(runs)
    assert R.select_lr(idx, 13, "FT", [3e-5, 1e-4], {0, 1}) == 3e-5
    tie = R.Runs([fake_run(13, "FT", lr, 0, dev_f1=0.7, test_acc=0.7) for lr in (1e-4, 3e-5)])
    assert R.select_lr(tie, 13, "FT", [3e-5, 1e-4], {0}) == 3e-5


def test_comparisons_against_scipy_and_every_grid_point():
    rng = np.random.default_rng(0)
    runs = synthetic(rng)
    runs.append(fake_run(13, "TB-paper", 1e-5, 9, 0.9, 0.9))  # a seed only TB has: not paired, left out
    comps = R.comparisons(R.Runs(runs))
    assert [(c["size"], c["arm"]) for c in comps] == [(13, "TB-default"), (13, "TB-paper"), (32, "TB-default"),
                                                      (32, "TB-paper")]
    by = {(r["size"], r["arm"], r["lr"], r["seed"]): r for r in runs}
    for c in comps:
        assert c["seeds"] == [0, 1, 2, 3]
        for arm, key in (("FT", "FT_lr"), (c["arm"], "TB_lr")):
            dev = {lr: np.mean([by[c["size"], arm, lr, s]["scores"]["dev"]["macro_f1"] for s in range(4)])
                   for lr in (1e-5, 1e-4)}
            assert c[key] == max(dev, key=dev.get)
        ft = [100 * by[c["size"], "FT", c["FT_lr"], s]["scores"]["test"]["acc"] for s in range(4)]
        tb = [100 * by[c["size"], c["arm"], c["TB_lr"], s]["scores"]["test"]["acc"] for s in range(4)]
        assert c["acc"]["t_p"] == pytest.approx(stats.ttest_rel(tb, ft).pvalue)
        assert c["acc"]["diff_mean"] == pytest.approx(np.mean(tb) - np.mean(ft))
        assert c["acc"]["FT"] == pytest.approx((np.mean(ft), np.std(ft, ddof=1)))
        for row in c["grid"]:  # equal lr, no selection
            f = [100 * by[c["size"], "FT", row["lr"], s]["scores"]["test"]["macro_f1"] for s in range(4)]
            t = [100 * by[c["size"], c["arm"], row["lr"], s]["scores"]["test"]["macro_f1"] for s in range(4)]
            assert row["macro_f1"]["t_p"] == pytest.approx(stats.ttest_rel(t, f).pvalue)
    grid = R.grid_rows(R.Runs(runs), comps)
    assert len(grid) == 2 * 2 * 3  # sizes x lrs x arms
    assert sum(g["selected"] for g in grid) == 2 * 3  # one lr per arm and size
    g = next(g for g in grid if (g["size"], g["lr"], g["arm"]) == (32, 1e-4, "TB-paper"))
    accs = [100 * by[32, "TB-paper", 1e-4, s]["scores"]["test"]["acc"] for s in range(4)]
    assert g["acc"] == pytest.approx((np.mean(accs), np.std(accs, ddof=1)))


def test_incomplete_seed_and_missing_arm():
    rng = np.random.default_rng(1)
    runs = [r for r in synthetic(rng, sizes=(13,), seeds=3, arms=("FT", "TB-paper"))
            if not (r["arm"] == "FT" and r["seed"] == 2 and r["lr"] == 1e-4)]  # seed 2 of FT unfinished
    (c,) = R.comparisons(R.Runs(runs))
    assert c["arm"] == "TB-paper" and c["seeds"] == [0, 1]


def test_trend_against_linregress():
    comps = [dict(size=n, arm="TB-paper", acc=dict(gains=list(g))) for n, g in
             ((13, [3.0, 1.0, 2.0]), (32, [1.0, 0.5, 0.0]), (128, [0.0, -1.0, 0.5]))]
    t = R.trend(comps, "TB-paper")
    x = np.log10([13] * 3 + [32] * 3 + [128] * 3)
    y = [3.0, 1.0, 2.0, 1.0, 0.5, 0.0, 0.0, -1.0, 0.5]
    ref = stats.linregress(x, y)
    assert t["slope"] == pytest.approx(ref.slope) and t["slope_p"] == pytest.approx(ref.pvalue)
    assert t["pooled"] == pytest.approx(np.mean(y)) and t["pairs"] == 9 and t["slope"] < 0


def test_alpha_movement_and_cadence_check():
    mv = R.alpha_movement(fake_run(13, "TB-paper", 1e-4, 0, 0.5, 0.6, alphas=(3.1, 3.45),
                                   factors=[{"u0": 0.8, "u1": 1.2}, {"u0": 0.85, "u1": 1.1}]), PRE)
    assert mv["max_shift"] == pytest.approx(0.1) and mv["mean_shift"] == pytest.approx(0.075)
    assert mv["factor_shift"] == pytest.approx(0.1) and mv["factor_range"] == pytest.approx(0.4)
    assert mv["refreshes"] == 2
    runs = [fake_run(13, "TB-paper", 1e-4, s, 0.5, 0.6 + 0.01 * s, factors=[{"u0": 1.0}] * 11,
                     train_seconds=10.0, spectral_seconds=2.0) for s in range(3)]
    runs += [fake_run(13, "TB-paper-adaptive", 1e-4, s, 0.5, 0.6 + 0.02 * s, factors=[{"u0": 1.0}] * 3 + [{"u0": 1.1}],
                      train_seconds=10.0, spectral_seconds=0.5) for s in range(3)]
    (c,) = R.cadence_check(R.Runs(runs))
    assert c["epoch"]["refreshes"] == 11 and c["adaptive"]["refreshes"] == 4
    assert c["epoch"]["overhead_pct"] == pytest.approx(20.0) and c["adaptive"]["overhead_pct"] == pytest.approx(5.0)
    assert c["acc"]["diff_mean"] == pytest.approx(1.0) and c["factor_gap"] == pytest.approx(0.1)


def test_shuffle_control_against_scipy():
    rng = np.random.default_rng(3)
    prof = {"enc.layer.0": 0.5, "enc.layer.1": 1.0, "enc.layer.2": 2.0}
    runs, acc = [], {}
    for s in range(5):
        for arm in ("FT", "TB-paper", "TB-paper-shuffled"):
            acc[arm, s] = rng.uniform(0.5, 0.9)
            extra = {"block_lr_scale": dict(zip(prof, np.roll(list(prof.values()), s)))} if arm.endswith("d") else {}
            runs.append(fake_run(13, arm, 1e-4, s, 0.5, acc[arm, s], factors=[prof] * 2, **extra))
    runs.append(fake_run(13, "TB-paper-shuffled", 1e-4, 7, 0.5, 0.7, block_lr_scale=prof))  # no FT/TB pair: left out
    runs += [fake_run(13, "TB-paper-sorted", 1e-4, s, 0.5, 0.6, block_lr_scale=prof) for s in range(2)]
    c, srt = R.profile_controls(R.Runs(runs))
    assert (c["size"], c["arm"], c["lr"], c["seeds"]) == (13, "TB-paper-shuffled", 1e-4, 5)
    assert (srt["arm"], srt["seeds"], srt["control_rho"]) == ("TB-paper-sorted", 2, [1.0, 1.0])
    assert srt["acc"]["tb_vs_control"]["diff_mean"] == pytest.approx(np.mean([100 * acc["TB-paper", s] - 60
                                                                              for s in range(2)]))
    a = {arm: [100 * acc[arm, s] for s in range(5)] for arm in ("FT", "TB-paper", "TB-paper-shuffled")}
    tc = c["acc"]["tb_vs_control"]
    assert tc["diff_mean"] == pytest.approx(np.mean(np.subtract(a["TB-paper"], a["TB-paper-shuffled"])))
    assert tc["t_p"] == pytest.approx(stats.ttest_rel(a["TB-paper"], a["TB-paper-shuffled"]).pvalue)
    assert c["acc"]["control_vs_ft"]["diff_mean"] == pytest.approx(
        np.mean(np.subtract(a["TB-paper-shuffled"], a["FT"])))
    assert c["tb_rho"] == pytest.approx(1.0)  # 0.5 < 1 < 2 up the blocks
    assert c["control_rho"] == pytest.approx([1.0, -0.5, -0.5, 1.0, -0.5])  # the rolled profiles


def test_shuffled_profile_is_a_seeded_permutation_and_sorted_rises():
    factors = {f"m.layer.{i}": 0.3 + 0.25 * i for i in range(12)}
    backwards = dict(zip(factors, reversed(list(factors.values()))))
    assert text_run.sorted_profile(backwards) == factors  # block 10 after block 9, not after block 1
    a, b = text_run.shuffled_profile(factors, 4), text_run.shuffled_profile(factors, 4)
    assert a == b and set(a) == set(factors) and sorted(a.values()) == sorted(factors.values())
    others = [text_run.shuffled_profile(factors, s) for s in range(5)]
    assert len({tuple(p.values()) for p in others}) == 5 and all(p != factors for p in others)


def _args(extra):
    return text_run.parse(["--smoke", "--sizes", "8", "--lrs", "1e-3", "3e-3", "--dev", "16", "--epochs", "1",
                           "--no-progress", *extra])


def test_plan_is_seed_major_with_the_cadence_check_last():
    args = _args(["--seeds", "2", "--arms", "FT", "TB-paper", "--cadence-check", "1", "--shuffle-control",
                  "--sorted-control"])
    p = text_run.plan(args)
    assert p[:4] == [(8, "FT", 1e-3, 0), (8, "FT", 3e-3, 0), (8, "TB-paper", 1e-3, 0), (8, "TB-paper", 3e-3, 0)]
    assert p[-1] == (8, "TB-paper-adaptive", 3e-3, 0) and len(p) == 2 * 2 * 2 + 1
    with_control = text_run.plan(_args(["--seeds", "2", "--arms", "FT", "TB-paper", "--cadence-check", "1",
                                        "--shuffle-control", "1e-3", "--sorted-control", "3e-3"]))
    assert with_control == p + [(8, "TB-paper-shuffled", 1e-3, 0), (8, "TB-paper-sorted", 3e-3, 0),
                                (8, "TB-paper-shuffled", 1e-3, 1), (8, "TB-paper-sorted", 3e-3, 1)]
    full = text_run.parse(["--model", "mpnet"])
    assert full.shuffle_control == full.sorted_control == []  # the full run's default: none
    assert text_run.seeds_for(13) == list(range(10)) and text_run.seeds_for(128) == list(range(5))
    split = text_run.plan(_args(["--seeds", "3", "--seed-start", "2", "--arms", "FT", "--cadence-check", "0",
                                 "--shuffle-control", "--sorted-control"]))
    assert split == [(8, "FT", 1e-3, 2), (8, "FT", 3e-3, 2)]  # --seed-start 2 of 3 seeds: seed 2 only
    assert text_run.parse(["--model", "mpnet"]).lrs == [1e-5, 2e-5, 5e-5, 1e-4, 2e-4]
    with pytest.raises(SystemExit):
        text_run.parse(["--arms", "TB-paper"])


def test_llrd_arms_plan_settings_and_tuned_lr():
    """LLRD-0.85 is a grid arm with its decay in the stored settings; --llrd-tuned runs 0.75 and 0.95 at the lr
    LLRD-0.85 selected on mean dev macro-F1, and refuses to guess before that grid has finished."""
    args = _args(["--seeds", "2", "--arms", "FT", "LLRD-0.85", "--cadence-check", "0"])
    assert text_run.plan(args)[:4] == [(8, "FT", 1e-3, 0), (8, "FT", 3e-3, 0), (8, "LLRD-0.85", 1e-3, 0),
                                       (8, "LLRD-0.85", 3e-3, 0)]
    assert text_run.run_settings(args, "LLRD-0.85")["layer_decay"] == 0.85
    assert "layer_decay" not in text_run.run_settings(args, "FT")  # FT's stored runs keep matching
    tuned = _args(["--sizes", "8", "--seeds", "2", "--arms", "FT", "--cadence-check", "0", "--llrd-tuned"])
    with pytest.raises(SystemExit, match="LLRD-0.85 at every lr"):
        text_run.plan(tuned, {})
    done = {(8, "LLRD-0.85", lr, s): fake_run(8, "LLRD-0.85", lr, s, dev_f1=f, test_acc=0.7)
            for lr, f in ((1e-3, 0.6), (3e-3, 0.7)) for s in (0, 1)}
    done[8, "LLRD-0.85", 1e-3, 1]["scores"]["dev"]["macro_f1"] = 0.95  # mean 0.775 > 0.7: 1e-3 wins on the mean
    plan = text_run.plan(tuned, done)
    assert plan[-4:] == [(8, "LLRD-0.75", 1e-3, 0), (8, "LLRD-0.95", 1e-3, 0), (8, "LLRD-0.75", 1e-3, 1),
                         (8, "LLRD-0.95", 1e-3, 1)]


@pytest.fixture
def data_packages():
    from tempbalance.demo import data as D

    try:
        D.default_model_dir(), D.package_dir(D.POOL_PACKAGE), D.package_dir(D.TEST_PACKAGE)
    except D.MissingDataError:
        pytest.skip("demo model/data packages not installed")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smoke_run_outputs_and_resume(tmp_path, data_packages):
    out = tmp_path / "res"
    assert text_run.main(["--smoke", "--sizes", "8", "12", "--seeds", "1", "--lrs", "1e-3", "3e-3", "--dev", "16",
                          "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    first = _lines(out / "runs.jsonl")
    # sizes x arms x lrs x seeds + per size one cadence check and two profile controls (smoke default: lr 3e-3)
    assert len(first) == 2 * 3 * 2 * 1 + 2 + 2 * 2
    for n in (8, 12):  # the controls train FT with TB-paper's first-refresh factors, reassigned to the blocks
        (tb,) = [r for r in first if (r["size"], r["arm"], r["lr"]) == (n, "TB-paper", 3e-3)]
        pre = tb["tb_history"][0]["factors"]
        for arm in ("TB-paper-shuffled", "TB-paper-sorted"):
            (ctl,) = [r for r in first if (r["size"], r["arm"]) == (n, arm)]
            assert ctl["lr"] == 3e-3 and ctl["tb_history"] == [] and set(ctl["block_lr_scale"]) == set(pre)
            assert sorted(ctl["block_lr_scale"].values()) == pytest.approx(sorted(pre.values()), rel=1e-12)
        srt = [r for r in first if (r["size"], r["arm"]) == (n, "TB-paper-sorted")][0]["block_lr_scale"]
        assert srt["bert.encoder.layer.0"] <= srt["bert.encoder.layer.1"]
    assert all(set(r["scores"]) == {"dev", "test"} for r in first)  # every grid point is tested
    assert all(set(r["scores"]["test"]) == {"acc", "macro_f1", "balanced_acc"} for r in first)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dev_classes"] == [8, 8] and meta["test"] == 872 and meta["pretrained"]["block_alpha_std"] > 0
    with pytest.raises(SystemExit, match="--resume"):  # never overwrite stored runs by accident
        text_run.main(["--smoke", "--out", str(out), "--no-progress"])
    # a second seed: the stored seed is reused, only the new runs train
    assert text_run.main(["--smoke", "--sizes", "8", "12", "--seeds", "2", "--lrs", "1e-3", "3e-3", "--dev", "16",
                          "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(out), "--resume"]) == 0
    runs = _lines(out / "runs.jsonl")
    assert runs[:len(first)] == first and len(runs) == 2 * 3 * 2 * 2 + 2 + 2 * 2 * 2
    summary = json.loads((out / "summary.json").read_text())
    assert [(c["size"], c["arm"], c["seeds"]) for c in summary["comparisons"]] == [
        (8, "TB-default", [0, 1]), (8, "TB-paper", [0, 1]), (12, "TB-default", [0, 1]), (12, "TB-paper", [0, 1])]
    rows = list(csv.DictReader(open(out / "grid.csv")))
    assert len(rows) == 2 * 2 * 3
    for row in rows:
        mine = [r for r in runs if (r["size"], r["arm"], r["lr"]) == (int(row["size"]), row["arm"], float(row["lr"]))]
        assert float(row["test_acc"]) == pytest.approx(100 * np.mean([r["scores"]["test"]["acc"] for r in mine]))
    md = (out / "results.md").read_text()
    for section in ("## Selected on dev", "## Every grid point", "## Trend", "## Diagnosis", "## Cadence check",
                    "## Profile controls", "## Cost per run"):
        assert section in md
    for png in ("f1_by_lr.png", "acc_by_lr.png", "selected_by_size.png", "alpha_std_by_size.png",
                "block_alpha_shift.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # other settings (epochs): the stored runs do not count, and --report-only runs nothing
    args = ["--smoke", "--sizes", "8", "--seeds", "1", "--dev", "16", "--epochs", "2", "--out", str(out),
            "--report-only", "--no-progress"]
    assert text_run.main(args) == 0
    assert json.loads((out / "summary.json").read_text())["runs"] == 0 and len(_lines(out / "runs.jsonl")) == len(runs)


def test_holm_by_hand():
    """Holm on (0.01, 0.04, 0.03, None, 0.005): m = 4; sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 =
    0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06."""
    assert R.holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert R.holm([0.6, 0.5]) == [1.0, 1.0] and R.holm([]) == []


def _llrd_runs(rng, seeds=4, lrs=(1e-5, 1e-4)):
    runs = synthetic(rng, sizes=(13,), seeds=seeds, lrs=lrs, arms=("FT", "TB-paper", "LLRD-0.85"))
    for r in runs:
        if r["arm"] == "TB-paper":
            r["tb_history"] = [dict(factors={"enc.layer.0": 0.5, "enc.layer.1": 1.5})]
    best = max(lrs, key=lambda lr: np.mean([r["scores"]["dev"]["macro_f1"] for r in runs
                                            if (r["arm"], r["lr"]) == ("LLRD-0.85", lr)]))
    for arm, dev in (("LLRD-0.75", 0.1), ("LLRD-0.95", 0.99)):  # 0.95 wins on dev
        runs += [fake_run(13, arm, best, s, dev_f1=dev, test_acc=rng.uniform(0.5, 0.9)) for s in range(seeds)]
    return runs, best


def test_llrd_vs_tb_and_tuned_against_scipy():
    rng = np.random.default_rng(3)
    runs, best = _llrd_runs(rng)
    idx = R.Runs(runs)
    comps = R.comparisons(idx)
    assert [c["arm"] for c in comps] == ["TB-paper", "LLRD-0.85"]  # LLRD-0.85 is compared with FT like TB
    (h,) = R.llrd_vs_tb(idx, comps)
    tb, ll = comps
    by = {(r["arm"], r["lr"], r["seed"]): 100 * r["scores"]["test"]["acc"] for r in runs}
    t = [by["TB-paper", tb["TB_lr"], s] for s in range(4)]
    l_ = [by["LLRD-0.85", ll["TB_lr"], s] for s in range(4)]
    assert h["LLRD_lr"] == ll["TB_lr"] == best and h["acc"]["t_p"] == pytest.approx(stats.ttest_rel(t, l_).pvalue)
    tuned = h["tuned"]
    assert tuned["chosen"] == "LLRD-0.95" and tuned["decay"] == 0.95 and tuned["lr"] == best
    t95 = [by["LLRD-0.95", best, s] for s in range(4)]
    ft = [by["FT", tb["FT_lr"], s] for s in range(4)]
    assert tuned["vs_FT"]["diff_mean"] == pytest.approx(np.mean(t95) - np.mean(ft))
    assert tuned["tb_vs"]["t_p"] == pytest.approx(stats.ttest_rel(t, t95).pvalue)
    main = R.main_tests(comps, [h])
    assert [m["test"] for m in main] == ["TB-paper − FT", "LLRD-0.85 − FT", "TB-paper − LLRD-0.85",
                                         "TB-paper − LLRD-tuned"]
    assert [m["holm_p"] for m in main] == pytest.approx(R.holm([m["t_p"] for m in main]))
    md = R._llrd_markdown([h], comps, PRE)
    assert any("Pearson correlation with LLRD-0.85's +1.00" in line for line in md)  # 0.5, 1.5 vs 0.85, 1
    assert any("grid's largest lr" in line for line in md) == (best == 1e-4)
    edge = R._llrd_markdown([dict(h, LLRD_lr=1e-4)], comps, PRE)
    assert any("largest lr at 13 sentences" in line for line in edge)


def test_dose_response_against_scipy():
    rng = np.random.default_rng(5)
    runs, profiles = [], []
    for s in range(6):
        f = rng.permutation([0.5, 1.0, 2.0, 3.0])
        prof = {f"enc.layer.{i}": float(v) for i, v in enumerate(f)}
        profiles.append(prof)
        runs.append(fake_run(13, "FT", 1e-4, s, 0.5, rng.uniform(0.5, 0.9)))
        runs.append(fake_run(13, "TB-paper-shuffled", 1e-4, s, 0.5, rng.uniform(0.5, 0.9), block_lr_scale=prof))
    (d,) = R.dose_response(R.Runs(runs))
    rho = [stats.spearmanr(range(4), [p[f"enc.layer.{i}"] for i in range(4)])[0] for p in profiles]
    gain = [100 * (runs[2 * s + 1]["scores"]["test"]["acc"] - runs[2 * s]["scores"]["test"]["acc"]) for s in range(6)]
    top3 = [np.mean([p[f"enc.layer.{i}"] for i in (1, 2, 3)]) for p in profiles]
    assert [p["rho"] for p in d["points"]] == pytest.approx(rho)
    assert d["spearman"] == pytest.approx(stats.spearmanr(rho, gain)[0])
    assert d["pearson_p"] == pytest.approx(stats.pearsonr(rho, gain)[1])
    assert d["top3_spearman"] == pytest.approx(stats.spearmanr(top3, gain)[0])


def test_verdict_corrects_over_every_folder(tmp_path):
    for name, ps in (("a", [0.01, 0.04]), ("b", [0.02])):
        (tmp_path / name).mkdir()
        rows = [dict(size=13, test=f"t{k}", diff_mean=1.0, wins=3, n=4, t_p=p, wilcoxon_p=0.1) for k, p in enumerate(ps)]
        (tmp_path / name / "summary.json").write_text(json.dumps(dict(main_tests=rows, paired_tests=10)))
    out = R.verdict([tmp_path / "a", tmp_path / "b"], tmp_path / "verdict.md")
    assert out["family"] == 3 and out["paired_tests"] == 20
    assert [r["holm_all_p"] for r in out["tests"]] == pytest.approx([0.03, 0.04, 0.04])
    assert "3 main tests" in (tmp_path / "verdict.md").read_text()
