"""experiments/text/run.py in a smoke configuration (tiny random BERT, real RT/SST-2 data): lr selection on dev
only, test evaluated for the selected runs only, every output written."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

RUN = Path(__file__).resolve().parents[2] / "experiments" / "text" / "run.py"


@pytest.fixture(scope="module")
def text_run():
    spec = importlib.util.spec_from_file_location("experiments_text_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_helpers(text_run):
    assert [text_run.epochs_for(n) for n in (13, 32, 128, 512, 2048)] == [10, 10, 8, 2, 2]
    assert text_run.epochs_for(13, fixed=3) == 3
    assert text_run.select_lr({1e-4: [0.6, 0.7], 3e-5: [0.7, 0.6], 1e-3: [0.5, 0.5]}) == 3e-5  # tie: smaller lr
    assert text_run.select_lr({1e-4: [0.8, 0.7], 3e-5: [0.7, 0.6]}) == 1e-4


def test_smoke_run_outputs(text_run, tmp_path):
    pytest.importorskip("scipy")
    from tempbalance.demo import data as D

    try:
        D.default_model_dir(), D.package_dir(D.POOL_PACKAGE), D.package_dir(D.TEST_PACKAGE)
    except D.MissingDataError:
        pytest.skip("demo model/data packages not installed")
    out = tmp_path / "res"
    code = text_run.main(["--smoke", "--sizes", "8", "12", "--seeds", "2", "--lrs", "1e-3", "3e-3", "--dev", "16",
                          "--epochs", "2", "--threads", "1", "--no-progress", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "runs.json").read_text())
    runs = data["runs"]
    assert len(runs) == 2 * 2 * 2 * 2  # sizes x arms x lrs x seeds
    for size in (8, 12):
        for arm in ("FT", "TB"):
            group = [r for r in runs if r["size"] == size and r["arm"] == arm]
            dev = {lr: np.mean([r["eval"]["dev"] for r in group if r["lr"] == lr]) for lr in (1e-3, 3e-3)}
            chosen = {r["lr"] for r in group if r["selected"]}
            assert chosen == {max(sorted(dev), key=lambda lr: (dev[lr], -lr))}  # selected on dev
            assert all(("test" in r["eval"]) == r["selected"] for r in group)  # test only for the selected lr
    assert [r["size"] for r in data["summary"]] == [8, 12]
    assert data["pretrained"]["block_alpha_std"] > 0 and data["gain_trend"]["pairs"] == 4
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [int(r["size"]) for r in rows] == [8, 12]
    md = (out / "results.md").read_text()
    assert "## Experiment 1" in md and "## Experiment 2" in md and "| 12 | 2 |" in md
    for png in ("accuracy_by_size.png", "alpha_std_by_size.png", "alpha_per_block_n8.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "runs.partial.json").exists()


def test_resume_reuses_only_complete_sizes(text_run, tmp_path):
    cfg = dict(sizes=[8, 16], lrs=[1e-4, 1e-3])
    seeds = [0, 1]
    runs = [dict(size=8, arm=arm, lr=lr, seed=s, selected=lr == 1e-4) for arm in ("FT", "TB")
            for lr in cfg["lrs"] for s in seeds]
    runs += [dict(size=16, arm="FT", lr=1e-4, seed=0, selected=True)]  # size 16 was interrupted
    partial = tmp_path / "runs.partial.json"
    assert text_run._finished_sizes(partial, cfg, seeds) == {}  # no file: nothing to reuse
    partial.write_text(json.dumps(runs))
    done = text_run._finished_sizes(partial, cfg, seeds)
    assert list(done) == [8] and len(done[8]) == 8
    assert text_run._finished_sizes(partial, dict(cfg, lrs=[1e-4, 3e-5]), seeds) == {}  # other lr grid: rerun
