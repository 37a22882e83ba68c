"""One batched spectral pass over prepared matrices (:class:`~tempbalance.analysis.specs.MatrixSpec` s) into a
:class:`Report`: :func:`analyze_specs`, and :func:`start_pass`, which leaves GPU work queued. A model's matrices
come from its adapter (:func:`tempbalance.analyze`)."""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from .. import _backend
from . import cuda_backend, hill, spectra
from .report import LayerResult, Report
from .options import AnalysisOptions, HillOptions
from .specs import MatrixSpec

DEFAULT_CHUNK_BYTES = 1 << 30  # matrices + Grams in flight per native call: a 7B model never holds all its Grams


def _failed(spec: MatrixSpec, shape: tuple[int, ...], status: str, reason: str, n_eigs: int = 0) -> LayerResult:
    nan = math.nan
    return LayerResult(spec.name, spec.unit, spec.kind, shape, n_eigs, nan, nan, 0, nan, nan, nan, nan, nan,
                       status, reason)


def metrics_row(spec: MatrixSpec, shape: tuple[int, ...], m: dict[str, Any]) -> LayerResult:
    """The report row of one matrix from its Hill metrics (a dict of :func:`tempbalance.hill.hill_metrics`)."""
    reason = f"layer '{spec.name}': {m['reason']}" if m["status"] != "ok" else ""
    return LayerResult(spec.name, spec.unit, spec.kind, shape, m["n_eigs"], m["alpha"], m["xmin"], m["n_tail"],
                       m["spectral_norm"], m["frobenius"], m["stable_rank"], m["alpha_hat"], m["ks_distance"],
                       m["status"], reason)


def _non_finite_why(weight: torch.Tensor, dtype: torch.dtype) -> str:
    """Why a spectrum is not finite: NaN/Inf weights, a Gram that overflows ``dtype``, or else the eigensolver (it
    reported no convergence). Reads the weight (on a GPU it waits for it: failed layers only)."""
    w = weight.detach()
    n_nan = int(torch.isnan(w).sum()) if (w.is_floating_point() or w.is_complex()) else 0
    n_inf = int(torch.isinf(w).sum()) if (w.is_floating_point() or w.is_complex()) else 0
    if n_nan or n_inf:
        return f"weight has {n_nan} NaN and {n_inf} Inf of {w.numel()} entries"
    real = dtype.to_real() if dtype.is_complex else dtype
    square = float(w.to(torch.complex128 if w.is_complex() else torch.float64).abs().pow(2).sum())
    if not square <= torch.finfo(real).max:
        return (f"weight overflows {dtype} in its Gram (largest |w| = {w.abs().max().item():.3g}, squared norm "
                f"{square:.3g}); use float64")
    return "the eigensolver did not converge on its Gram (the weights are finite)"


def _non_finite_reason(spec: MatrixSpec, weight: torch.Tensor, dtype: torch.dtype) -> str:
    return f"layer '{spec.name}': {_non_finite_why(weight, dtype)}"


def _non_finite_why_late(spec: MatrixSpec, dtype: torch.dtype) -> str:
    try:
        return _non_finite_why(spec.weight(), dtype)
    except Exception as e:  # noqa: BLE001
        return f"non-finite weight or Gram ({type(e).__name__}: {e})"


class _GramBatcher:
    """Collects slice stacks and solves them a chunk at a time, so memory stays within ``chunk_bytes``.

    CPU stacks give numpy spectra (non-finite ones never get here: ``analyze_specs`` checks them first). CUDA
    stacks (CUDA core usable) give device tensors without waiting for the GPU: the core screens every Gram on the
    device, and a non-finite one comes back as a NaN spectrum.
    """

    def __init__(self, backend: str, num_threads: int | None, chunk_bytes: int):
        self.backend, self.num_threads, self.chunk_bytes = backend, num_threads, chunk_bytes
        self.pending: list[tuple[int, torch.Tensor, bool]] = []
        self.bytes = 0
        self.shifts: dict[int, Any] = {}  # k of spectra.unit_scale per stack
        self.eigs: dict[int, Any] = {}
        self.errors: dict[int, str] = {}

    def add(self, idx: int, stack: torch.Tensor, on_device: bool = False, largest: float | None = None) -> None:
        """Queue ``stack`` (``largest``: its largest |entry| when known, for the rescaling)."""
        d = spectra.gram_dim(stack)
        nbytes = stack.numel() * stack.element_size() + stack.shape[0] * d * d * stack.element_size()
        if self.pending and self.bytes + nbytes > self.chunk_bytes:
            self.flush()
        stack, self.shifts[idx] = spectra.unit_scale(stack, on_device, largest)
        self.pending.append((idx, stack, on_device))
        self.bytes += nbytes
        if self.bytes >= self.chunk_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending, self.bytes = self.pending, [], 0
        groups: dict[torch.device | None, list[tuple[int, torch.Tensor]]] = {}  # None: the CPU path
        for idx, stack, on_device in pending:
            groups.setdefault(stack.device if on_device else None, []).append((idx, stack))
        for device, items in groups.items():
            self._solve(items, keep_device=device is not None)

    def _solve(self, items: list[tuple[int, torch.Tensor]], keep_device: bool) -> None:
        idxs, stacks = zip(*items)
        try:
            results = spectra.gram_eigvals(stacks, backend=self.backend, num_threads=self.num_threads)
        except Exception:  # noqa: BLE001 - isolate the matrix that failed; the others still get analysed
            results = []
            for idx, s in zip(idxs, stacks):
                try:
                    results.append(spectra.gram_eigvals([s], backend=self.backend, num_threads=self.num_threads)[0])
                except Exception as e:  # noqa: BLE001
                    self.errors[idx] = f"{type(e).__name__}: {e}"
                    results.append(None)
        for idx, e in zip(idxs, results):
            if e is not None:
                e = e.to(torch.float64)
                k = self.shifts[idx]
                if isinstance(k, torch.Tensor):  # a device stack's shift; its spectrum may have been solved on the CPU
                    e = e * torch.exp2(2.0 * k.to(device=e.device, dtype=torch.float64))
                elif k:
                    e = e * 4.0 ** k
                keep = keep_device and cuda_backend.is_device(e)
                self.eigs[idx] = e if keep else e.cpu().numpy()  # device spectra stay there for the Hill kernel


