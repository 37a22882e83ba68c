"""The dispatch of CUDA tensors to the CUDA core, run without a GPU.

`FakeDeviceCore` stands in for `tempbalance._core_cuda`: the same entry points and arguments, but its "device
memory" is host memory (CPU tensors' data_ptr()), its Gram eigenvalues come from the CPU core slice by slice (as
the CUDA core returns them), and its Hill/LR kernels are `_core.hill_lr_packed`, which runs the very functions
the CUDA kernels run (tb::packed_hill_row / tb::packed_unit_lr) over the same packed layout. With
`cuda_backend.DEVICE_TYPE` pointed at "cpu", everything the Python side does for CUDA weights (packing, per-
spectrum options, unpacking, fallbacks, warnings) runs here and is compared with the CPU core and the torch
reference. tests/analysis/test_cuda_build.py checks the stand-in's signature against the real module when it is built.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tempbalance
from tempbalance import TempBalance, _native, analyze
from tempbalance.analysis import cuda_backend, hill, streams
from tempbalance.analysis.options import HillOptions
from tempbalance.training import mapping
from tempbalance.training.mapping import MappingOptions

core = _native.core
pytestmark = pytest.mark.skipif(core is None or not hasattr(core, "unit_factors_packed"),
                                reason="native core without the CUDA twins (rebuild the package)")
COLUMNS = len(hill.HILL_COLUMNS)


def _view(ptr: int, count: int, dtype) -> np.ndarray:
    """`count` elements of `dtype` at address `ptr` (host memory: the stand-in's device is the CPU), writable."""
    dtype = np.dtype(dtype)
    if count == 0:
        return np.empty(0, dtype)
    return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(ptr), dtype=dtype, count=count)


