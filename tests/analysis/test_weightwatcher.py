"""With ``xmin_rule="fit"`` our PL_Alpha_Hill is WeightWatcher's (0.7.x) in float64, on the real MiniLM-L6.

WeightWatcher is an optional test dependency (``pip install ".[ww]"``); without it these tests skip. Measured here
(weightwatcher 0.7.7, 37 matrices): the fit on the same eigenvalues agrees to 4.6e-15 relative, WeightWatcher's
whole ``analyze`` (its own SVD, ``svd_method="accurate"``) to 2.6e-14.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tempbalance import analyze, esd

ww = pytest.importorskip("weightwatcher")
ww_powerlaw = pytest.importorskip("weightwatcher.WW_powerlaw")

RTOL = 2e-13


@pytest.fixture(scope="module")
def minilm64(minilm):
    return copy.deepcopy(minilm).double().eval()


@pytest.fixture(scope="module")
def ours(minilm64):
    report = analyze(minilm64, xmin_rule="fit", dtype=torch.float64, min_eigs=0)
    assert len(report.rows) == 37 and all(r.ok for r in report.rows)
    return report


def test_fit_on_the_same_eigenvalues(minilm64, ours):
    """WeightWatcher's power-law fit (every candidate xmin, smallest KS distance) on our float64 spectra."""
    modules = dict(minilm64.named_modules())
    for r in ours.rows:
        eigs = esd(modules[r.name].weight, dtype=torch.float64).numpy()
        fit = ww_powerlaw.pl_fit(data=eigs)
        assert fit.alpha == pytest.approx(r.alpha, rel=RTOL), r.name
        assert fit.xmin == pytest.approx(r.xmin, rel=RTOL), r.name
        assert fit.D == pytest.approx(r.ks_distance, rel=1e-10, abs=1e-15), r.name


def test_weightwatcher_analyze_end_to_end(minilm64, ours):
    """WeightWatcher's own pass (its SVD in float64) gives the same alpha and xmin for every matrix we analyse."""
    df = ww.WeightWatcher(model=minilm64).analyze(svd_method="accurate", min_evals=0)
    theirs = {row["longname"]: row for _, row in df.iterrows()}
    mine = {r.name: r for r in ours.rows}
    assert set(mine) <= set(theirs)  # WeightWatcher also lists the embeddings, which we analyse only on request
    alpha = np.array([[theirs[n]["alpha"], mine[n].alpha] for n in mine])
    xmin = np.array([[theirs[n]["xmin"], mine[n].xmin] for n in mine])
    np.testing.assert_allclose(alpha[:, 0], alpha[:, 1], rtol=RTOL)
    np.testing.assert_allclose(xmin[:, 0], xmin[:, 1], rtol=RTOL)
