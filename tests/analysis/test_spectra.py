"""SPEC §1: slicing and esd() against numpy float64 squared singular values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tempbalance.analysis import spectra
from tempbalance.analysis.spectra import esd, guess_kind, slices


def svd_eigs(mats) -> np.ndarray:
    """Independent oracle: pooled squared singular values in float64/complex128, ascending."""
    out = [np.linalg.svd(np.asarray(m, dtype=np.complex128 if np.iscomplexobj(m) else np.float64),
                         compute_uv=False) ** 2 for m in mats]
    return np.sort(np.concatenate(out))


def _matrix(rng, shape, kind):
    m, n = shape
    if kind == "gauss":
        return rng.standard_normal((m, n))
    if kind == "rank2":  # rank-deficient: exact zeros in the spectrum
        return rng.standard_normal((m, 2)) @ rng.standard_normal((2, n))
    if kind == "decades":  # singular values spread over 6 decades
        u, _ = np.linalg.qr(rng.standard_normal((m, m)))
        v, _ = np.linalg.qr(rng.standard_normal((n, n)))
        s = np.logspace(0, -3, min(m, n))
        return (u[:, : len(s)] * s) @ v[:, : len(s)].T
    if kind == "complex":
        return rng.standard_normal((m, n)) + 1j * rng.standard_normal((m, n))
    raise AssertionError(kind)


SHAPES = [(1, 1), (1, 17), (17, 1), (5, 7), (7, 5), (40, 40), (30, 120), (120, 30)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["gauss", "rank2", "decades", "complex"])
def test_esd_matches_numpy_svd(backend, rng, dtype, shape, kind):
    a = _matrix(rng, shape, kind)
    ref = svd_eigs([a])
    got = esd(torch.from_numpy(a), dtype=dtype, backend=backend)
    assert got.dtype == dtype
    assert got.shape == (min(shape),)
    assert torch.all(got[1:] >= got[:-1]), "ascending"
    assert torch.all(got >= 0), "round-off negatives are clamped"
    eps = torch.finfo(dtype).eps
    # Backward-stable Gram + symmetric eigensolver: absolute error of order max(m, n) * eps * lambda_max.
    tol = 4 * max(shape) * eps * ref[-1]
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=0, atol=tol)


def test_esd_pools_conv_slices(backend, rng):
    w = rng.standard_normal((16, 8, 3, 2))
    got = esd(torch.from_numpy(w), dtype=torch.float64, backend=backend).numpy()
    ref = svd_eigs([w[:, :, i, j] for i in range(3) for j in range(2)])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10 * ref[-1])


def test_esd_conv1d_sliced_like_conv2d(backend, rng):
    w = rng.standard_normal((12, 6, 5))
    got = esd(torch.from_numpy(w), dtype=torch.float64, backend=backend).numpy()
    np.testing.assert_allclose(got, svd_eigs([w[:, :, k] for k in range(5)]), rtol=1e-10)
    assert got.size == 5 * 6


def test_esd_conv_flatten_and_scale(rng):
    w = torch.from_numpy(rng.standard_normal((10, 4, 3, 3)))
    flat = esd(w, dtype=torch.float64, conv_mode="flatten", backend="torch").numpy()
    np.testing.assert_allclose(flat, svd_eigs([w.numpy().reshape(10, -1)]), rtol=1e-10)
    half = esd(w, dtype=torch.float64, conv_scale=0.5, backend="torch").numpy()
    full = esd(w, dtype=torch.float64, backend="torch").numpy()
    np.testing.assert_allclose(half, 0.5 * full, rtol=1e-12)


def test_esd_spectral_weight_one_slice_per_mode(backend, rng):
    w = rng.standard_normal((6, 9, 4, 3)) + 1j * rng.standard_normal((6, 9, 4, 3))
    t = torch.from_numpy(w).to(torch.complex64)
    assert guess_kind(t) == "spectral"
    got = esd(t, backend=backend)
    assert got.dtype == torch.float32
    ref = svd_eigs([w[:, :, i, j] for i in range(4) for j in range(3)])
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=0, atol=40 * 9 * 1.2e-7 * ref[-1])
    got64 = esd(t.to(torch.complex128), dtype=torch.float64, backend=backend)
    assert got64.dtype == torch.float64


def test_slices_layouts(rng):
    w = torch.from_numpy(rng.standard_normal((5, 3, 2, 4)))
    s = slices(w, "conv")
    assert s.shape == (8, 5, 3)
    assert torch.equal(s[1], w[:, :, 0, 1])  # kernel positions in row-major order
    assert slices(w, "conv", conv_mode="flatten").shape == (1, 5, 24)
    hf = torch.from_numpy(rng.standard_normal((7, 11)))  # HF Conv1D: (in, out)
    assert torch.equal(slices(hf, "conv1d_hf")[0], hf.t())
    sp = torch.randn(4, 6, 3, 2, dtype=torch.complex64)
    assert torch.equal(slices(sp, "spectral")[5], sp[:, :, 2, 1])


def test_guess_kind_rules():
    assert guess_kind(torch.zeros(3, 4)) == "linear"
    assert guess_kind(torch.zeros(3, 4, dtype=torch.complex64)) == "linear"
    assert guess_kind(torch.zeros(3, 4, 5)) == "conv"
    assert guess_kind(torch.zeros(3, 4, 1, 1, 1)) == "conv"
    assert guess_kind(torch.zeros(3, 4, 5, dtype=torch.complex64)) == "spectral"
    with pytest.raises(ValueError, match="kind"):
        guess_kind(torch.zeros(2, 2, 2, 2, 2, 2))


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_is_upcast(rng, half):
    w = torch.from_numpy(rng.standard_normal((20, 30))).to(half)
    got = esd(w, backend="torch")
    assert got.dtype == torch.float32
    ref = svd_eigs([w.double().numpy()])  # the half weight's own spectrum
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=0, atol=4 * 30 * 1.2e-7 * ref[-1])
    assert esd(w, dtype=torch.float64, backend="torch").dtype == torch.float64


@pytest.mark.parametrize(
    "weight, match",
    [
        (torch.tensor(1.0), "at least 2-d"),
        (torch.ones(5), "at least 2-d"),
        (torch.ones(0, 4), "empty"),
        (torch.ones(3, 4, dtype=torch.int64), "floating-point"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "non-finite"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "non-finite"),
    ],
)
def test_bad_weights_raise_naming_weight(weight, match):
    with pytest.raises(ValueError, match=match) as e:
        esd(weight, backend="torch")
    assert "weight" in str(e.value)


def test_bad_options_raise():
    w = torch.ones(3, 3)
    with pytest.raises(ValueError, match="dtype"):
        esd(w, dtype=torch.float16)
    with pytest.raises(ValueError, match="kind"):
        esd(w, kind="dense")
    with pytest.raises(ValueError, match="conv_mode"):
        esd(torch.ones(2, 2, 3), conv_mode="stack")
    with pytest.raises(ValueError, match="backend"):
        esd(w, backend="cuda-ish")
    with pytest.raises(ValueError, match="2-d"):
        esd(torch.ones(2, 2, 3), kind="linear")


def test_zero_matrix_gives_zeros(backend):
    got = esd(torch.zeros(6, 9), backend=backend)
    assert torch.equal(got, torch.zeros(6))


def test_weight_is_not_modified(rng):
    p = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((8, 5))).float())
    before = p.detach().clone()
    esd(p, backend="torch", conv_scale=0.5)
    esd(p, kind="linear", dtype=torch.float64, backend="torch")
    assert torch.equal(p.detach(), before) and p.requires_grad


def test_gram_eigvals_top(backend, rng):
    a = torch.from_numpy(rng.standard_normal((1, 30, 50)))
    full = spectra.gram_eigvals([a], backend=backend)[0]
    top = spectra.gram_eigvals([a], backend=backend, top=[7])[0]
    np.testing.assert_allclose(top.numpy(), full[-7:].numpy(), rtol=1e-9)


def test_wide_grams_take_the_two_stage_solver_and_keep_their_order(monkeypatch, rng):
    from tempbalance import _backend

    core = _backend.resolve("native")
    if core is None:
        pytest.skip("native core not built")
    calls = []

    class Spy:
        def gram_eigvalsh(self, mats, top, threads, solver="evd"):
            calls.append((solver, [m.shape[2] for m in mats]))
            return core.gram_eigvalsh(mats, top, threads, solver)

    monkeypatch.setattr(spectra, "TWO_STAGE_MIN_DIM", 20)
    monkeypatch.setattr(_backend, "resolve", lambda backend: Spy())
    stacks = [torch.from_numpy(rng.standard_normal((1, 40, n))) for n in (30, 10, 25, 19)]
    got = spectra.gram_eigvals(stacks, backend="native", top=[0, 0, 5, 0])
    assert calls == [("evd", [10, 19]), ("2stage", [30, 25])]
    for s, g, t in zip(stacks, got, [0, 0, 5, 0]):
        ref = np.sort(np.linalg.svd(s[0].numpy(), compute_uv=False) ** 2)
        np.testing.assert_allclose(g.numpy(), ref[-t:] if t else ref, rtol=1e-9, atol=1e-12)
