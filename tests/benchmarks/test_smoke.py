"""The benchmark scripts run end to end in --smoke mode and write well-formed results (no timing assertions)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, out: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.with_suffix(".md").read_text().startswith("|")
    return json.loads(out.read_text())


def _positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_esd_cost_smoke(tmp_path):
    res = _run("esd_cost.py", tmp_path / "esd.json")
    assert res["mode"] == "smoke" and res["device"] == "cpu"
    sets = {r["set"] for r in res["results"]}
    assert sets == {"roberta-base", "llama7b-block", "smollm2-135m", "fno", "unet"}
    configs = {(r["set"], r["dtype"], r["threads"]) for r in res["results"]}
    assert len(configs) == 5 * 2 * 2  # every set at fp32/fp64 x 1/2 threads
    for r in res["results"]:
        assert set(r["seconds"]) == set(r["extra_bytes"]) and "reference" in r["seconds"]
        assert all(_positive(v) for v in r["seconds"].values()), r
        assert all(isinstance(v, int) and v > 0 for v in r["extra_bytes"].values()), r
        for key in ("gemm_gflops", "gram_gflop", "tridiag_gflop", "floor_seconds"):
            assert _positive(r[key]), (key, r)
        if r["set"] == "llama7b-block":
            assert r["per_model_seconds_x32"]["reference"] == pytest.approx(32 * r["seconds"]["reference"])
    for acc in res["accuracy"]["models"]:
        if "skipped" in acc:
            continue
        errs = acc["max_abs_err"]
        assert {k.split("/")[0] for k in errs} == set(res["methods"]) - {"reference"}
        # every fast path agrees with the float64 svdvals reference on real weights
        assert all(math.isfinite(v) and v < 1e-3 for v in errs.values()), errs


def test_overhead_smoke(tmp_path):
    res = _run("overhead.py", tmp_path / "overhead.json")
    assert res["mode"] == "smoke"
    (b,) = res["benches"]
    runs = b["runs"]
    assert set(runs) == {"plain", "epoch", "epoch_bg", "epoch_stagger2", "epoch_stagger3", "step", "adaptive",
                         "budget", "plain2"}
    per_epoch = math.ceil(res["examples"] / res["batch"])
    steps = res["epochs"] * per_epoch
    for mode, r in runs.items():
        assert _positive(r["wall_seconds"]) and r["steps"] == steps
    # one pass at construction, then one per epoch (but none after the last: nothing reads it) / one per step
    for mode in ("epoch", "epoch_stagger2", "epoch_stagger3"):
        assert runs[mode]["refresh_steps"] == [per_epoch * e for e in range(res["epochs"])]
        assert runs[mode]["n_matrices"] == runs["epoch"]["n_matrices"]
    for mode in ("epoch_stagger2", "epoch_stagger3"):  # the staleness was measured against full passes
        assert 0.0 <= runs[mode]["max_alpha_error"] < float("inf")
    assert runs["step"]["refreshes"] == 1 + steps
    # background: the pass started at an epoch's end is applied 2 steps into the next; the last one never is
    assert runs["epoch_bg"]["refresh_steps"] == [per_epoch * e for e in range(res["epochs"])]
    assert 2 <= runs["adaptive"]["refreshes"] <= 1 + steps
    assert runs["budget"]["refresh_steps"][:2] == [0, 4]  # Budget(start=4); then spaced by measured cost
    assert runs["budget"]["refreshes"] <= 1 + steps
    for mode in ("epoch", "epoch_bg", "epoch_stagger2", "epoch_stagger3", "step", "adaptive", "budget"):
        assert _positive(runs[mode]["spectral_seconds"]) and math.isfinite(b[f"overhead_pct_{mode}"])
    # same seed and data: the two plain runs train identically
    assert b["same_loss_plain_runs"]
    assert math.isfinite(b["reference_pass_seconds"])


def test_solver_crossover_smoke(tmp_path):
    from tempbalance import _native
    from tempbalance.analysis import spectra

    if _native.core is None:
        pytest.skip("native core not built")
    res = _run("solver_crossover.py", tmp_path / "crossover.json")
    assert [r["width"] for r in res["rows"]] == [32, 64]
    for r in res["rows"]:
        assert _positive(r["evd_seconds"]) and _positive(r["two_stage_seconds"])
        assert r["ratio"] == pytest.approx(r["two_stage_seconds"] / r["evd_seconds"])
    assert res["two_stage_min_dim"] == spectra.TWO_STAGE_MIN_DIM


def test_fit_rule_smoke(tmp_path):
    res = _run("fit_rule.py", tmp_path / "fit.json")
    assert res["mode"] == "smoke" and res["before_rev"] == "none"
    assert [r["set"] for r in res["rows"]] == ["smollm2-135m", "llama7b-block"]
    for r in res["rows"]:
        assert set(r["seconds"]) == {"after_1thread", "after_threads", "median", "reference"}
        assert all(_positive(v) for v in r["seconds"].values()), r
    for comps in res["agreement"].values():
        c = comps["after_vs_reference"]  # the pruned scan picks the reference's xmin everywhere
        assert c["same_xmin"] == c["spectra"] and c["alpha_max_rel_diff"] < 1e-9 and c["ks_max_rel_diff"] < 1e-9


def test_pretraining_cost_smoke(tmp_path):
    res = _run("pretraining_cost.py", tmp_path / "pretraining.json")
    assert res["mode"] == "smoke"
    assert [(r["model"], r["method"]) for r in res["rows"]] == [("llama-tiny", "llr"), ("llama-tiny", "alphadecay")]
    llr, ad = res["rows"]
    # 2 blocks x 7 Linear + the head (+ the embedding for LLR) in the reference; ours: the 14 hidden matrices
    # (LLR's embedding and head are units without an analysis), AlphaDecay's plan drops the first and last Linear
    assert (llr["reference_matrices"], llr["matrices"], llr["units"]) == (16, 14, 17)
    assert (ad["reference_matrices"], ad["matrices"]) == (15, 13)
    for r in res["rows"]:
        assert all(_positive(v) for k in ("reference", "tempbalance") for v in r["times"][k])
        assert r["speedup"] == pytest.approx(r["reference_s"] / r["tempbalance_s"])
