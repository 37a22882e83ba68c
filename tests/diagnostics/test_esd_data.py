"""The numbers behind the ESD plots: log bins, the density histogram, the fitted tail density and the recomputed
eigenvalues - against closed forms, scipy and numpy float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from tempbalance import alpha_hill, analyze
from tempbalance.diagnostics.esd_data import (auto_bins, esd_density, layer_eigenvalues, log_bins,
                                              positive_finite, power_law_tail_density, select_rows, tail_share)


def pareto_with_bulk(rng, alpha: float, xmin: float, n_tail: int, n_bulk: int) -> np.ndarray:
    """``n_tail`` exact Pareto(alpha) draws above ``xmin`` (inverse CDF) and ``n_bulk`` uniform values below it."""
    u = rng.random(n_tail)
    tail = xmin * (1.0 - u) ** (-1.0 / (alpha - 1.0))  # P(L > l) = (l / xmin)^(1 - alpha)
    bulk = rng.uniform(0.05 * xmin, 0.999 * xmin, n_bulk)
    return np.sort(np.concatenate([bulk, tail]))


@pytest.mark.parametrize("alpha, xmin, frac", [(2.0, 1.0, 1.0), (3.5, 0.02, 0.5), (1.3, 40.0, 0.25)])
def test_tail_density_is_the_pareto_pdf_scaled_by_the_tail_fraction(alpha, xmin, frac):
    lam = np.geomspace(xmin, xmin * 1e4, 500)
    got = power_law_tail_density(lam, alpha=alpha, xmin=xmin, tail_fraction=frac)
    # scipy's Pareto with shape b = alpha - 1 and scale xmin is the density (alpha-1)/xmin (lam/xmin)^-alpha
    np.testing.assert_allclose(got, frac * stats.pareto.pdf(lam, b=alpha - 1.0, scale=xmin), rtol=1e-12)
    mass, _ = integrate.quad(lambda x: power_law_tail_density(x, alpha=alpha, xmin=xmin, tail_fraction=frac),
                             xmin, np.inf, limit=200)
    assert mass == pytest.approx(frac, rel=1e-6)  # normalised over the tail's share of the ESD


def test_tail_density_is_nan_below_xmin():
    got = power_law_tail_density([0.5, 0.999, 1.0, 2.0], alpha=3.0, xmin=1.0)
    assert np.isnan(got[:2]).all()
    np.testing.assert_allclose(got[2:], [2.0, 2.0 * 2.0 ** -3])


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=1.0, xmin=1.0), "alpha must be > 1"),
    (dict(alpha=float("nan"), xmin=1.0), "alpha must be a finite"),
    (dict(alpha=2.0, xmin=0.0), "xmin must be > 0"),
    (dict(alpha=2.0, xmin=1.0, tail_fraction=1.5), "tail_fraction"),
    (dict(alpha=2.0, xmin=1.0, tail_fraction=0.0), "tail_fraction"),
])
def test_tail_density_rejects_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        power_law_tail_density([1.0], **kw)


def test_fitted_tail_overlays_the_histogram_of_a_pareto_sample(rng):
    """A sample with a Pareto(2.5) upper half: the Hill fit at the median, drawn with the tail fraction, predicts the
    mass of every well-populated tail bin of the density histogram (binomial tolerance)."""
    true_alpha, xmin_true, n = 2.5, 1.0, 20000
    lam = pareto_with_bulk(rng, true_alpha, xmin_true, n // 2, n // 2)
    alpha = alpha_hill(lam)  # xmin at the median: the first Pareto draw
    xmin = float(lam[n // 2])
    assert alpha == pytest.approx(true_alpha, rel=0.05)
    frac = (n - n // 2) / n
    edges, density = esd_density(lam, 60)
    mass = density * np.diff(edges)
    assert mass.sum() == pytest.approx(1.0)
    lo, hi = edges[:-1], edges[1:]
    tail_bins = lo >= xmin
    # the curve's mass in [lo, hi): closed-form integral of the fitted density
    expected = frac * ((lo / xmin) ** (1 - alpha) - (hi / xmin) ** (1 - alpha))
    check = tail_bins & (expected * n > 100)
    assert check.sum() >= 10
    sigma = np.sqrt(expected[check] * (1 - expected[check]) / n)
    assert np.all(np.abs(mass[check] - expected[check]) < 5 * sigma + 0.03 * expected[check])
    # and the curve at a bin's geometric centre is within the bin's mean density
    centre = np.sqrt(lo * hi)[check]
    curve = power_law_tail_density(centre, alpha=alpha, xmin=xmin, tail_fraction=frac)
    np.testing.assert_allclose(curve, density[check], rtol=0.25)


def test_esd_density_normalises_over_the_positive_eigenvalues():
    lam = np.array([0.0, -1e-9, np.nan, 1e-3, 1e-2, 1e-2, 0.5, 3.0, 3.0, 100.0])
    edges, density = esd_density(lam, 7)
    assert len(edges) == 8 and edges[0] == pytest.approx(1e-3) and edges[-1] == pytest.approx(100.0)
    ratios = edges[1:] / edges[:-1]
    np.testing.assert_allclose(ratios, ratios[0])  # log-spaced
    counts = density * np.diff(edges) * 7  # 7 positive finite values
    np.testing.assert_allclose(counts.sum(), 7)
    np.testing.assert_allclose(counts, np.histogram(positive_finite(lam), bins=edges)[0])


def test_log_bins_edge_cases():
    e = log_bins([2.0, 2.0, 2.0], 4)
    assert e[0] < 2.0 < e[-1] and e[-1] / e[0] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="no positive finite"):
        log_bins([0.0, -1.0])
    with pytest.raises(ValueError, match="n_bins"):
        log_bins([1.0, 2.0], 0)
    assert auto_bins(1) == 10 and auto_bins(384) == 39 and auto_bins(10**6) == 80


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Conv2d(8, 12, 3), nn.Linear(64, 30))


def test_layer_eigenvalues_match_numpy_with_the_report_settings():
    model = _model()
    report = analyze(model, dtype=torch.float64, backend="torch", conv_scale=0.5, min_eigs=4)
    eigs = layer_eigenvalues(report, model, show_progress=False)
    assert list(eigs) == [r.name for r in report.rows]
    assert list(eigs) == ["0", "2", "3"]  # a module's matrices are named by their module
    for name, mod in (("0", model[0]), ("3", model[3])):
        sv = np.linalg.svd(mod.weight.detach().double().numpy(), compute_uv=False)
        np.testing.assert_allclose(eigs[name], np.sort(sv ** 2), rtol=1e-10)
    conv = "2"
    w = model[2].weight.detach().double().numpy()  # (out, in, 3, 3): one (out, in) slice per kernel position
    ref = np.sort(np.concatenate([np.linalg.svd(w[:, :, i, j], compute_uv=False) ** 2
                                  for i in range(3) for j in range(3)])) * 0.5
    np.testing.assert_allclose(eigs[conv], ref, rtol=1e-10)
    assert eigs[conv].dtype == np.float64


def test_layer_eigenvalues_from_a_state_dict_and_failures_as_text():
    model = _model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    report = analyze(sd, backend="torch", min_eigs=4)
    sd["0.weight"][0, 0] = float("nan")
    del sd["3.weight"]
    eigs = layer_eigenvalues(report, sd, layers="^0|^3", show_progress=False)
    assert isinstance(eigs["0.weight"], str) and "non-finite" in eigs["0.weight"] and "0.weight" in eigs["0.weight"]
    assert eigs["3.weight"] == "layer '3.weight' is not in the given weights"
    with pytest.raises(TypeError, match="source must be"):
        layer_eigenvalues(report, 42)


def test_select_rows():
    report = analyze(_model().state_dict(), backend="torch", min_eigs=4)
    assert [r.name for r in select_rows(report, r"^(0|3)\.")] == ["0.weight", "3.weight"]
    assert [r.name for r in select_rows(report, ["3.weight"])] == ["3.weight"]
    assert len(select_rows(report)) == len(report)
    with pytest.raises(ValueError, match="no layer of the report matches"):
        select_rows(report, "nothing")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        select_rows(report, "(")
    with pytest.raises(KeyError, match="no layer named"):
        select_rows(report, ["0.wieght"])


def test_tail_share():
    report = analyze(_model().state_dict(), backend="torch", min_eigs=4)
    row = report["3.weight"]  # 30 eigenvalues, median rule: the top 15 are the tail
    assert row.n_tail == 15 and tail_share(row.n_tail, 30) == 0.5
    assert tail_share(40, 30) == 1.0
    assert math.isnan(tail_share(row.n_tail, 0)) and math.isnan(tail_share(0, 30))