def _largest(stack: torch.Tensor) -> float:
    """The largest |entry| of ``stack`` (of the real and imaginary parts), or ``inf`` when an entry is not finite.
    One reduction without a mask the size of the weights (an elementwise check cost ~10% of a RoBERTa-base pass):
    min and max propagate NaN and show an Inf, and the value also decides the rescaling of the Gram."""
    lo, hi = torch.aminmax(torch.view_as_real(stack) if stack.is_complex() else stack)
    lo, hi = float(lo), float(hi)
    return max(-lo, hi) if math.isfinite(lo) and math.isfinite(hi) else math.inf


def _all_finite(stack: torch.Tensor) -> bool:
    """Whether every entry is finite."""
    return math.isfinite(_largest(stack))


class SpectralPass:
    """An analysis pass whose GPU work is enqueued but not waited for.

    :func:`start_pass` builds it: the layers that failed on the host have their rows, the CPU spectra their Hill
    metrics, and the spectra on a GPU a ``(n, 10)`` metrics table there. :meth:`report` waits for the GPU (one copy
    of each table) and builds the :class:`Report`; :meth:`device_table` gives the table of a pass done entirely on
    one GPU, without waiting.
    """

    def __init__(self, specs: list[MatrixSpec], settings: dict[str, Any], start: float):
        self.specs, self.settings, self.start = specs, settings, start
        self.results: list[LayerResult | None] = [None] * len(specs)
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.dtypes: dict[int, torch.dtype] = {}  # each matrix's analysis precision
        self.host_metrics: dict[int, dict] = {}
        self.device_tables: list[tuple[list[int], torch.Tensor, list[float]]] = []  # (indices, table, zero_rtol)
        self.backend_used = ""

    def device_table(self) -> torch.Tensor | None:
        """The metrics table of every layer, in order, on one device - or None unless every layer was analysed
        there (a layer failed on the host, or the CPU path took some)."""
        if len(self.device_tables) != 1 or self.host_metrics or any(r is not None for r in self.results):
            return None
        idxs, table, _ = self.device_tables[0]
        return table if idxs == list(range(len(self.specs))) else None

    def report(self) -> Report:
        """The finished :class:`Report` (waits for the GPU once per device)."""
        metrics = dict(self.host_metrics)
        min_eigs = self.settings["min_eigs"]
        for idxs, table, rtol in self.device_tables:
            rows = hill.rows_from_table(table.cpu().numpy(), min_eigs=min_eigs, zero_rtol=rtol)
            for idx, row in zip(idxs, rows):
                if row["status"] == "non_finite":  # screened or failed on the device: say which
                    row["reason"] = _non_finite_why_late(self.specs[idx], self.dtypes[idx])
                metrics[idx] = row
        results = list(self.results)
        for idx, m in metrics.items():
            results[idx] = metrics_row(self.specs[idx], self.shapes[idx], m)
        return Report([r for r in results if r is not None], seconds=time.perf_counter() - self.start,
                      settings=dict(self.settings, backend=self.backend_used), skipped=[])