class FakeDeviceCore:
    """`_core_cuda`'s interface over host memory (see the module docstring)."""

    hill_columns = COLUMNS
    required_symbols: list = []

    class DeviceAllocError(MemoryError):
        """As `_core_cuda.DeviceAllocError`: cuBLAS/cuSOLVER/the runtime could not allocate their own memory."""

    def __init__(self, devices: int = 1, why: str = "", load_error: str | None = None, memory: int | None = None,
                 max_n: int = 0, memory_kind: str = "allocator"):
        self.devices, self.why, self.load_error = devices, why, load_error
        self.memory, self.max_n = memory, max_n  # bytes one pass may take (None: any); cuSOLVER's limit
        # who runs out when a pass needs more than `memory`: "allocator" (torch's, for the scratch the core asks
        # for: torch.OutOfMemoryError) or "library" (cuSOLVER's own allocations: DeviceAllocError, mid-pass)
        self.memory_kind = memory_kind
        self.calls = collections.Counter()
        self.matrices: list[tuple[int, int, int]] = []  # every input it was given
        self.solved: list[tuple[int, int]] = []  # (matrix, slice) of every Gram that reached the "solver"
        self.group_bytes: list[int] = []  # max_bytes of every gram_eigvalsh call
        self.called_on: list = []  # the stream of every gram_eigvalsh call
        self.fault_skip: int | None = None
        self.alloc_fault_skip: int | None = None

    def device_count(self):
        return self.devices, self.why

    def load(self, cuda_major, dirs):
        self.calls["load"] += 1
        if self.load_error:
            raise RuntimeError(self.load_error)
        return {"cusolver": "fake libcusolver", "cublas": "fake libcublas", "batched": True,
                "version": 11701 if self.max_n else 12000, "max_n": self.max_n}

    def _arm_fault(self, fault, skip=0):
        self.fault_skip = skip if fault == "solver_info" else None
        self.alloc_fault_skip = skip if fault == "solver_alloc" else None

    def _solver_cannot_allocate(self, groups: int) -> bool:
        """The armed 'solver_alloc' fault: fires at the (skip + 1)-th solver call, one call per group."""
        if self.alloc_fault_skip is None:
            return False
        if self.alloc_fault_skip < groups:
            self.alloc_fault_skip = None
            return True
        self.alloc_fault_skip -= groups
        return False

    def _solver_fails(self) -> bool:
        if self.fault_skip is None:
            return False
        self.fault_skip -= 1
        if self.fault_skip < 0:
            self.fault_skip = None
            return True
        return False

    def gram_eigvalsh(self, mats, dtype, stream, alloc, max_bytes=1 << 30):
        self.calls["gram_eigvalsh"] += 1
        self.group_bytes.append(max_bytes)
        self.called_on.append(stream)
        kind = np.dtype(dtype)
        real = np.empty(0, kind).real.dtype
        sizes = [min(m, n) for _, _, m, n, _ in mats]
        if self.max_n and max(sizes) > self.max_n:
            raise ValueError(f"a {max(sizes)} x {max(sizes)} Gram is above this cuSOLVER's limit of {self.max_n}")
        layout = core.cuda_scratch_layout([s for _, s, _, _, _ in mats], sizes, kind.itemsize, real.itemsize, True,
                                          max_bytes)
        for nbytes in (layout["bytes"], 4096):  # the scratch buffer, then cuSOLVER's workspace
            if self.memory_kind == "allocator" and self.memory is not None and nbytes > self.memory:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {nbytes} bytes")
            assert alloc(nbytes)
        groups = len(core.cuda_plan_groups([s for _, s, _, _, _ in mats], sizes, kind.itemsize, True,
                                           core.CUDA_BATCHED_ELEMENT_LIMIT, max_bytes))
        if self._solver_cannot_allocate(groups) or (
                self.memory_kind == "library" and self.memory is not None and layout["bytes"] > self.memory):
            for _, s, m, n, out in mats:  # the real core fails mid-pass: earlier groups' results are written
                _view(out, s * min(m, n), real)[:] = 12345.0
            raise self.DeviceAllocError("cusolverDnXsyevBatched: cuSOLVER status 2 (out of device memory)")
        for data, s, m, n, out in mats:
            self.matrices.append((s, m, n))
            a = _view(data, s * m * n, kind).reshape(s, m, n)
            k = min(m, n)
            res = _view(out, s * k, real)
            for i in range(s):  # per slice, ascending, as the CUDA core leaves them (the caller pools)
                with np.errstate(all="ignore"):
                    g = a[i] @ a[i].conj().T if m <= n else a[i].conj().T @ a[i]  # in the input's precision
                unusable = bool(core.cuda_gram_unusable(np.ascontiguousarray(g[None]))[0])
                w = np.zeros(k, real)
                if not unusable:
                    self.solved.append((len(self.matrices) - 1, i))
                    w = core.gram_eigvalsh([np.ascontiguousarray(a[i:i + 1])], [0], 1)[0]
                info = 1 if self._solver_fails() else 0
                res[i * k:(i + 1) * k] = core.cuda_finished_eigenvalues(w[None], [info], [int(unusable)])[0]
        return {"groups": groups, "batched_groups": groups, "scratch_bytes": layout["bytes"], "solver_bytes": 4096,
                "solver_host_bytes": 0}

    def hill_lr(self, eigs, offsets, n, unit_index, n_units, xmin_pos, xmin_rule, filter_zeros, zero_tol, zero_rel,
                zero_rtol, min_eigs, mapping, tau, s_lo, s_hi, s1, s2, compat, metrics, unit_alpha, factors, scratch,
                stream, zero_tols=0, zero_rtols=0):
        self.calls["hill_lr"] += 1
        off = _view(offsets, n + 1, np.int64).copy()
        tol = _view(zero_tols, n, np.float64).copy() if zero_tols else zero_tol
        rtol = _view(zero_rtols, n, np.float64).copy() if zero_rtols else zero_rtol
        got = core.hill_lr_packed(_view(eigs, int(off[-1]), np.float64).copy(), off,
                                  _view(unit_index, n, np.int64).copy(), n_units, xmin_pos, xmin_rule, filter_zeros,
                                  tol, zero_rel, rtol, min_eigs, mapping, tau, s_lo, s_hi, s1, s2, compat)
        _view(metrics, n * COLUMNS, np.float64)[:] = np.asarray(got[0]).reshape(-1)
        if n_units:
            _view(unit_alpha, n_units, np.float64)[:] = got[1]
            _view(factors, n_units, np.float64)[:] = got[2]

    def unit_factors(self, metrics, unit_index, n, n_units, metric, previous, mapping, tau, s_lo, s_hi, s1, s2,
                     compat, unit_values, factors, scratch, stream):
        self.calls["unit_factors"] += 1
        if not n_units:
            return
        got = core.unit_factors_packed(_view(metrics, n * COLUMNS, np.float64).reshape(n, COLUMNS).copy(),
                                       _view(unit_index, n, np.int64).copy(), n_units, metric,
                                       _view(previous, n_units, np.float64).copy(), mapping, tau, s_lo, s_hi, s1, s2,
                                       compat)
        _view(unit_values, n_units, np.float64)[:] = got[0]
        _view(factors, n_units, np.float64)[:] = got[1]


