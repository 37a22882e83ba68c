"""The torch/numpy reference core itself: input checks, pooling, top-k, the parts of the Hill scan."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tempbalance import reference


def test_gram_eigvalsh_pools_and_sorts(rng):
    a = torch.from_numpy(rng.standard_normal((3, 7, 4)))
    got = reference.gram_eigvalsh([a])[0].numpy()
    ref = np.sort(np.concatenate([np.linalg.svd(a[k].numpy(), compute_uv=False) ** 2 for k in range(3)]))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert got.size == 3 * 4


@pytest.mark.parametrize("dtype, real", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                         (torch.complex64, torch.float32), (torch.complex128, torch.float64)])
def test_gram_eigvalsh_output_dtype(dtype, real):
    out = reference.gram_eigvalsh([torch.ones(1, 3, 5, dtype=dtype)])[0]
    assert out.dtype == real
    # rank one all-ones 3x5: one eigenvalue 15, the rest (round-off) clamped to >= 0
    assert out[-1].item() == pytest.approx(15.0, rel=1e-6)
    assert torch.all(out >= 0)


def test_gram_eigvalsh_top(rng):
    a = torch.from_numpy(rng.standard_normal((1, 20, 9)))
    full = reference.gram_eigvalsh([a])[0]
    assert torch.equal(reference.gram_eigvalsh([a], [4])[0], full[-4:])


@pytest.mark.parametrize(
    "mats, top, match",
    [
        ([torch.ones(3, 3)], None, r"mats\[0\]"),
        ([torch.ones(1, 3, 3), torch.ones(1, 3, 3, dtype=torch.int32)], None, r"mats\[1\].*dtype"),
        ([torch.ones(1, 0, 3)], None, r"mats\[0\].*empty"),
        ([torch.ones(2, 3, 3)], [2], r"top\[0\]"),
        ([torch.ones(1, 3, 3)], [1, 2], "top has 2"),
    ],
)
def test_gram_eigvalsh_rejects_bad_inputs(mats, top, match):
    with pytest.raises(ValueError, match=match):
        reference.gram_eigvalsh(mats, top)


def test_ks_distances_blocked_equals_direct(rng, monkeypatch):
    lam = np.sort(rng.pareto(2.0, 300) + 1.0)
    cand = np.arange(0, 299, 7)
    alphas = 1.0 + rng.uniform(0.5, 3.0, cand.size)
    whole = reference._ks_distances(lam, cand, alphas)
    monkeypatch.setattr(reference, "_KS_BLOCK", 500)  # forces blocks of one or two candidates
    blocked = reference._ks_distances(lam, cand, alphas)
    direct = [reference._ks_distance(lam[i:], a) for i, a in zip(cand, alphas)]
    np.testing.assert_array_equal(whole, direct)  # the same expression, term for term
    np.testing.assert_array_equal(whole, blocked)


def test_histogram_peak_is_left_edge_of_fullest_bin(rng):
    lam = np.sort(np.concatenate([10 ** rng.normal(0, 0.3, 500), 10 ** rng.uniform(-3, 3, 100)]))
    counts, edges = np.histogram(np.log10(lam), bins=100)
    assert reference._histogram_peak(lam) == pytest.approx(10 ** edges[np.argmax(counts)], rel=1e-12)
    assert reference._histogram_peak(np.r_[0.0, 0.0, lam]) == reference._histogram_peak(lam)  # zeros ignored
    assert reference._histogram_peak(np.zeros(5)) == 0.0
    assert reference._histogram_peak(np.full(5, 2.0)) == 2.0


def test_top_only_spectrum(rng):
    lam = np.sort(rng.pareto(2.0, 200) + 1.0)
    full = reference.hill_metrics_one(lam, min_eigs=0)
    top = reference.hill_metrics_one(lam[100:], min_eigs=0, n_total=200)  # exactly the tail for xmin_pos=2
    col = {c: k for k, c in enumerate(reference.HILL_COLUMNS)}
    assert top[col["alpha"]] == pytest.approx(full[col["alpha"]], rel=1e-12)
    assert top[col["n_eigs"]] == 200
    short = reference.hill_metrics_one(lam[150:], min_eigs=0, n_total=200)
    assert short[col["status"]] == reference.STATUS_TOP_TOO_SHORT and math.isnan(short[col["alpha"]])
    fit = reference.hill_metrics_one(lam[100:], min_eigs=0, n_total=200, xmin_rule="fit")
    assert fit[col["status"]] == reference.STATUS_TOP_TOO_SHORT


def test_no_peak_candidate_falls_back_to_median():
    # The fullest bin is the top one (two equal eigenvalues): the window's only candidate has a flat tail, so no
    # candidate fits and the median index is used.
    lam = np.r_[np.linspace(1e-4, 2e-4, 3), 1e4, 1e4]
    row = reference.hill_metrics_one(lam, min_eigs=0, xmin_rule="peak")
    median = reference.hill_metrics_one(lam, min_eigs=0)
    np.testing.assert_array_equal(row, median)


def test_hill_metrics_table_shape():
    out = reference.hill_metrics([np.linspace(1, 2, 60), np.array([])], min_eigs=10)
    assert out.shape == (2, 10)
    assert out[0, -1] == reference.STATUS_OK and out[1, -1] == reference.STATUS_EMPTY
    with pytest.raises(ValueError, match="xmin_rule"):
        reference.hill_metrics([np.ones(3)], xmin_rule="max")
