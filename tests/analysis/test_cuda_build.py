"""The CUDA core without a GPU: its host planning and the CPU twin of its Hill/LR kernels (both exposed by the CPU
`_core`), the Python dispatch of CUDA tensors and its fallbacks (run on CPU tensors with a stand-in for the
device module), and, for each `_core_cuda` built (installed variants, or TEMPBALANCE_CORE_CUDA=<path to the .so>
from .ci/check_cuda.sh), that it imports without CUDA, references the cuSOLVER/cuBLAS entry points by name, reports
why it cannot run, and takes the arguments the dispatch passes.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import random
import re
import sys
import warnings

import pytest
import torch

from tempbalance import _native
from tempbalance.analysis import cuda_backend

INT32_MAX = 2**31 - 1
core = _native.core
_HAS_PLAN = core is not None and hasattr(core, "cuda_plan_groups") and hasattr(core, "hill_lr_packed")
if os.environ.get("TEMPBALANCE_CORE_CUDA") and not _HAS_PLAN:
    # .ci/check_cuda.sh: these tests must run there, not skip (they once all skipped, unnoticed, because the
    # check imported the source tree, which has no compiled `_core`).
    raise RuntimeError(f"the CUDA check needs the installed native core with its CUDA bindings; got "
                       f"{getattr(core, '__file__', None)} ({_native.unavailable_reason})")
needs_plan = pytest.mark.skipif(not _HAS_PLAN,
                                reason="native core without the CUDA planning bindings (rebuild the package)")


def reference_groups(slices, gram_n, elem_bytes, have_batched, max_elements=INT32_MAX, max_bytes=1 << 30):
    """Plain-Python statement of the batching rule: sizes largest first (stable), fill each group up to its cap."""
    order = sorted(range(len(slices)), key=lambda k: -gram_n[k])
    groups = []
    for k in order:
        n, s = gram_n[k], slices[k]
        if n <= 0 or s <= 0:
            continue
        cap = min(max_elements // (n * n), max_bytes // (n * n * elem_bytes))
        batched = have_batched and cap >= 1
        cap = cap if batched else 1
        for sl in range(s):
            g = groups[-1] if groups else None
            if g is None or g[0] != n or g[2] != batched or g[1] >= cap:
                g = [n, 0, batched, []]
                groups.append(g)
            chunks = g[3]
            if chunks and chunks[-1][0] == k and chunks[-1][1] + chunks[-1][2] == sl:
                m, b, c, p = chunks[-1]
                chunks[-1] = (m, b, c + 1, p)
            else:
                chunks.append((k, sl, 1, g[1]))
            g[1] += 1
    return [(n, b, bat, ch) for n, b, bat, ch in groups]


def as_plain(groups):
    return [(n, b, bat, [tuple(c) for c in ch]) for n, b, bat, ch in groups]


@needs_plan
def test_batched_limit_matches_the_documented_counts():
    # n * lda * batch <= INT32_MAX: at most 127 Grams of 4096^2 and 3640 of 768^2 in one call.
    g = core.cuda_plan_groups([300], [4096], 4, True, INT32_MAX, 1 << 62)
    assert [x[1] for x in g] == [127, 127, 46]
    g = core.cuda_plan_groups([1] * 4000, [768] * 4000, 4, True, INT32_MAX, 1 << 62)
    assert [x[1] for x in g] == [3640, 360]
    assert core.CUDA_BATCHED_ELEMENT_LIMIT == INT32_MAX


@needs_plan
def test_gram_above_the_limit_and_missing_routine_go_per_matrix():
    g = core.cuda_plan_groups([2, 3], [46341, 8], 4, True, INT32_MAX, 1 << 62)  # 46341^2 > INT32_MAX
    assert g == [(46341, 1, False, [(0, 0, 1, 0)]), (46341, 1, False, [(0, 1, 1, 0)]),
                 (8, 3, True, [(1, 0, 3, 0)])]
    g = core.cuda_plan_groups([2, 1], [16, 16], 8, False)
    assert all(not batched and batch == 1 for _, batch, batched, _ in g) and len(g) == 3


@needs_plan
def test_byte_cap_splits_a_stack_across_groups():
    # 10 Grams of 100^2 float64 = 80 kB each; a 300 kB cap holds 3 per group.
    g = core.cuda_plan_groups([10], [100], 8, True, INT32_MAX, 300_000)
    assert [x[1] for x in g] == [3, 3, 3, 1]
    assert [c for x in g for c in x[3]] == [(0, 0, 3, 0), (0, 3, 3, 0), (0, 6, 3, 0), (0, 9, 1, 0)]


@needs_plan
@pytest.mark.parametrize("seed", range(6))
def test_grouping_matches_python_reference(seed):
    rng = random.Random(seed)
    count = rng.randint(1, 40)
    sizes = [rng.choice([0, 1, 7, 64, 300, 768, 1024]) for _ in range(count)]
    slices = [rng.choice([0, 1, 1, 1, 3, 9, 40]) for _ in range(count)]
    elem = rng.choice([4, 8, 16])
    have_batched = rng.random() < 0.8
    max_elements = rng.choice([INT32_MAX, 5_000_000, 700_000])
    max_bytes = rng.choice([1 << 30, 20_000_000])
    got = as_plain(core.cuda_plan_groups(slices, sizes, elem, have_batched, max_elements, max_bytes))
    assert got == reference_groups(slices, sizes, elem, have_batched, max_elements, max_bytes)
    # Every slice of every non-empty input appears exactly once, where its chunk says.
    seen = sorted((m, b + i) for _, _, _, ch in got for m, b, c, _ in ch for i in range(c))
    assert seen == sorted((k, i) for k in range(count) if sizes[k] > 0 for i in range(slices[k]))


@needs_plan
def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="same length"):
        core.cuda_plan_groups([1, 2], [3], 4)
    with pytest.raises(ValueError, match="positive"):
        core.cuda_plan_groups([1], [3], 0)


@needs_plan
@pytest.mark.parametrize("major, solver, blas", [(12, "11", "12"), (13, "12", "13")])
def test_library_search_order(major, solver, blas):
    dirs = ["/wheels/nvidia/cu13/lib", "/wheels/nvidia/cusolver/lib"]
    assert core.cuda_library_candidates("cusolver", major, dirs) == [
        f"noload:libcusolver.so.{solver}", f"/wheels/nvidia/cu13/lib/libcusolver.so.{solver}",
        f"/wheels/nvidia/cusolver/lib/libcusolver.so.{solver}", f"libcusolver.so.{solver}"]
    assert core.cuda_library_candidates("cublas", major, [])[-1] == f"libcublas.so.{blas}"


@needs_plan
@pytest.mark.parametrize("major", [12, 13])
def test_cusolver_dependencies_are_searched_like_the_library(major):
    # CUDA 12 wheels keep cuSPARSE and nvJitLink in their own directories: they are loaded first, from the same dirs.
    assert core.cuda_library_dependencies("cusolver") == ["nvJitLink", "cusparse"]
    assert core.cuda_library_dependencies("cublas") == ["cublasLt"]
    assert core.cuda_library_candidates("nvJitLink", major, ["/d"]) == [
        f"noload:libnvJitLink.so.{major}", f"/d/libnvJitLink.so.{major}", f"libnvJitLink.so.{major}"]
    assert core.cuda_library_candidates("cusparse", major, [])[-1] == "libcusparse.so.12"


def test_library_dirs_cover_both_wheel_layouts(tmp_path, monkeypatch):
    # CUDA 13 (`nvidia-cusolver`): nvidia/cu13/lib; CUDA 12 (`nvidia-cusolver-cu12`): nvidia/<package>/lib.
    for sub in ("cu13", "cusolver", "cublas", "cusparse", "nvjitlink", "cuda_runtime"):
        (tmp_path / "nvidia" / sub / "lib").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nvidia", raising=False)
    importlib.invalidate_caches()
    got = cuda_backend.library_dirs()
    assert got[:5] == [str(tmp_path / "nvidia" / sub / "lib") for sub in ("cu13", "cusolver", "cublas", "cusparse",
                                                                          "nvjitlink")]


@needs_plan
def test_library_search_without_a_known_cuda_tries_13_then_12():
    got = core.cuda_library_candidates("cusolver", 0, ["/d"])
    assert got == ["noload:libcusolver.so.12", "noload:libcusolver.so.11", "/d/libcusolver.so.12",
                   "/d/libcusolver.so.11", "libcusolver.so.12", "libcusolver.so.11"]


def test_cpu_tensors_never_take_the_cuda_path():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cuda_backend.gram_eigvals([torch.ones(1, 3, 4)]) is None
        assert cuda_backend.hill_lr([torch.ones(5)], [0], 1) is None


def test_cuda_status_is_one_line_saying_why():
    status = cuda_backend.cuda_status()
    assert status.startswith(("CUDA core ready: ", "CUDA core unavailable: "))
    if not torch.cuda.is_available():
        assert status.startswith("CUDA core unavailable: ")
        assert "not built" in status or "device" in status or "could not be loaded" in status


def _built_module_paths() -> list[str]:
    """TEMPBALANCE_CORE_CUDA (.ci/check_cuda.sh's fresh build), else every installed variant (a release wheel has
    tempbalance/_cuda12 and _cuda13): each is checked."""
    path = os.environ.get("TEMPBALANCE_CORE_CUDA")
    if path:
        return [path]
    specs = (importlib.util.find_spec(f"tempbalance._cuda{major}._core_cuda")
             for major in cuda_backend.built_variants())
    return [spec.origin for spec in specs if spec]


@pytest.fixture(scope="module", params=_built_module_paths() or [None],
                ids=lambda path: os.path.basename(os.path.dirname(path)) if path else "none")
def core_cuda(request):
    path = request.param
    if not path:
        pytest.skip("tempbalance._cuda<major>._core_cuda not built (no nvcc or no cuSOLVER headers at build time)")
    # each variant under its own name: Python hands back the first module loaded under a name
    variant = os.path.basename(os.path.dirname(path))
    name = f"tempbalance.{variant}._core_cuda" if re.fullmatch(r"_cuda\d+", variant) else "tempbalance._core_cuda"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def test_built_module_names_the_cusolver_entry_points(core_cuda):
    module, path = core_cuda
    data = open(path, "rb").read()
    for name in ("cusolverDnXsyevBatched", "cusolverDnXsyevBatched_bufferSize", "cusolverDnXsyevd",
                 "cublasGemmStridedBatchedEx"):
        assert name in module.required_symbols
        assert name.encode() + b"\0" in data  # resolved by dlsym at run time, so present as a string
    assert module.hill_columns == len(_native.core.HILL_COLUMNS) if _native.core else 10


def test_built_module_reports_no_driver_cleanly(core_cuda):
    module, _ = core_cuda
    count, why = module.device_count()
    if count > 0:
        pytest.skip("a CUDA device is present")
    assert count < 0 and why  # e.g. "cudaErrorInsufficientDriver: ..." or "cudaErrorNoDevice: ..."


def test_built_module_says_which_library_paths_it_tried(core_cuda, tmp_path):
    module, _ = core_cuda
    try:
        result = module.load(13, [str(tmp_path)])
    except RuntimeError as exc:
        assert str(tmp_path / "libcublas.so.13") in str(exc) or "libcusolver" in str(exc)
    else:  # a machine with cuSOLVER/cuBLAS installed system-wide (or loaded already: the first load wins)
        assert set(result) == {"cusolver", "cublas", "batched", "version", "max_n"}


def _doc_parameters(fn) -> list[str]:
    """Parameter names from a pybind11 function's signature line: "name(a: int, b: str = 'x') -> None"."""
    line = fn.__doc__.strip().splitlines()[0]
    return re.findall(r"(\w+): ", line[line.index("(") + 1:line.rindex(")")])