class FakeStreams:
    """`streams.API`'s torch.cuda calls, recorded: events, side streams, waits, record_stream, the current stream."""

    def __init__(self):
        self.log: list[tuple] = []
        self.current = "training"
        outer = self

        class Event:
            def record(self, stream):
                outer.log.append(("record", stream))

        class Stream:
            def __init__(self, device):
                self.name = f"side{sum(1 for e in outer.log if e[0] == 'stream')}"
                outer.log.append(("stream", self.name))

            def wait_event(self, event):
                outer.log.append(("wait", self.name))

        self.Event, self.Stream = Event, Stream

    def current_stream(self, device):
        return self.current

    @contextlib.contextmanager
    def stream(self, side):
        previous, self.current = self.current, side.name
        self.log.append(("enter", side.name))
        try:
            yield
        finally:
            self.current = previous
            self.log.append(("exit", side.name))

    def record_stream(self, tensor, side):
        self.log.append(("record_stream", side.name, tuple(tensor.shape)))


def install(monkeypatch, fake: FakeDeviceCore) -> FakeDeviceCore:
    """Route CPU tensors through the CUDA dispatch with `fake` as the device module (fresh per-process state);
    streams are a FakeStreams (`fake.streams`), whose current stream is what the core is called with."""
    fake.streams = FakeStreams()
    monkeypatch.setattr(streams, "API", fake.streams)
    monkeypatch.setattr(cuda_backend, "DEVICE_TYPE", "cpu")
    monkeypatch.setattr(cuda_backend, "_current_stream", lambda device: contextlib.nullcontext(fake.streams.current))
    monkeypatch.setattr(cuda_backend, "_import", lambda: fake)
    for name, value in (("_module", None), ("_variant", None), ("_ready", None), ("_reason", None),
                        ("_libraries", None), ("_checked", False), ("_warned", False), ("_failed_warned", False)):
        monkeypatch.setattr(cuda_backend, name, value)
    return fake


@pytest.fixture
def device(monkeypatch) -> FakeDeviceCore:
    return install(monkeypatch, FakeDeviceCore())


def spectra(rng, count=12):
    """Ascending spectra with the awkward cases: empty, short, flat tail, zeros (rank-deficient), NaN."""
    out = [np.sort(rng.pareto(2.5, size=rng.integers(60, 300)) + 0.1) for _ in range(count)]
    out += [np.empty(0), np.sort(rng.random(5)), np.full(80, 3.0),
            np.concatenate([np.zeros(40), np.sort(rng.random(60) + 1)]), np.concatenate([np.sort(rng.random(70)),
                                                                                       [np.nan]])]
    return out


def cpu_results(eigs, units, n_units, hill_kw, map_kw):
    rows = hill.hill_metrics(eigs, backend="native", assume_sorted=True, **hill_kw)
    table = np.array([[r[c] if c != "status" else hill.STATUS_CODES[r[c]] for c in hill.HILL_COLUMNS]
                      for r in rows], dtype=np.float64)
    unit_alpha = mapping.unit_means(table[:, 0], units, n_units, backend="native")
    return table, unit_alpha, mapping.lr_factors(unit_alpha, backend="native", **map_kw)


CASES = [
    (dict(xmin_rule="median", min_eigs=50), dict(mapping="sigmoid")),
    (dict(xmin_rule="fit", min_eigs=10, filter_zeros=True, zero_tol=1e-3), dict(mapping="linear", s1=0.4, s2=1.7)),
    (dict(xmin_rule="peak", min_eigs=0, xmin_pos=3.0, zero_rel=1e-2, filter_zeros=True), dict(tau=5.0, s_lo=1.0)),
    (dict(xmin_rule="peak_compat", min_eigs=20), dict(mapping="linear", compat=True)),
    (dict(xmin_rule="median", min_eigs=30, xmin_pos=1.5), dict(mapping="rank", s1=0.6, s2=1.4)),
]


@pytest.mark.parametrize("hill_kw, map_kw", CASES)
def test_kernel_twin_matches_the_cpu_core(rng, hill_kw, map_kw):
    # The CUDA kernels' code over the packed layout == the CPU core's per-spectrum path + unit means + mapping.
    eigs = spectra(rng)
    n = len(eigs)
    rtol = rng.choice([0.0, 1e-6, 0.05], size=n)
    units = rng.integers(-1, 4, size=n)
    offsets = np.concatenate([[0], np.cumsum([e.size for e in eigs])]).astype(np.int64)
    kw = dict(hill_kw, zero_rtol=rtol)
    metrics, unit_alpha, factors = core.hill_lr_packed(np.concatenate(eigs), offsets, units, 5, **kw, **map_kw)
    want = cpu_results(eigs, units, 5, kw, map_kw)
    np.testing.assert_array_equal(metrics, want[0])  # same functions, same inputs: bit-identical
    np.testing.assert_array_equal(unit_alpha, want[1])
    np.testing.assert_array_equal(factors, want[2])
    assert set(metrics[:, -1].astype(int)) >= {0, 4, 5}  # ok, non-finite and empty rows were all exercised