def start_pass(specs: list[MatrixSpec], options: AnalysisOptions | None = None, **overrides: Any) -> SpectralPass:
    """Everything of :func:`analyze_specs` up to the Report: on CUDA weights, nothing here waits for the GPU.
    ``options`` (default: the defaults), with ``overrides`` (its fields as keywords) applied."""
    opt = AnalysisOptions.of(options, overrides)
    out = SpectralPass(specs, opt.settings(), time.perf_counter())
    batch = _GramBatcher(opt.backend, opt.num_threads, opt.chunk_bytes or DEFAULT_CHUNK_BYTES)
    dims = _queue_stacks(specs, opt, out, batch)
    for idx, msg in batch.errors.items():
        out.results[idx] = _failed(specs[idx], out.shapes[idx], "error", f"layer '{specs[idx].name}': {msg}")
    done = [idx for idx in out.shapes if idx in batch.eigs]
    rtol = {idx: hill.default_zero_rtol(dims[idx], out.dtypes[idx]) if opt.zero_rtol is None else opt.zero_rtol
            for idx in done}
    fit = opt.hill_only()
    out.device_tables = _device_metrics(batch.eigs, done, rtol, fit)  # spectra on a GPU: Hill on the GPU
    on_device = {idx for idxs, _, _ in out.device_tables for idx in idxs}
    on_host = [idx for idx in done if idx not in on_device]
    # backend="native" needs the CPU core only when the CPU path has work (CUDA weights need the CUDA core only)
    host_backend = _backend.name(opt.backend) if on_host or not on_device else ""
    if on_host:
        out.host_metrics = dict(zip(on_host, hill.hill_metrics(
            [batch.eigs[idx] for idx in on_host], fit, zero_rtol=[rtol[idx] for idx in on_host], backend=host_backend,
            assume_sorted=True, num_threads=opt.num_threads)))
    out.backend_used = host_backend if not on_device else ("cuda" if not on_host else f"cuda+{host_backend}")
    return out


def _queue_stacks(specs: list[MatrixSpec], opt: AnalysisOptions, out: SpectralPass,
                  batch: _GramBatcher) -> dict[int, int]:
    """Read every weight, form its slice stack and queue it on ``batch`` (solved a chunk at a time); a layer that
    cannot be read or is not finite gets its failed row in ``out`` and never reaches a solver. Returns the Gram
    size of every queued matrix."""
    use_cuda = opt.backend != "torch"  # CUDA weights go to the CUDA core unless the torch reference was asked for
    dims: dict[int, int] = {}
    with torch.no_grad():
        for idx, spec in enumerate(specs):
            shape: tuple[int, ...] = ()
            try:
                w = spec.weight()
                shape = tuple(w.shape)
                if w.numel() == 0:
                    out.results[idx] = _failed(spec, shape, "empty", f"layer '{spec.name}': empty weight of shape "
                                                                      f"{shape}")
                    continue
                on_device = use_cuda and cuda_backend.use_for(w)
                out.dtypes[idx] = spectra.analysis_dtype(w.dtype, opt.dtype)
                stack = spectra.slices(w, spec.kind, conv_mode=opt.conv_mode, conv_scale=opt.conv_scale,
                                       dtype=out.dtypes[idx], arg=f"layer '{spec.name}'", keep_device=on_device)
                largest = None if on_device else _largest(stack)
                if largest is not None and not math.isfinite(largest):
                    out.results[idx] = _failed(spec, shape, "non_finite",
                                               _non_finite_reason(spec, w, out.dtypes[idx]))
                    continue
            except Exception as e:  # noqa: BLE001 - one bad layer never stops the pass
                out.results[idx] = _failed(spec, shape, "error", f"layer '{spec.name}': {type(e).__name__}: {e}")
                continue
            out.shapes[idx], dims[idx] = shape, spectra.gram_dim(stack)
            batch.add(idx, stack, on_device, largest)
            del w, stack
        batch.flush()
    return dims


def analyze_specs(specs: list[MatrixSpec], options: AnalysisOptions | None = None, *,
                  skipped: list[tuple[str, str]] | None = None, **overrides: Any) -> Report:
    """Analyse prepared :class:`MatrixSpec` s (what :func:`tempbalance.analyze` and the scheduler call):
    ``options`` (:class:`~tempbalance.analysis.options.AnalysisOptions`; default: the defaults) with ``overrides``
    (its fields as keywords) applied; ``skipped``: the (name, reason) pairs the report lists as not analysed."""
    report = start_pass(specs, options, **overrides).report()
    report.skipped = list(skipped or [])
    return report


def _device_metrics(eigs: dict[int, Any], done: list[int], rtol: dict[int, float],
                    fit: HillOptions) -> list[tuple[list[int], torch.Tensor, list[float]]]:
    """Hill metrics tables of the spectra that are device tensors, by the CUDA core's kernel, one per device, not
    waited for. Spectra it cannot take are moved to the host (the caller does them)."""
    by_device: dict[torch.device, list[int]] = {}
    for idx in done:
        if isinstance(eigs[idx], torch.Tensor):
            by_device.setdefault(eigs[idx].device, []).append(idx)
    out = []
    for idxs in by_device.values():
        rtols = [rtol[idx] for idx in idxs]
        got = cuda_backend.hill_lr([eigs[idx] for idx in idxs], [-1] * len(idxs), 0, hill=fit, zero_rtol=rtols)
        if got is None:  # not usable after all: the host path takes these spectra
            for idx in idxs:
                eigs[idx] = eigs[idx].cpu().numpy()
            continue
        out.append((idxs, got[0], rtols))
    return out
