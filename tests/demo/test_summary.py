"""FT vs TB summaries: paired tests against scipy, the per-size records and the markdown table."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tempbalance.demo.finetune import RunResult
from tempbalance.demo.summary import alpha_std_line, markdown_table, paired_test, summarize, verdict

stats = pytest.importorskip("scipy.stats")


def _run(arm, size, seed, acc, std, lr=1e-4, f1=None):
    return RunResult(arm=arm, size=size, seed=seed, lr=lr, epochs=1, batch_size=4, steps=1, train_seconds=1.0,
                     spectral_seconds=0.0, final_loss=0.5, eval={"test": acc}, block_alpha={"b.0": 3.0},
                     block_alpha_std=std, layer_alpha_std=2 * std,
                     scores={} if f1 is None else {"test": {"acc": acc, "macro_f1": f1, "balanced_acc": acc}})


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


def test_summarize_macro_f1_and_the_verdict_sentence():
    ft = [_run("FT", 32, s, acc, 0.05, f1=f1) for s, (acc, f1) in enumerate([(0.60, 0.50), (0.62, 0.55), (0.58, 0.52)])]
    tb = [_run("TB", 32, s, acc, 0.05, f1=f1) for s, (acc, f1) in enumerate([(0.61, 0.58), (0.65, 0.60), (0.57, 0.59)])]
    (rec,) = summarize(ft + tb)
    assert rec["FT_f1_mean"] == pytest.approx(np.mean([50, 55, 52])) and rec["f1_diff_mean"] == pytest.approx(
        np.mean([8, 5, 7]))
    assert rec["f1_t_p"] == pytest.approx(stats.ttest_rel([58, 60, 59], [50, 55, 52]).pvalue)
    assert "| 52.33 ± 2.52 | 59.00 ± 1.00 | +6.67 |" in markdown_table([rec])
    noise = dict(rec, t_p=0.4, f1_t_p=0.3)
    assert verdict(noise).startswith("What this supports: nothing either way") and "+1.00 pp over 3 seed(s)" in verdict(noise)
    sig = dict(rec, gain_diff_mean=-2.0, t_p=0.01, f1_t_p=0.02, losses=3, wins=0)
    assert "TB behind FT by 2.00 pp in 3 of 3 seeds" in verdict(sig) and "not a general claim" in verdict(sig)
    one = dict(rec, gain_diff_mean=0.5, t_p=0.13, f1_t_p=0.03, wins=3)
    assert verdict(one).startswith("What this supports: weak evidence - TB ahead of FT by 0.50 pp in 3 of 3 seeds, "
                                   "significant on macro-F1 only")
    assert verdict(dict(rec, t_p=None, f1_t_p=None)).startswith("What this supports: nothing")
    (no_f1,) = summarize([_run("FT", 8, 0, 0.5, 0.1), _run("TB", 8, 0, 0.6, 0.1)])
    assert "f1_t_p" not in no_f1 and "| - ± - |" in markdown_table([no_f1])


def test_alpha_std_line_claims_a_change_only_when_the_paired_test_does():
    """The demo's old last line called FT 0.0520 vs TB 0.0517 "TempBalance lowers the layer imbalance"; now a
    change is claimed only with paired t p < 0.05 (the p is scipy's on the per-seed STDs)."""
    tiny = [_run("FT", 32, s, 0.6, std) for s, std in enumerate([0.0520, 0.0515, 0.0526])]
    tiny += [_run("TB", 32, s, 0.6, std) for s, std in enumerate([0.0517, 0.0519, 0.0520])]
    (rec,) = summarize(tiny)
    line = alpha_std_line(rec)
    p = stats.ttest_rel([0.0517, 0.0519, 0.0520], [0.0520, 0.0515, 0.0526]).pvalue
    assert f"paired t p = {p:.3f}" in line and "lowers" not in line and "no difference" in line
    clear = [_run("FT", 32, s, 0.6, 0.060 + 0.001 * s) for s in range(4)]
    clear += [_run("TB", 32, s, 0.6, 0.050 + 0.0011 * s) for s in range(4)]
    (rec,) = summarize(clear)
    assert alpha_std_line(rec).endswith("TempBalance lowers the layer imbalance here.")
    rec = dict(rec, FT_alpha_std_mean=0.04)  # TB above FT with a significant test: it raises it
    assert alpha_std_line(rec).endswith("raises the layer imbalance here.")