def test_stand_in_has_the_built_module_signatures(core_cuda):
    # tests/analysis/test_cuda_backend.py runs the dispatch against a stand-in; it must take what the real module takes.
    from test_cuda_backend import FakeDeviceCore

    module, _ = core_cuda
    for name in ("hill_lr", "gram_eigvalsh", "unit_factors", "load", "device_count", "_arm_fault"):
        fake = [p for p in inspect.signature(getattr(FakeDeviceCore, name)).parameters if p != "self"]
        assert _doc_parameters(getattr(module, name)) == fake, name


def test_built_module_takes_the_dispatch_arguments_without_a_gpu(core_cuda):
    # n = 0 returns before any CUDA call: this checks the argument conversion and the option parsing only.
    module, _ = core_cuda
    args = [0, 0, 0, 0, 0, 2.0, "median", False, 1e-5, 0.0, 0.0, 50, "sigmoid", 10.0, 2.0, 1.0, 0.5, 1.5, False,
            0, 0, 0, 0, 0]
    assert module.hill_lr(*args, zero_tols=0, zero_rtols=0) is None
    with pytest.raises(ValueError, match="xmin_rule"):
        module.hill_lr(*args[:6], "bogus", *args[7:])
    with pytest.raises(ValueError, match="null"):
        module.gram_eigvalsh([(0, 1, 2, 2, 0)], "float32", 0, lambda n: 0)
    assert module.unit_factors(0, 0, 0, 0, "alpha", 0, "sigmoid", 10.0, 2.0, 1.0, 0.5, 1.5, False, 0, 0, 0, 0) is None
    with pytest.raises(ValueError, match="metric"):
        module.unit_factors(0, 0, 0, 1, "bogus", 0, "sigmoid", 10.0, 2.0, 1.0, 0.5, 1.5, False, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="fault must be"):
        module._arm_fault("bogus")


