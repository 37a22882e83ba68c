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


@needs_core
def test_hill_metrics_takes_per_spectrum_tolerances_in_one_call(rng):
    # One call with arrays == one call per spectrum with scalars (and == the reference row by row).
    from tempbalance import reference

    spectra = [np.sort(rng.pareto(2.0, size=n) + 1e-3) for n in (80, 120, 150, 200)]
    spectra.append(np.concatenate([np.zeros(30), np.sort(rng.random(90) + 1.0)]))
    tol = np.array([1e-5, 0.5, 1e-5, 2.0, 1e-5])
    rtol = np.array([0.0, 1e-6, 0.2, 0.0, 1e-3])
    total = np.array([0, 0, 300, 0, 0])
    got = core.hill_metrics(spectra, filter_zeros=True, zero_tol=tol, zero_rtol=rtol, min_eigs=10, n_total=total)
    for k, lam in enumerate(spectra):
        one = core.hill_metrics([lam], filter_zeros=True, zero_tol=tol[k], zero_rtol=rtol[k], min_eigs=10,
                                n_total=[int(total[k])])
        np.testing.assert_array_equal(got[k], one[0])
        ref = reference.hill_metrics_one(lam, filter_zeros=True, zero_tol=tol[k], zero_rtol=rtol[k], min_eigs=10,
                                         n_total=int(total[k]))
        np.testing.assert_allclose(got[k], ref, rtol=1e-10, equal_nan=True)
    # The per-spectrum values matter: the same call with the first spectrum's values everywhere differs.
    assert not np.array_equal(got, core.hill_metrics(spectra, filter_zeros=True, zero_tol=tol[0],
                                                     zero_rtol=rtol[0], min_eigs=10), equal_nan=True)
    # A scalar is still one value for all; an empty n_total means "all complete".
    np.testing.assert_array_equal(core.hill_metrics(spectra, zero_rtol=0.01, n_total=[]),
                                  core.hill_metrics(spectra, zero_rtol=[0.01] * 5, n_total=0))


@needs_core
@pytest.mark.parametrize("arg", ["zero_tol", "zero_rtol", "n_total"])
def test_hill_metrics_per_spectrum_length_errors_name_the_argument(arg):
    with pytest.raises(ValueError, match=arg):
        core.hill_metrics([np.arange(1.0, 10.0)] * 3, **{arg: [1, 2]})


# --- failure paths that inputs cannot provoke: `_core._arm_fault` makes the real call fail once ---------------
@pytest.fixture
def fault():
    if core is None or not hasattr(core, "_arm_fault"):
        pytest.skip("native core without fault injection (rebuild the package)")
    yield core._arm_fault
    core._arm_fault("none")


def test_a_failed_slice_makes_the_pooled_spectrum_nan(fault):
    # A conv-like stack of 4 slices whose 3rd solve does not converge: the pool is all NaN (a layer failure),
    # never a sort over NaN (undefined behaviour) or a spectrum with a hole; the other matrices are unaffected.
    rng = np.random.default_rng(4)
    stack, plain = rng.standard_normal((4, 30, 40)), rng.standard_normal((20, 25))
    fault("solver_info", 2)
    got_stack, got_plain = core.gram_eigvalsh([stack, plain], [], 1)
    assert np.isnan(got_stack).all() and got_stack.shape == (120,)
    np.testing.assert_allclose(got_plain, _reference(plain), rtol=1e-10)
    (again,) = core.gram_eigvalsh([stack], [], 1)  # the fault fired once
    np.testing.assert_allclose(again, _reference(stack), rtol=1e-10)


def test_a_failed_slice_is_reported_as_a_failed_layer(fault):
    import torch

    from tempbalance import analyze

    torch.manual_seed(0)
    conv, lin = torch.nn.Conv2d(60, 80, 2), torch.nn.Linear(60, 80)  # the conv is solved first (more flops)
    fault("solver_info", 1)
    report = analyze({"conv": conv.weight, "lin": lin.weight}, min_eigs=10, backend="native", num_threads=1)
    assert [r.status for r in report.rows] == ["non_finite", "ok"]
    assert "'conv'" in report.rows[0].reason and "did not converge" in report.rows[0].reason


def test_syevr_short_count_gives_nan_not_garbage(fault):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((60, 80))
    fault("evr_short_count", 0)
    (top,) = core.gram_eigvalsh([a], [20], 1)
    assert top.shape == (20,) and np.isnan(top).all()


def _run_isolated(code: str) -> None:
    """Runs ``code`` (which prints "ok") in a fresh interpreter with the core loaded: a crash or an abort of the
    core there fails the test instead of killing the test run."""
    import subprocess
    import sys

    prelude = "import numpy as np\nfrom tempbalance import _native\ncore = _native.core\n"
    done = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (
        f"exit status {done.returncode}: {done.stderr[-2000:]}")


