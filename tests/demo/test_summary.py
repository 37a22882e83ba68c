"""FT vs TB summaries: paired tests against scipy, the per-size records and the markdown table."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tempbalance.demo.finetune import RunResult
from tempbalance.demo.summary import markdown_table, paired_test, summarize

stats = pytest.importorskip("scipy.stats")


def _run(arm, size, seed, acc, std, lr=1e-4):
    return RunResult(arm=arm, size=size, seed=seed, lr=lr, epochs=1, batch_size=4, steps=1, train_seconds=1.0,
                     spectral_seconds=0.0, final_loss=0.5, eval={"test": acc}, block_alpha={"b.0": 3.0},
                     block_alpha_std=std, layer_alpha_std=2 * std)


def test_paired_test_against_scipy():
    a = [80.0, 82.5, 79.0, 81.0, 83.0]
    b = [81.0, 84.0, 78.5, 83.0, 85.5]
    out = paired_test(a, b)
    d = np.subtract(b, a)
    assert out["diff_mean"] == pytest.approx(d.mean()) and out["diff_std"] == pytest.approx(d.std(ddof=1))
    assert out["t_p"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert (out["wins"], out["losses"], out["ties"]) == (4, 1, 0)


def test_paired_test_degenerate_cases():
    same = paired_test([1.0, 2.0], [1.0, 2.0])
    assert same["t_p"] is None and same["wilcoxon_p"] is None and same["ties"] == 2
    shift = paired_test([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])  # constant difference: t undefined, signs all positive
    assert shift["t_p"] is None and shift["wins"] == 3
    with pytest.raises(ValueError, match="length"):
        paired_test([1.0], [1.0, 2.0])


def test_summarize_pairs_by_seed_and_size():
    runs = [_run("FT", 13, s, acc, 0.10 + 0.01 * s) for s, acc in enumerate([0.60, 0.55, 0.58])]
    runs += [_run("TB", 13, s, acc, 0.08 + 0.01 * s, lr=3e-5) for s, acc in enumerate([0.65, 0.56, 0.57])]
    runs += [_run("FT", 128, 0, 0.80, 0.05)]  # no TB partner: not summarised
    (rec,) = summarize(runs)
    assert rec["size"] == 13 and rec["seeds"] == 3
    assert rec["FT_acc_mean"] == pytest.approx(np.mean([60, 55, 58])) and rec["FT_acc_std"] == pytest.approx(
        np.std([60, 55, 58], ddof=1))
    assert rec["gain_diff_mean"] == pytest.approx(np.mean([5, 1, -1]))
    assert rec["t_p"] == pytest.approx(stats.ttest_rel([65, 56, 57], [60, 55, 58]).pvalue)
    assert rec["FT_lr"] == [1e-4] and rec["TB_lr"] == [3e-5]
    assert rec["TB_alpha_std_mean"] == pytest.approx(0.09) and rec["alpha_std_diff_mean"] == pytest.approx(-0.02)
    assert rec["alpha_std_tb_lower"] == 3
    md = markdown_table([rec]).splitlines()
    assert len(md) == 3 and md[0].count("|") == md[1].count("|") == md[2].count("|")
    assert "| 13 | 3 | 57.67 ± 2.52 | 59.33 ± 4.93 | +1.67 ± 3.06 | 2/3 |" in md[2]
    assert not math.isnan(rec["FT_alpha_std_std"])