class _PretendDevice:
    """The real built module, except that it reports one device, so the dispatch goes on to load the libraries."""

    def __init__(self, module):
        self._module = module

    def device_count(self):
        return 1, ""

    def __getattr__(self, name):
        return getattr(self._module, name)


@pytest.mark.parametrize("pretend_device, says", [(False, "no usable CUDA device"),
                                                  (True, "cuSOLVER/cuBLAS could not be loaded: libcublas")])
def test_built_module_unusable_here_falls_back_end_to_end(core_cuda, monkeypatch, pretend_device, says):
    # The real module through the real dispatch: no device (or no cuSOLVER/cuBLAS) -> one warning, CPU numbers.
    from test_cuda_backend import cuda_backend_off, install, model, rows_of

    module, _ = core_cuda
    if module.device_count()[0] > 0:
        pytest.skip("a CUDA device is present")
    if pretend_device:
        try:  # the load outcome is fixed for the process (call_once): make sure it is the failure
            module.load(cuda_backend.cuda_major(), cuda_backend.library_dirs())
        except RuntimeError:
            pass
        else:
            pytest.skip("cuSOLVER/cuBLAS are installed here")
    install(monkeypatch, _PretendDevice(module) if pretend_device else module)
    m = model()
    from tempbalance import analyze

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [analyze(m, min_eigs=10) for _ in range(2)]
    ours = [w for w in caught if "CUDA core unavailable" in str(w.message)]
    assert len(ours) == 1 and says in str(ours[0].message), [str(w.message) for w in caught]
    with cuda_backend_off():
        want = analyze(m, min_eigs=10)
    assert all(r.settings["backend"] == want.settings["backend"] for r in got)
    assert all((rows_of(r)[1] == rows_of(want)[1]).all() for r in got)