def test_kernel_twin_rejects_a_bad_layout():
    with pytest.raises(ValueError, match="offsets"):
        core.hill_lr_packed(np.ones(5), np.array([0, 3, 2, 5]), np.zeros(3, np.int64), 1)
    with pytest.raises(ValueError, match="offsets"):
        core.hill_lr_packed(np.ones(5), np.array([0, 3]), np.zeros(1, np.int64), 1)
    with pytest.raises(ValueError, match="unit_index"):
        core.hill_lr_packed(np.ones(5), np.array([0, 5]), np.zeros(2, np.int64), 1)
    with pytest.raises(ValueError, match="zero_rtol"):
        core.hill_lr_packed(np.ones(5), np.array([0, 5]), np.zeros(1, np.int64), 1, zero_rtol=[0.1, 0.2])


@pytest.mark.parametrize("hill_kw, map_kw", CASES[:2])
def test_device_hill_lr_packs_and_unpacks_like_the_cpu_core(device, rng, hill_kw, map_kw):
    eigs = spectra(rng)
    units = [int(u) for u in rng.integers(-1, 3, size=len(eigs))]
    rtol = [float(x) for x in rng.choice([0.0, 1e-6, 0.05], size=len(eigs))]
    metrics, unit_alpha, factors = cuda_backend.hill_lr([torch.from_numpy(e) for e in eigs], units, 3,
                                                        hill=HillOptions(**hill_kw), zero_rtol=rtol,
                                                        mapping=MappingOptions(**map_kw))
    want = cpu_results(eigs, np.array(units), 3, dict(hill_kw, zero_rtol=rtol), map_kw)
    np.testing.assert_array_equal(metrics.numpy(), want[0])
    np.testing.assert_array_equal(unit_alpha.numpy(), want[1])
    np.testing.assert_array_equal(factors.numpy(), want[2])
    assert device.calls["hill_lr"] == 1


def test_device_hill_lr_defaults_are_the_cpu_api_defaults(device, rng):
    # Default options: the kernels must get exactly what hill_metrics / lr_factors use by default.
    eigs = spectra(rng, count=4)
    metrics, _, factors = cuda_backend.hill_lr([torch.from_numpy(e) for e in eigs], [0] * len(eigs), 1,
                                               mapping=MappingOptions())
    rows = hill.hill_metrics(eigs, backend="native", assume_sorted=True)
    assert [hill.STATUS_NAMES[int(s)] for s in metrics[:, -1]] == [r["status"] for r in rows]
    np.testing.assert_array_equal(metrics[:, 0].numpy(), [r["alpha"] for r in rows])
    assert factors.tolist() == [1.0]  # one unit sits at its own mean


def test_device_hill_lr_checks_its_arguments(device):
    with pytest.raises(ValueError, match="unit_index"):
        cuda_backend.hill_lr([torch.ones(60)], [0, 1], 2, mapping=MappingOptions())
    with pytest.raises(ValueError, match="zero_rtol"):
        cuda_backend.hill_lr([torch.ones(60)], [0], 1, zero_rtol=[0.1, 0.2], mapping=MappingOptions())
    with pytest.raises(ValueError, match="needs mapping="):
        cuda_backend.hill_lr([torch.ones(60)], [0], 1)


def model(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Conv2d(8, 70, 3), nn.Linear(96, 80, bias=False),
                         nn.Linear(80, 60))


def rows_of(report):
    return [(r.name, r.status, r.n_eigs, r.n_tail) for r in report.rows], \
        np.array([[r.alpha, r.xmin, r.spectral_norm, r.frobenius, r.stable_rank, r.ks_distance] for r in report.rows])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_analyze_dispatches_device_weights_to_the_device_core(device, dtype):
    m = model()
    got = analyze(m, dtype=dtype, min_eigs=10)
    assert device.calls["gram_eigvalsh"] >= 1 and device.calls["hill_lr"] == 1
    assert got.settings["backend"] == "cuda"
    assert sorted(device.matrices) == sorted([(1, 96, 64), (9, 70, 8), (1, 80, 96), (1, 60, 80)])
    with cuda_backend_off():
        want = analyze(m, dtype=dtype, min_eigs=10, backend="native")
    assert want.settings["backend"] == "native"
    (names, values), (want_names, want_values) = rows_of(got), rows_of(want)
    assert names == want_names and all(s == "ok" for _, s, _, _ in names)
    np.testing.assert_allclose(values, want_values, rtol=1e-6 if dtype == torch.float32 else 1e-12)


