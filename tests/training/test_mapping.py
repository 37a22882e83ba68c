"""SPEC §3: unit means, TBSigmoid / TBLinearMap, the reference code's rank mapping and tb_lr_normalize against
closed forms worked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tempbalance.training.mapping import linear_range, lr_factors, normalize_factors, unit_means


def test_sigmoid_closed_form(backend):
    # alphas 2, 3, 4: mean 3, x = -1, 0, 1; tau = 10
    got = lr_factors([2.0, 3.0, 4.0], backend=backend)
    sig = 1 / (1 + math.exp(-10))
    expected = [10 ** (2 * ((1 - sig) - 0.5)), 1.0, 10 ** (1 * (sig - 0.5))]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(10 ** (-2 * (sig - 0.5)))  # s_lo = 2 below the mean: ~1/10
    assert got[2] == pytest.approx(10 ** 0.49995460, rel=1e-6)  # s_hi = 1 above the mean: ~3.16


def test_sigmoid_small_offsets_hand_checked(backend):
    # x = +-0.1, tau = 10: sigmoid(1) = 0.7310585786, sigmoid(-1) = 0.2689414214
    got = lr_factors([2.9, 3.1], tau=10, s_lo=0.5, s_hi=0.25, backend=backend)
    np.testing.assert_allclose(got, [10 ** (0.5 * (0.2689414214 - 0.5)), 10 ** (0.25 * (0.7310585786 - 0.5))],
                               rtol=1e-9)


def test_mean_alpha_unit_gets_one_and_order_is_kept(backend):
    vals = np.array([2.0, 3.5, 4.0, 4.5, 6.0, 3.0, 5.0])  # mean exactly 4; the third unit sits at the mean
    got = lr_factors(vals, backend=backend)
    assert got[2] == 1.0
    order = np.argsort(vals)
    assert np.all(np.diff(got[order]) > 0), "higher alpha -> larger factor"
    assert np.all(got[vals > 4] > 1) and np.all(got[vals < 4] < 1)
    lin = lr_factors(vals, mapping="linear", backend=backend)
    assert np.all(np.diff(lin[order]) > 0)


def test_linear_closed_form(backend):
    got = lr_factors([2.0, 3.0, 6.0], mapping="linear", backend=backend)
    np.testing.assert_allclose(got, [0.5, 0.5 + 1.0 * (1 / 4), 1.5], rtol=1e-12)
    got = lr_factors([1.0, 2.0], mapping="linear", s1=0.2, s2=2.2, backend=backend)
    np.testing.assert_allclose(got, [0.2, 2.2])


def test_linear_all_equal(backend):
    np.testing.assert_array_equal(lr_factors([3.0, 3.0, 3.0], mapping="linear", backend=backend), [1, 1, 1])
    np.testing.assert_array_equal(
        lr_factors([3.0, 3.0], mapping="linear", compat=True, backend=backend), [1.5, 1.5])


def test_rank_closed_form(backend):
    # ranks of (3, 1, 2, 5): 2, 0, 1, 3 of n = 4 -> s1 + (s2 - s1) k / 4 (the largest gets 1.25, not s2)
    np.testing.assert_allclose(lr_factors([3.0, 1.0, 2.0, 5.0], mapping="rank", backend=backend),
                               [1.0, 0.5, 0.75, 1.25], rtol=1e-15)
    s1, s2 = linear_range(0.6, 0.8)  # the FNO/GLUE scripts' lr_min_ratio / lr_slope form
    np.testing.assert_allclose(lr_factors([9.0, 4.0], mapping="rank", s1=s1, s2=s2, backend=backend),
                               [0.6 + 0.8 / 2, 0.6], rtol=1e-15)


def test_rank_ties_and_untuned(backend):
    # equal alphas are ranked in unit order (a stable sort); NaN units get 1 and are not counted in n
    got = lr_factors([2.0, np.nan, 2.0, 1.0, np.inf], mapping="rank", backend=backend)
    np.testing.assert_allclose(got, [0.5 + 1 / 3, 1.0, 0.5 + 2 / 3, 0.5, 1.0], rtol=1e-15)
    np.testing.assert_array_equal(lr_factors([7.0], mapping="rank", backend=backend), [0.5])


def test_normalize_closed_form(backend):
    np.testing.assert_allclose(normalize_factors([1.0, 2.0, 3.0], backend=backend), [0.5, 1.0, 1.5], rtol=1e-15)
    # a block factor standing for 3 matrices and an untuned matrix at 1: weighted mean (3 * 2 + 1) / 4 = 1.75
    np.testing.assert_allclose(normalize_factors([2.0, 1.0], [3, 1], backend=backend), [2 / 1.75, 1 / 1.75],
                               rtol=1e-15)
    np.testing.assert_array_equal(normalize_factors([2.0, 3.0], [0, 0], backend=backend), [2.0, 3.0])
    assert normalize_factors([], backend=backend).size == 0
    with pytest.raises(ValueError, match="weights has 1 values"):
        normalize_factors([1.0, 2.0], [1.0], backend=backend)
    with pytest.raises(ValueError, match="finite"):
        normalize_factors([1.0, np.nan], backend=backend)


def test_linear_range():
    assert linear_range(0.5, 1.0) == (0.5, 1.5)
    with pytest.raises(ValueError, match="lr_slope"):
        linear_range(0.5, float("inf"))


@pytest.mark.parametrize("mapping", ["sigmoid", "linear", "rank"])
def test_nan_units_get_one_and_are_left_out(backend, mapping):
    with_nan = lr_factors([2.0, np.nan, 4.0, np.inf], mapping=mapping, backend=backend)
    without = lr_factors([2.0, 4.0], mapping=mapping, backend=backend)
    assert with_nan[1] == 1.0 and with_nan[3] == 1.0
    np.testing.assert_allclose(with_nan[[0, 2]], without, rtol=1e-12)
    np.testing.assert_array_equal(lr_factors([np.nan, np.nan], mapping=mapping, backend=backend), [1.0, 1.0])
    assert lr_factors([], mapping=mapping, backend=backend).size == 0


@pytest.mark.parametrize(
    "kw, match",
    [(dict(mapping="exp"), "mapping"), (dict(tau=0.0), "tau"), (dict(s_lo=-1.0), "s_lo"),
     (dict(s1=float("nan")), "s1"), (dict(backend="fast"), "backend")],
)
def test_mapping_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        lr_factors([1.0, 2.0], **kw)


def test_unit_means(backend):
    vals = [1.0, 3.0, np.nan, 5.0, 7.0, 2.0]
    units = [0, 0, 1, 2, 2, -1]  # -1: belongs to no unit
    got = unit_means(vals, units, 4, backend=backend)
    np.testing.assert_array_equal(got[[0, 2]], [2.0, 6.0])
    assert math.isnan(got[1]) and math.isnan(got[3])
    with pytest.raises(ValueError, match="same length"):
        unit_means([1.0], [0, 1], 2, backend=backend)
    with pytest.raises(ValueError, match="n_units"):
        unit_means([1.0], [0], -1, backend=backend)


@pytest.mark.parametrize("mapping", ["sigmoid", "linear", "rank"])
def test_native_matches_reference_on_random_units(rng, mapping):
    from tempbalance import _native

    if _native.core is None:
        pytest.skip("native core not built")
    for n in (1, 2, 7, 64):
        v = np.round(rng.uniform(2.0, 6.0, n), 1)  # rounded: ties happen
        v[rng.random(n) < 0.2] = np.nan
        np.testing.assert_allclose(lr_factors(v, mapping=mapping, backend="native"),
                                   lr_factors(v, mapping=mapping, backend="torch"), rtol=1e-14)
        w = rng.integers(0, 5, n).astype(float)
        f = lr_factors(v, mapping=mapping, backend="torch")
        np.testing.assert_allclose(normalize_factors(f, w, backend="native"), normalize_factors(f, w, backend="torch"),
                                   rtol=1e-14)