# --- the device checks around cuSOLVER and the scratch layout, through their CPU twins in `_core` ---------------
needs_twins = pytest.mark.skipif(core is None or not hasattr(core, "cuda_gram_unusable"),
                                 reason="native core without the CUDA twins (rebuild the package)")


@needs_twins
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "complex128"])
def test_gram_screen_rejects_exactly_the_grams_whose_trace_is_not_finite(dtype):
    import numpy as np

    rng = np.random.default_rng(0)
    real_max = np.finfo(np.dtype(dtype).type(0).real.dtype).max
    a = rng.standard_normal((6, 5, 7)).astype(dtype)
    big = np.sqrt(real_max / 2.25)  # three such entries in one row overflow the trace (1.33 max), two do not
    a[1, 0, 0] = np.nan
    a[2, 3, 4] = np.inf
    a[3, 0, :2] = big
    a[4, 0, :3] = big
    if np.iscomplexobj(a):
        a[5, 2, 1] = complex(0, np.nan)  # NaN only in an imaginary part
    with np.errstate(all="ignore"):
        grams = np.ascontiguousarray(a @ a.conj().transpose(0, 2, 1))
        trace = np.einsum("bii->b", grams.astype(np.complex128 if np.iscomplexobj(a) else np.float64))
    want = [not (np.isfinite(t) and abs(t.real) <= real_max) for t in trace]
    assert core.cuda_gram_unusable(grams) == want
    assert want == [False, True, True, False, True, np.iscomplexobj(a)]


