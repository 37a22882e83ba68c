"""The PNG plots: files that read back as images of a sane size, failure rows that are drawn instead of crashing,
clear errors, and no pyplot / global backend state touched."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from torch import nn

from tempbalance import TempBalance, analyze
from tempbalance.diagnostics import plots
from tempbalance.analysis.report import LayerResult, Report

FAIL_RGB = np.array([0xC0, 0x39, 0x2B]) / 255.0


def read_png(path) -> np.ndarray:
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img[..., :3]


def assert_sane_png(path, min_w=300, min_h=200, max_side=8000) -> np.ndarray:
    assert path.exists() and path.suffix == ".png"
    img = read_png(path)
    h, w = img.shape[:2]
    assert min_w <= w <= max_side and min_h <= h <= max_side, (w, h)
    assert img.std() > 0.02  # not a blank canvas
    return img


def has_fail_colour(img: np.ndarray) -> bool:
    """Pixels of the failure red (antialiased lines blend it with white, so: clearly red-dominant ones)."""
    exact = (np.abs(img - FAIL_RGB).max(axis=2) < 0.03).any()
    reddish = (img[..., 0] - img[..., 1:].max(axis=2) > 0.3).sum() >= 20
    return bool(exact or reddish)


def row(name, unit, alpha, status="ok", n=64):
    ok = status == "ok"
    nan = math.nan
    return LayerResult(name, unit, "linear", (n, n), n, alpha if ok else nan, 0.5 if ok else nan, n // 2 if ok else 0,
                       2.0, 10.0, 5.0, nan, 0.1 if ok else nan, status, "" if ok else f"layer '{name}': {status}")


@pytest.fixture
def mixed_report() -> Report:
    """Two blocks of fitted layers, one block whose only layer failed, and a failure inside a fitted block."""
    return Report([row("enc.0.q", "enc.0", 2.1), row("enc.0.k", "enc.0", 2.5), row("enc.0.v", "enc.0", 3.0),
                   row("enc.1.q", "enc.1", 3.4), row("enc.1.k", "enc.1", math.nan, "non_finite"),
                   row("head", "head", math.nan, "too_few_eigs", n=4)], seconds=0.1, settings={"backend": "torch"})


@pytest.mark.parametrize("unit", ["layer", "block"])
def test_alpha_bars_png_with_failures_marked(tmp_path, mixed_report, unit):
    path = plots.alpha_bars(mixed_report, tmp_path / "sub" / f"{unit}.png", unit=unit)
    assert path == tmp_path / "sub" / f"{unit}.png"  # parent folders created, the path returned
    assert has_fail_colour(assert_sane_png(path))


def test_alpha_bars_without_failures_has_no_failure_marks(tmp_path):
    report = Report([row(f"l{k}", f"b{k // 2}", 2.0 + 0.1 * k) for k in range(6)])
    assert not has_fail_colour(read_png(plots.alpha_bars(report, tmp_path / "ok.png")))


def test_alpha_bars_grows_with_the_layer_count_and_survives_all_failed(tmp_path):
    small = Report([row(f"l{k}", "b", 2.0 + 0.01 * k) for k in range(5)])
    big = Report([row(f"model.layers.{k}.mlp", f"model.layers.{k // 4}", 2.0 + 0.01 * k) for k in range(150)])
    w_small = read_png(plots.alpha_bars(small, tmp_path / "s.png")).shape[1]
    w_big = assert_sane_png(plots.alpha_bars(big, tmp_path / "b.png")).shape[1]
    assert w_big > 2 * w_small
    dead = Report([row("a", "a", math.nan, "non_finite"), row("b", "b", math.nan, "error")])
    for unit in ("layer", "block"):
        assert has_fail_colour(assert_sane_png(plots.alpha_bars(dead, tmp_path / f"dead_{unit}.png", unit=unit)))
    empty = plots.alpha_bars(Report([]), tmp_path / "empty.png")
    assert read_png(empty).shape[0] > 100


def test_alpha_bars_bad_arguments(tmp_path, mixed_report):
    with pytest.raises(ValueError, match="unit must be"):
        plots.alpha_bars(mixed_report, tmp_path / "x.png", unit="blocks")
    with pytest.raises(ValueError, match="must end in .png"):
        plots.alpha_bars(mixed_report, tmp_path / "x.pdf")
    with pytest.raises(TypeError, match="Report"):
        plots.alpha_bars({"a": 1.0}, tmp_path / "x.png")


def test_esd_plot_variants(tmp_path, rng):
    lam = np.sort(rng.pareto(2.0, 400) + 0.1)
    assert_sane_png(plots.esd_plot(lam, tmp_path / "fit.png", alpha=3.0, xmin=float(lam[200]), n_tail=200,
                                   title="fit"))
    assert_sane_png(plots.esd_plot(torch.from_numpy(lam), tmp_path / "nofit.png"))  # histogram only
    assert_sane_png(plots.esd_plot(lam, tmp_path / "nan.png", alpha=math.nan, xmin=math.nan, note="status: x"))
    assert_sane_png(plots.esd_plot(np.zeros(10), tmp_path / "zeros.png"))  # nothing positive to show
    msg = plots.esd_plot("layer 'x': weight has 3 NaN", tmp_path / "msg.png")
    assert has_fail_colour(read_png(msg))


def _sd():
    torch.manual_seed(0)
    sd = {"a.weight": torch.randn(64, 48), "b.weight": torch.randn(64, 64), "c.weight": torch.randn(6, 3),
          "d.weight": torch.randn(48, 80)}
    sd["b.weight"][3, 3] = float("inf")
    return sd


def test_esd_plots_one_png_per_layer_with_failures(tmp_path):
    sd = _sd()
    report = analyze(sd, backend="torch", min_eigs=8)
    assert [r.status for r in report.rows] == ["ok", "non_finite", "too_few_eigs", "ok"]
    paths = plots.esd_plots(report, sd, tmp_path / "esd", show_progress=False)
    assert [p.name for p in paths] == ["000_a.weight.png", "001_b.weight.png", "002_c.weight.png",
                                       "003_d.weight.png"]
    for p in paths:
        assert_sane_png(p)
    only = plots.esd_plots(report, sd, tmp_path / "some", layers="^d", show_progress=False)
    assert [p.name for p in only] == ["003_d.weight.png"]  # numbered by position in the report


def test_esd_grid(tmp_path):
    sd = _sd()
    report = analyze(sd, backend="torch", min_eigs=8)
    img = assert_sane_png(plots.esd_grid(report, sd, tmp_path / "grid.png", ncols=2, show_progress=False))
    assert img.shape[1] > img.shape[0] * 0.8  # 2 x 2 panels
    given = {"a.weight": np.linspace(0.1, 5, 64)}  # precomputed spectra are used as given; missing ones explained
    assert_sane_png(plots.esd_grid(report, None, tmp_path / "given.png", eigenvalues=given))
    with pytest.raises(ValueError, match="max_panels"):
        plots.esd_grid(report, sd, tmp_path / "x.png", max_panels=3)
    with pytest.raises(ValueError, match="ncols"):
        plots.esd_grid(report, sd, tmp_path / "x.png", ncols=0)


def _tb_run(steps: int = 7):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 24))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tb = TempBalance(model, opt, interval=2, min_eigs=8, backend="torch", unit="layer")
    x, y = torch.randn(32, 16), torch.randn(32, 24)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        tb.step()
    return tb


def test_alpha_over_training_from_a_run(tmp_path):
    tb = _tb_run()
    assert len(tb.history) == 4
    assert_sane_png(plots.alpha_over_training(tb.history, tmp_path / "h.png"), min_h=400)
    assert_sane_png(plots.alpha_over_training(tb, tmp_path / "tb.png", x="refresh"))  # the object works too


def test_alpha_over_training_marks_failed_refreshes_and_many_units(tmp_path):
    units = [f"u{k}" for k in range(20)]
    hist = [dict(step=10 * s, epoch=0, seconds=0.01,
                 unit_values={u: 2 + 0.01 * s + 0.1 * k for k, u in enumerate(units)}, factors={u: 0.8 + 0.02 * k for k, u in enumerate(units)}, alpha_std=0.3,
                 failed=["u3"] if s == 2 else []) for s in range(5)]
    hist[2]["unit_values"]["u3"] = math.nan
    assert has_fail_colour(assert_sane_png(plots.alpha_over_training(hist, tmp_path / "f.png")))
    single = [dict(hist[0], failed=[])]
    assert not has_fail_colour(read_png(plots.alpha_over_training(single, tmp_path / "one.png")))


@pytest.mark.parametrize("bad, match", [([], "non-empty"), ([{"step": 0}], r"history\[0\].*missing"),
                                        ("nope", "non-empty")])
def test_alpha_over_training_rejects_non_history(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        plots.alpha_over_training(bad, tmp_path / "x.png")
    hist = [dict(step=0, epoch=0, unit_values={}, factors={}, alpha_std=0.0)]
    with pytest.raises(ValueError, match="x must be"):
        plots.alpha_over_training(hist, tmp_path / "x.png", x="time")


def test_no_pyplot_and_no_backend_switch(tmp_path):
    code = f"""
import sys, matplotlib
raw = lambda: dict.__getitem__(matplotlib.rcParams, "backend")  # reading rcParams["backend"] would resolve it
before = raw()
from tempbalance.analysis.report import LayerResult, Report
from tempbalance.diagnostics import alpha_bars
r = Report([LayerResult("a", "a", "linear", (4, 4), 4, 2.0, 1.0, 2, 1.0, 1.0, 1.0, 0.0, 0.1, "ok")])
alpha_bars(r, {str(tmp_path / "p.png")!r})
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
assert raw() == before, "the global backend changed"
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.png").exists()


def test_short_names():
    assert plots.short_names(["encoder.layer.0", "encoder.layer.1"]) == ["layer.0", "layer.1"]
    assert plots.short_names(["a.b.q", "a.b.k"]) == ["q", "k"]
    assert plots.short_names(["m.x.weight", "pooler.dense"]) == ["m.x.weight", "pooler.dense"]
    assert plots.short_names(["only"]) == ["only"]