@contextlib.contextmanager
def cuda_backend_off():
    """Plain CPU dispatch for a comparison run inside a test that installed the stand-in."""
    saved = cuda_backend.DEVICE_TYPE
    cuda_backend.DEVICE_TYPE = "cuda"
    try:
        yield
    finally:
        cuda_backend.DEVICE_TYPE = saved


def test_device_path_uses_each_matrix_zero_guard(device):
    # A rank-deficient matrix: its round-off eigenvalues must meet the guard of *its* Gram size, not another's.
    torch.manual_seed(3)
    low = (torch.randn(200, 3) @ torch.randn(3, 120)).contiguous()
    named = {"low_rank": low, "full": torch.randn(90, 300)}
    got = analyze(named, min_eigs=10)
    with cuda_backend_off():
        want = analyze(named, min_eigs=10, backend="native")
    assert [r.status for r in got.rows] == [r.status for r in want.rows] == ["xmin_not_positive", "ok"]
    assert got.rows[0].reason == want.rows[0].reason


def test_device_path_reports_non_finite_layers_without_solving_them(device):
    # The check is on the device (the Gram's diagonal), not a host wait per chunk: the Grams never reach cuSOLVER.
    m = model()
    with torch.no_grad():
        m[3].weight[5, 7] = float("nan")
        m[4].weight[0, 0] = float("inf")
    report = analyze(m, min_eigs=10)
    status = {r.name: r.status for r in report.rows}
    assert status == {"0": "ok", "2": "ok", "3": "non_finite", "4": "non_finite"}
    assert "'3'" in report["3"].reason and "1 NaN" in report["3"].reason and "1 Inf" in report["4"].reason
    solved = {device.matrices[k] for k, _ in device.solved}
    assert (1, 80, 96) not in solved and (1, 60, 80) not in solved and (1, 96, 64) in solved


def test_a_gram_that_would_overflow_is_rescaled_on_the_device(device):
    # Finite float32 weights of 1e19: their float32 Gram would overflow (1e38 x 96 > FLT_MAX). The stack is scaled
    # by a power of two on the device first (no host wait), so the layer is analysed - alpha as in float64 - and
    # cuSOLVER sees a finite Gram.
    weights = {"big": torch.full((40, 96), 1e19) + torch.randn(40, 96) * 1e18, "fine": torch.randn(60, 80)}
    report = analyze(weights, min_eigs=10)
    assert [r.status for r in report.rows] == ["ok", "ok"]
    assert [device.matrices[k] for k, _ in device.solved] == [(1, 40, 96), (1, 60, 80)]
    ref = analyze(weights, min_eigs=10, dtype=torch.float64, backend="torch")["big"]
    assert report["big"].alpha == pytest.approx(ref.alpha, rel=1e-4)
    assert report["big"].spectral_norm == pytest.approx(ref.spectral_norm, rel=1e-4)


def test_a_solver_that_does_not_converge_fails_its_layer_only(device):
    # cuSOLVER's info != 0 for the 2nd Gram of a stack: that layer's spectrum is NaN (decided on the device from
    # the info array), its reason says so, the other layers are unaffected.
    device._arm_fault("solver_info", 2)  # Grams in order: layer 0 (1), then layer 2's 9 slices
    report = analyze(model(), min_eigs=10)
    status = {r.name: r.status for r in report.rows}
    assert status == {"0": "ok", "2": "non_finite", "3": "ok", "4": "ok"}
    assert "did not converge" in report["2"].reason


def test_backend_torch_never_uses_the_device_core(device):
    analyze(model(), backend="torch", min_eigs=10)
    assert not device.calls


@pytest.mark.parametrize("fake, says", [
    (FakeDeviceCore(devices=-1, why="cudaErrorNoDevice: no CUDA-capable device is detected"), "no usable CUDA device"),
    (FakeDeviceCore(load_error="symbol cusolverDnXsyevd not found"), "symbol cusolverDnXsyevd not found"),
    (FakeDeviceCore(load_error="libcublas not found; tried:\n  /x/libcublas.so.13"), "libcublas not found"),
    (None, "not built"),
])
def test_unusable_core_falls_back_with_one_clear_warning(monkeypatch, fake, says):
    install(monkeypatch, fake or FakeDeviceCore())
    if fake is None:  # the module itself is missing
        monkeypatch.setattr(cuda_backend, "_import", lambda: _missing_module())
    m = model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = analyze(m, min_eigs=10)
        second = analyze(m, min_eigs=10)
    ours = [w for w in caught if "CUDA core unavailable" in str(w.message)]
    assert len(ours) == 1 and ours[0].category is RuntimeWarning
    assert says in str(ours[0].message) and "CPU path" in str(ours[0].message)
    assert first.settings["backend"] == second.settings["backend"] == "native"
    with cuda_backend_off():
        want = analyze(m, min_eigs=10, backend="native")
    np.testing.assert_array_equal(rows_of(first)[1], rows_of(want)[1])
    if fake is not None:
        assert not fake.calls["gram_eigvalsh"] and not fake.calls["hill_lr"]