@needs_twins
def test_finished_eigenvalues_are_nan_for_failed_grams_and_clamped_otherwise():
    import numpy as np

    w = np.array([[-1e-7, 0.5, 2.0], [1.0, 2.0, 3.0], [-2.0, 0.0, 1.0]])
    got = core.cuda_finished_eigenvalues(w, [0, 3, 0], [0, 0, 1])
    np.testing.assert_array_equal(got[0], [0.0, 0.5, 2.0])
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all()


@needs_twins
def test_scratch_layout_holds_every_buffer_aligned_and_apart():
    g = core.cuda_plan_groups([9, 1, 3], [64, 100, 64], 4, True, INT32_MAX, 60_000)
    lay = core.cuda_scratch_layout([9, 1, 3], [64, 100, 64], 4, 4, True, 60_000)
    most = max(b for _, b, _, _ in g)
    grams = max(n * n * b * 4 for n, b, _, _ in g)
    eigs = max(n * b * 4 for n, b, _, _ in g)
    assert all(lay[k] % 256 == 0 for k in ("grams", "eigs", "info", "unusable", "bytes"))
    assert lay["eigs"] - lay["grams"] >= grams and lay["info"] - lay["eigs"] >= eigs
    assert lay["unusable"] - lay["info"] >= 4 * most and lay["bytes"] - lay["unusable"] >= 4 * most
    assert lay["bytes"] < grams + eigs + 8 * most + 4 * 256


@needs_twins
def test_solver_size_limit_by_cusolver_version():
    # CUDA 12's cuSOLVER (11.x) fails above n = 32768 in Xsyevd / XsyevBatched; CUDA 13's (12.x) has no limit.
    assert core.cuda_solver_max_n(11701) == core.cuda_solver_max_n(0) == 32768
    assert core.cuda_solver_max_n(12000) == core.cuda_solver_max_n(12401) == 0


# --- how cuSOLVER is called, what counts as out of memory, and how long the handles live ---------------------------
@needs_twins
def test_solver_reads_the_upper_triangle_of_a_zeroed_workspace():
    # XsyevBatched with the lower triangle has returned wrong eigenvalues at random for one matrix of a complex64
    # batch (CUDA.jl issue 2577); the Grams are stored full, so the core reads the upper one. The zeroed workspace
    # works around cuSOLVER 11.7.1.2 reading it before writing it.
    assert core.CUDA_SOLVER_SETTINGS == {"triangle": "upper", "zero_workspace": True}


def test_built_module_calls_the_solver_as_planned(core_cuda):
    # The CUDA core reports the settings it was compiled with: the same plan.h constants as the CPU module's.
    module, _ = core_cuda
    assert module.solver_settings == {"triangle": "upper", "zero_workspace": True}
    if _HAS_PLAN:
        assert module.solver_settings == core.CUDA_SOLVER_SETTINGS


