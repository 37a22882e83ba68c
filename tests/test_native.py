"""The compiled core itself: solvers, threads, top-k and its input errors, against numpy float64."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tempbalance import _native

core = _native.core


def test_native_core_is_loaded_in_ci():
    # CI installs the package as users do; a silently missing extension would leave only the torch path tested.
    if not os.environ.get("CI"):
        pytest.skip("only enforced in CI")
    assert core is not None, _native.unavailable_reason


needs_core = pytest.mark.skipif(core is None, reason=f"native core unavailable: {_native.unavailable_reason}")


def _reference(a: np.ndarray) -> np.ndarray:
    stack = a.reshape((-1,) + a.shape[-2:]).astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    return np.sort(np.concatenate([np.linalg.svd(s, compute_uv=False) ** 2 for s in stack]))


@needs_core
@pytest.mark.parametrize("solver", ["evd", "2stage"])
@pytest.mark.parametrize("threads", [1, 2])
def test_many_shapes_in_one_call_match_numpy(solver, threads):
    rng = np.random.default_rng(0)
    mats = [
        rng.standard_normal((40, 70)).astype(np.float32),
        rng.standard_normal((90, 30)),
        (rng.standard_normal((3, 20, 25)) + 1j * rng.standard_normal((3, 20, 25))).astype(np.complex64),
        rng.standard_normal((33, 33)) + 1j * rng.standard_normal((33, 33)),
        rng.standard_normal((1, 50)).astype(np.float32),
    ]
    out = core.gram_eigvalsh(mats, [], threads, solver)
    for a, got in zip(mats, out):
        ref = _reference(a)
        single = a.dtype in (np.float32, np.complex64)
        assert got.dtype == (np.float32 if single else np.float64)
        assert np.all(np.diff(got) >= 0)
        tol = (2e-5 if single else 1e-12) * max(a.shape[-2:])
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol * ref[-1])


@needs_core
def test_top_k_equals_the_top_of_the_full_spectrum():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((60, 80))
    full, top = core.gram_eigvalsh([a, a], [0, 25], 2)
    assert top.shape == (25,)
    np.testing.assert_allclose(top, full[-25:], rtol=1e-10)


@needs_core
def test_non_finite_matrix_gives_nan_spectrum_and_others_survive():
    good = np.eye(8)
    bad = np.eye(8)
    bad[2, 3] = np.nan
    out_good, out_bad = core.gram_eigvalsh([good, bad], [], 2)
    np.testing.assert_allclose(out_good, np.ones(8))
    assert np.isnan(out_bad).all()


@needs_core
@pytest.mark.parametrize(
    "mats, top, message",
    [
        ([np.zeros((0, 4))], [], "matrix 0: empty"),
        ([np.ones(4)], [], "matrix 0: expected 2-d"),
        ([np.ones((3, 3), dtype=np.int64)], [], "matrix 0: dtype int64"),
        ([np.ones((3, 3)), np.ones((3, 3))[:, ::2]], [], "matrix 1: must be C-contiguous"),
        ([np.ones((4, 5))], [5], r"matrix 0: top=5 must be in \[0, 4\]"),
        ([np.ones((2, 4, 5))], [2], "matrix 0: top > 0 needs a single matrix"),
    ],
)
def test_bad_inputs_name_the_matrix(mats, top, message):
    with pytest.raises(ValueError, match=message):
        core.gram_eigvalsh(mats, top, 1)


@needs_core
def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="solver"):
        core.gram_eigvalsh([np.eye(3)], [], 1, "qr")
    with pytest.raises(ValueError, match="xmin_pos"):
        core.hill_metrics([np.arange(1.0, 10.0)], xmin_pos=1.0)
    with pytest.raises(ValueError, match="mapping"):
        core.lr_factors(np.ones(3), "cubic")
