"""SPEC §3: unit means and TBSigmoid / TBLinearMap against closed forms worked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tempbalance.mapping import lr_factors, unit_means


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


@pytest.mark.parametrize("mapping", ["sigmoid", "linear"])
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