@needs_twins
@pytest.mark.parametrize("library, status, alloc", [
    ("runtime", 2, True), ("runtime", 0, False), ("runtime", 1, False), ("runtime", 700, False),
    ("cublas", 3, True), ("cublas", 1, False), ("cublas", 2, False), ("cublas", 13, False),
    ("cusolver", 2, True), ("cusolver", 3, False), ("cusolver", 7, False),
])
def test_allocation_failure_statuses(library, status, alloc):
    # cudaErrorMemoryAllocation = 2, CUBLAS_STATUS_ALLOC_FAILED = 3, CUSOLVER_STATUS_ALLOC_FAILED = 2 (the CUDA
    # build static_asserts them against the headers); everything else is another kind of failure.
    assert core.cuda_alloc_failure(library, status) is alloc


@needs_twins
def test_allocation_failure_names_its_library():
    with pytest.raises(ValueError, match="library must be"):
        core.cuda_alloc_failure("cufft", 2)


def test_built_module_has_a_memory_error_for_library_allocation_failures(core_cuda):
    # DeviceAllocError is what cuda_backend retries with smaller solve groups; the stand-in raises the same kind.
    from test_cuda_backend import FakeDeviceCore

    module, _ = core_cuda
    assert issubclass(module.DeviceAllocError, MemoryError) and not issubclass(module.DeviceAllocError, RuntimeError)
    assert issubclass(FakeDeviceCore.DeviceAllocError, MemoryError)
    module._arm_fault("solver_alloc", 2)  # accepted (it needs a GPU to fire)
    module._arm_fault("none")


_HANDLES_FROM_A_WORKER = """
import threading
import time
box = {}

def counts_once_ended(thread, destroyed):
    # join() returns when the Python thread is done; its C++ thread_local destructors run just after, as the OS
    # thread exits: wait for them (bounded), then report what was counted
    thread.join()
    deadline = time.monotonic() + 30
    while box["core"]._cuda_handle_twin_counts()[1] < destroyed and time.monotonic() < deadline:
        time.sleep(0.01)
    return box["core"]._cuda_handle_twin_counts()

def first_use():  # the first import of the module happens on a worker thread, as under lag >= 1
    from tempbalance import _native
    box["core"] = core = _native.core
    box["handle"] = core._cuda_handle_twin_get(0)
    assert core._cuda_handle_twin_get(0) == box["handle"]  # cached for the thread

worker = threading.Thread(target=first_use)
worker.start()
print("worker ended", *counts_once_ended(worker, 1))
core = box["core"]
main = core._cuda_handle_twin_get(0), core._cuda_handle_twin_get(1)
assert box["handle"] not in main  # a thread never gets another thread's handle

def second():
    core._cuda_handle_twin_get(0), core._cuda_handle_twin_get(1)

worker = threading.Thread(target=second)
worker.start()
print("second ended", *counts_once_ended(worker, 3))
core._cuda_handle_twin_log(True)
print("exiting", flush=True)
"""


@needs_twins
def test_handles_live_per_thread_whichever_thread_imported_the_module():
    # The CUDA core's handle cache (csrc/cuda/handle_cache.h), run by the CPU module over stand-in handles, in a
    # fresh interpreter whose first import of tempbalance is on a worker thread. A thread that ends destroys its own
    # handles; the main thread's outlive it and are not destroyed during interpreter exit (the CUDA runtime may be
    # gone by then). The core used to remember the importing thread as "main": that worker leaked its handles and
    # the real main thread destroyed its own at exit.
    import subprocess

    done = subprocess.run([sys.executable, "-c", _HANDLES_FROM_A_WORKER], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == ["worker ended 1 1", "second ended 5 3", "exiting"], done.stdout
    assert "destroyed" not in done.stderr, done.stderr[-2000:]