def _missing_module():
    cuda_backend._reason = "not built (No module named 'tempbalance._core_cuda'); rebuild with nvcc on PATH"
    return None


def test_tempbalance_refresh_runs_on_the_device_core(device):
    def build():
        m = model()
        return TempBalance(m, torch.optim.SGD(m.parameters(), lr=0.1), unit="layer", min_eigs=8)

    tb = build()
    calls = device.calls["hill_lr"]
    report = tb.refresh()
    assert device.calls["hill_lr"] > calls and report.settings["backend"] == "cuda"
    with cuda_backend_off():
        plain = build()
    np.testing.assert_allclose([tb.factors[u] for u in tb.units], [plain.factors[u] for u in plain.units],
                               rtol=1e-6)


class FailingDeviceCore(FakeDeviceCore):
    """Loads fine, then a cuSOLVER call reports an error status (the core raises RuntimeError)."""

    def __init__(self, fail: str):
        super().__init__()
        self.fail = fail

    def gram_eigvalsh(self, mats, dtype, stream, alloc, max_bytes=1 << 30):
        if self.fail == "gram_eigvalsh":
            raise RuntimeError("cusolverDnXsyevBatched: cuSOLVER status 7")
        return super().gram_eigvalsh(mats, dtype, stream, alloc, max_bytes)

    def hill_lr(self, *args, **kw):
        if self.fail == "hill_lr":
            raise RuntimeError("hill_kernel launch: too many resources requested for launch")
        if self.fail == "hill_lr_memory":  # a launch's cudaErrorMemoryAllocation: no retry helps a 1-thread kernel
            raise self.DeviceAllocError("hill_kernel launch: out of memory (out of device memory)")
        super().hill_lr(*args, **kw)


@pytest.mark.parametrize("fail", ["gram_eigvalsh", "hill_lr", "hill_lr_memory"])
def test_a_failing_device_call_falls_back_to_the_cpu_path(monkeypatch, fail):
    install(monkeypatch, FailingDeviceCore(fail))
    m = model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [analyze(m, min_eigs=10) for _ in range(2)]
    ours = [w for w in caught if "the CUDA core failed" in str(w.message)]
    assert len(ours) == 1 and ("status 7" in str(ours[0].message) or "launch" in str(ours[0].message))
    with cuda_backend_off():
        want = analyze(m, min_eigs=10, backend="native")
    for r in got:
        assert [x.status for x in r.rows] == ["ok"] * 4
        np.testing.assert_allclose(rows_of(r)[1], rows_of(want)[1], rtol=1e-6)


# --- memory: scratch from torch's allocator; an out-of-memory shrinks the solve groups, then is a clear error -----
# Both kinds: torch's allocator refusing the scratch the core asks for (torch.OutOfMemoryError, before any work), and
# cuBLAS/cuSOLVER failing to allocate their own memory (the core's DeviceAllocError, mid-pass). The latter used to
# be a RuntimeError like any failing call: a switch to the CPU path in the middle of training.
MEMORY_KINDS = ["allocator", "library"]


def _oom_weights():
    torch.manual_seed(5)
    return {"lin": torch.randn(100, 120), "conv": torch.randn(70, 64, 3, 3)}  # Grams: 100^2 and 9 x 64^2 float32


def _record_cache_releases(monkeypatch) -> list:
    released = []
    monkeypatch.setattr(cuda_backend, "_release_cached_memory", lambda device: released.append(device),
                        raising=False)
    return released