@pytest.mark.parametrize("skip", [0, 1])
def test_a_worker_thread_that_cannot_start_leaves_the_work_to_the_others(fault, skip):
    # The OS refusing a thread used to destroy joinable std::threads (std::terminate, the process dies).
    _run_isolated(f"""
rng = np.random.default_rng(6)
mats = [rng.standard_normal((30 + k, 40)) for k in range(6)]
want = core.gram_eigvalsh(mats, [], 1)
core._arm_fault("thread_start", {skip})
got = core.gram_eigvalsh(mats, [], 4)
assert all(np.allclose(g, w, rtol=1e-12) for g, w in zip(got, want))
spectra = [np.sort(rng.pareto(2.0, 300) + 1) for _ in range(8)]
one = core.hill_metrics(spectra, xmin_rule="fit", min_eigs=0, num_threads=1)
core._arm_fault("thread_start", 0)
assert np.array_equal(core.hill_metrics(spectra, xmin_rule="fit", min_eigs=0, num_threads=3), one)
print("ok")
""")


@pytest.mark.parametrize("skip", [0, 2, 5])
def test_a_task_that_throws_is_an_error_not_an_abort(fault, skip):
    # A task throwing on the caller's share while workers were joinable, or on a worker (an exception leaving a
    # std::thread), used to std::terminate the process; now every worker is joined and the error is raised.
    _run_isolated(f"""
rng = np.random.default_rng(7)
mats = [rng.standard_normal((30 + k, 40)) for k in range(6)]
spectra = [np.sort(rng.pareto(2.0, 300) + 1) for _ in range(6)]
want = core.gram_eigvalsh(mats, [], 1)
want_rows = core.hill_metrics(spectra, xmin_rule="fit", min_eigs=0, num_threads=1)
for call in (lambda: core.gram_eigvalsh(mats, [], 3),
             lambda: core.hill_metrics(spectra, xmin_rule="fit", min_eigs=0, num_threads=3)):
    core._arm_fault("task_throw", {skip})
    try:
        call()
    except RuntimeError as e:
        assert "a task threw" in str(e), e
    else:
        raise AssertionError("no error raised")
got = core.gram_eigvalsh(mats, [], 3)  # the fault fired once: the pool works again
assert all(np.allclose(g, w, rtol=1e-12) for g, w in zip(got, want))
assert np.array_equal(core.hill_metrics(spectra, xmin_rule="fit", min_eigs=0, num_threads=3), want_rows)
print("ok")
""")


def _tied_spectra() -> list[tuple[np.ndarray, int]]:
    """(matrix, top) pairs whose top-k bracket holds many equal eigenvalues: orthonormal rows (every Gram eigenvalue
    1, exactly or to round-off) and a spectrum whose k-th largest value is tied with many below it."""
    rng = np.random.default_rng(8)
    n = 120
    eye = np.hstack([np.eye(n), np.zeros((n, 30))])
    q, _ = np.linalg.qr(rng.standard_normal((n + 30, n)))  # orthonormal columns: q.T has orthonormal rows
    q = np.ascontiguousarray(q.T)
    steps = np.diag(np.sqrt(np.repeat([1.0, 4.0], n // 2)))
    pairs = []
    for dtype in (np.float32, np.float64, np.complex64, np.complex128):
        pairs += [(eye.astype(dtype), 5), (q.astype(dtype), 7), (steps.astype(dtype), n // 2 + 3)]
    return pairs


@needs_core
@pytest.mark.skipif(core is None or not hasattr(core, "_gram_eigvalsh_guarded"), reason="no guard-page binding")
def test_top_k_with_tied_eigenvalues_writes_only_its_k_slots(tmp_path):
    # ?syevr's bisection (?stebz) first stores every eigenvalue of the interval it brackets, all N of them when
    # they are equal, and only then drops the extra ones: given the k-slot output as its W, it wrote past it.
    # Every output here ends at an inaccessible page, so such a write is a crash (in a subprocess).
    cases = _tied_spectra()
    np.savez(tmp_path / "cases.npz", *[a for a, _ in cases])
    _run_isolated(f"""
cases = np.load({str(tmp_path / "cases.npz")!r})
mats, tops = [cases[f"arr_{{j}}"] for j in range(len(cases.files))], {[top for _, top in cases]}
alone = [core._gram_eigvalsh_guarded([a], [top], 1)[0] for a, top in zip(mats, tops)]
together = core._gram_eigvalsh_guarded(mats, tops, 2)  # two workers, each reusing its workspace
np.savez({str(tmp_path / "got.npz")!r}, *alone, *together)
print("ok")
""")
    got = np.load(tmp_path / "got.npz")
    for j, (a, top) in enumerate(cases):
        alone, together = got[f"arr_{j}"], got[f"arr_{j + len(cases)}"]
        single = a.dtype in (np.float32, np.complex64)
        ref = _reference(a)[-top:]
        assert alone.shape == (top,) and np.array_equal(alone, together)
        np.testing.assert_allclose(alone, ref, rtol=0, atol=(1e-5 if single else 1e-12) * ref[-1])


def test_fault_names_are_checked(fault):
    with pytest.raises(ValueError, match="fault must be"):
        fault("bogus")
    with pytest.raises(ValueError, match="skip"):
        fault("solver_info", -1)