@pytest.mark.parametrize("kind", MEMORY_KINDS)
def test_out_of_memory_retries_with_smaller_solve_groups(monkeypatch, kind):
    # the conv's 9 Grams (147 kB) do not fit at once
    fake = install(monkeypatch, FakeDeviceCore(memory=100_000, memory_kind=kind))
    released = _record_cache_releases(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the device did the work
        got = analyze(_oom_weights(), min_eigs=10)
    assert got.settings["backend"] == "cuda" and [r.status for r in got.rows] == ["ok", "ok"]
    assert fake.group_bytes[0] == cuda_backend.GROUP_BYTES and min(fake.group_bytes) < 100_000
    retries = len(fake.group_bytes) - 1
    assert retries >= 1 and cuda_backend.last_pass["retries"] == retries
    # torch's cached blocks are handed back before a retry only when a library could not allocate (torch's own
    # allocator already does that before it raises)
    assert len(released) == (retries if kind == "library" else 0)
    with cuda_backend_off():
        want = analyze(_oom_weights(), min_eigs=10, backend="native")
    np.testing.assert_allclose(rows_of(got)[1], rows_of(want)[1], rtol=1e-6)


@pytest.mark.parametrize("kind", MEMORY_KINDS)
def test_out_of_memory_for_a_single_gram_is_a_clear_error_per_layer(monkeypatch, kind):
    # below one 100^2 float32 Gram (40 kB): cannot run at all
    fake = install(monkeypatch, FakeDeviceCore(memory=30_000, memory_kind=kind))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # never a silent switch to the CPU
        report = analyze(_oom_weights(), min_eigs=10)
    assert report["lin"].status == "error" and report.settings["backend"] == "cuda"
    assert "not enough free GPU memory" in report["lin"].reason and "'lin'" in report["lin"].reason
    if kind == "library":  # the reason names the call that could not allocate
        assert "cusolverDnXsyevBatched" in report["lin"].reason
    assert 100 * 100 * 4 in fake.group_bytes  # retried down to one Gram at a time


@pytest.mark.parametrize("kind", MEMORY_KINDS)
def test_out_of_memory_keeps_the_factors_in_a_refresh(monkeypatch, kind):
    fake = install(monkeypatch, FakeDeviceCore(memory_kind=kind))
    m = model()
    tb = TempBalance(m, torch.optim.SGD(m.parameters(), lr=0.1), unit="layer", min_eigs=8)
    before = dict(tb.factors)
    fake.memory = 1000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tb.refresh()
    messages = [str(w.message) for w in caught]
    assert any("not enough free GPU memory" in msg for msg in messages), messages
    assert not any("CPU path" in msg for msg in messages), messages
    assert tb.factors == before


def test_a_solver_that_cannot_allocate_once_is_retried_on_the_device(device):
    # `_core_cuda._arm_fault("solver_alloc")`: cuSOLVER's own allocation fails once (CUSOLVER_STATUS_ALLOC_FAILED)
    # after the Grams were formed; the pass is redone with smaller groups, on the device, and its numbers are right.
    m = model()
    device._arm_fault("solver_alloc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = analyze(m, min_eigs=10)
    assert got.settings["backend"] == "cuda" and all(r.status == "ok" for r in got.rows)
    assert device.group_bytes[:2] == [cuda_backend.GROUP_BYTES, cuda_backend.GROUP_BYTES // 4]
    with cuda_backend_off():
        want = analyze(m, min_eigs=10, backend="native")
    np.testing.assert_allclose(rows_of(got)[1], rows_of(want)[1], rtol=1e-6)


# --- Grams above the loaded cuSOLVER's limit, and backend="native" with the CUDA core only -----------------------
def test_grams_above_the_solver_limit_go_to_the_cpu_core(monkeypatch):
    fake = install(monkeypatch, FakeDeviceCore(max_n=70))  # cuSOLVER 11.x: pretend the limit is n <= 70
    report = analyze(model(), min_eigs=10)
    assert sorted(fake.matrices) == [(1, 60, 80), (1, 96, 64), (9, 70, 8)]  # not the 80-wide Gram of (80, 96)
    with cuda_backend_off():
        want = analyze(model(), min_eigs=10, backend="native")
    np.testing.assert_allclose(rows_of(report)[1], rows_of(want)[1], rtol=1e-6)


def test_native_backend_serves_cuda_weights_without_the_cpu_core(device, monkeypatch):
    # backend="native" used to resolve the CPU core first: CUDA weights raised although the CUDA core could run.
    monkeypatch.setattr(_native, "core", None)
    monkeypatch.setattr(_native, "unavailable_reason", "not built here")
    report = analyze(model(), min_eigs=10, backend="native")
    assert report.settings["backend"] == "cuda" and all(r.status == "ok" for r in report.rows)
    from tempbalance.analysis import spectra

    assert spectra.esd(torch.randn(30, 40), backend="native").shape == (30,)  # esd() goes through the CUDA core too
    device.max_n = 70  # now some Grams need the CPU core, which is missing: the error says so
    cuda_backend._checked = False
    report = analyze(model(), min_eigs=10, backend="native")
    assert {r.name: r.status for r in report.rows} == {"0": "ok", "2": "ok", "3": "error", "4": "ok"}
    assert "native core is unavailable: not built here" in report["3"].reason


# Which core variant is loaded: a release wheel has tempbalance/_cuda12 and _cuda13.
@pytest.mark.parametrize("torch_cuda, built, forced, want", [
    ("12.8", [13, 12], None, [12, 13]),  # torch's own CUDA major first: whatever driver runs torch runs it
    ("13.0", [13, 12], None, [13, 12]),
    (None, [13, 12], None, [13, 12]),  # CPU torch: newest first
    ("11.8", [13, 12], None, [13, 12]),
    ("12.4", [13], None, [13]),  # a source build with nvcc 13 only
    ("13.0", [12], None, [12]),  # a CUDA 12 core runs under the drivers CUDA 13 needs
    ("12.8", [13, 12], "13", [13]),  # TEMPBALANCE_CUDA_VARIANT
    ("12.8", [13, 12], "11", []),
    ("12.8", [13, 12], "cu12", []),
])
def test_variant_order_puts_torchs_cuda_first(monkeypatch, torch_cuda, built, forced, want):
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    assert cuda_backend.variant_order(cuda_backend.cuda_major(), built, forced) == want


def _import_with(monkeypatch, torch_cuda, built, importable, forced=None):
    """cuda_backend._import() with `built` variants installed, of which those in `importable` load."""
    tried = []

    def import_module(name):
        tried.append(name)
        major = int(name.split("._cuda")[1].split(".")[0])
        if major not in importable:
            raise ImportError(f"libfoo.so.{major}: cannot open shared object file")
        return FakeDeviceCore()

    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    monkeypatch.setattr(cuda_backend, "built_variants", lambda: built)
    monkeypatch.setattr(cuda_backend.importlib, "import_module", import_module)
    if forced is None:
        monkeypatch.delenv("TEMPBALANCE_CUDA_VARIANT", raising=False)
    else:
        monkeypatch.setenv("TEMPBALANCE_CUDA_VARIANT", forced)
    for name in ("_module", "_variant", "_reason"):
        monkeypatch.setattr(cuda_backend, name, None)
    return cuda_backend._import(), tried


def test_import_loads_the_variant_of_torchs_cuda(monkeypatch):
    module, tried = _import_with(monkeypatch, "12.6", [13, 12], importable={12, 13})
    assert isinstance(module, FakeDeviceCore) and cuda_backend._variant == 12
    assert tried == ["tempbalance._cuda12._core_cuda"]
    module, tried = _import_with(monkeypatch, "13.0", [13, 12], importable={12, 13})
    assert cuda_backend._variant == 13 and tried == ["tempbalance._cuda13._core_cuda"]


def test_import_falls_back_to_another_variant_and_says_why_when_none_loads(monkeypatch):
    module, tried = _import_with(monkeypatch, "12.6", [13, 12], importable={13})
    assert module is not None and cuda_backend._variant == 13
    assert tried == ["tempbalance._cuda12._core_cuda", "tempbalance._cuda13._core_cuda"]
    module, _ = _import_with(monkeypatch, "12.6", [13, 12], importable=set())
    assert module is None and cuda_backend._variant is None
    assert "not importable" in cuda_backend._reason and "libfoo.so.12" in cuda_backend._reason
    assert "libfoo.so.13" in cuda_backend._reason
    module, _ = _import_with(monkeypatch, "12.6", [], importable={12})
    assert module is None and cuda_backend._reason.startswith("not built")


def test_import_honours_tempbalance_cuda_variant(monkeypatch):
    module, tried = _import_with(monkeypatch, "12.6", [13, 12], importable={12, 13}, forced="13")
    assert cuda_backend._variant == 13 and tried == ["tempbalance._cuda13._core_cuda"]
    module, tried = _import_with(monkeypatch, "12.6", [13, 12], importable={12, 13}, forced="11")
    assert module is None and not tried
    assert "TEMPBALANCE_CUDA_VARIANT=11" in cuda_backend._reason and "[13, 12]" in cuda_backend._reason


def test_status_names_the_loaded_variant(monkeypatch):
    install(monkeypatch, FakeDeviceCore())
    monkeypatch.setattr(cuda_backend, "_variant", 12)
    assert cuda_backend.cuda_status().startswith("CUDA core ready: CUDA 12 build, cuSOLVER ")


def test_built_variants_lists_the_installed_cores():
    import os
    import re

    here = os.path.dirname(tempbalance.__file__)  # the package root, where the _cuda<major> folders are
    want = sorted((int(n[5:]) for n in os.listdir(here) if re.fullmatch(r"_cuda\d+", n)), reverse=True)
    assert cuda_backend.built_variants() == want
    expected = os.environ.get("TB_EXPECT_CUDA_VARIANTS")  # the CI wheel: what scripts/build_wheels.sh built
    if expected is not None:
        assert want == sorted((int(m) for m in expected.split(",") if m), reverse=True)
