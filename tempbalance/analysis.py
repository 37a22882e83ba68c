"""analyze(): every analysable matrix of a model in one batched spectral pass, into a Report."""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, Iterable

import torch
from torch import nn

from . import _backend, cuda_backend, hill, spectra
from .adapters import MatrixSpec, get_adapter, specs_from_named_weights, unanalysed, unwrap_model
from .report import LayerResult, Report

DEFAULT_CHUNK_BYTES = 1 << 30  # matrices + Grams in flight per native call: a 7B model never holds all its Grams
DEFAULT_MIN_EIGS = 50


def _validate(*, xmin_pos, xmin_rule, min_eigs, dtype, backend, num_threads, chunk_bytes, conv_mode, conv_scale,
              zero_tol, zero_rel, zero_rtol, filter_zeros) -> None:
    hill.validate_options(xmin_pos=xmin_pos, xmin_rule=xmin_rule, min_eigs=min_eigs, zero_tol=zero_tol,
                          zero_rel=zero_rel)
    spectra.check_dtype(dtype)
    if backend not in _backend.BACKENDS:
        raise ValueError(f"backend must be one of {_backend.BACKENDS}, got {backend!r}")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise ValueError(f"num_threads must be None or an integer >= 1, got {num_threads!r}")
    if chunk_bytes is not None and (isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int)
                                    or chunk_bytes < 1):
        raise ValueError(f"chunk_bytes must be None or an integer >= 1, got {chunk_bytes!r}")
    if conv_mode not in spectra.CONV_MODES:
        raise ValueError(f"conv_mode must be one of {spectra.CONV_MODES}, got {conv_mode!r}")
    if not (isinstance(conv_scale, (int, float)) and math.isfinite(conv_scale) and conv_scale > 0):
        raise ValueError(f"conv_scale must be a finite number > 0, got {conv_scale!r}")
    if zero_rtol is not None and not (isinstance(zero_rtol, (int, float)) and math.isfinite(zero_rtol)
                                      and zero_rtol >= 0):
        raise ValueError(f"zero_rtol must be None (automatic) or a finite number >= 0, got {zero_rtol!r}")
    if not isinstance(filter_zeros, bool):
        raise ValueError(f"filter_zeros must be True or False, got {filter_zeros!r}")


def check_options(*, xmin_pos=2.0, xmin_rule="median", min_eigs=DEFAULT_MIN_EIGS, dtype=None, backend="auto",
                  num_threads=None, chunk_bytes=None, conv_mode="slices", conv_scale=1.0, zero_tol=1e-5,
                  zero_rel=0.0, zero_rtol=None, filter_zeros=False, skipped=None) -> None:
    """Raise ``ValueError`` naming the first bad option of :func:`analyze_specs` (the defaults are its own)."""
    _validate(xmin_pos=xmin_pos, xmin_rule=xmin_rule, min_eigs=min_eigs, dtype=dtype, backend=backend,
              num_threads=num_threads, chunk_bytes=chunk_bytes, conv_mode=conv_mode, conv_scale=conv_scale,
              zero_tol=zero_tol, zero_rel=zero_rel, zero_rtol=zero_rtol, filter_zeros=filter_zeros)


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
                if isinstance(k, torch.Tensor):
                    e = e * torch.exp2(2.0 * k.to(torch.float64))
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


def start_pass(
    specs: list[MatrixSpec],
    *,
    xmin_pos: float = 2.0,
    xmin_rule: str = "median",
    min_eigs: int = DEFAULT_MIN_EIGS,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    filter_zeros: bool = False,
    zero_tol: float = 1e-5,
    zero_rel: float = 0.0,
    zero_rtol: float | None = None,
    num_threads: int | None = None,
    chunk_bytes: int | None = None,
    conv_mode: str = "slices",
    conv_scale: float = 1.0,
) -> SpectralPass:
    """Everything of :func:`analyze_specs` up to the Report: on CUDA weights, nothing here waits for the GPU."""
    _validate(xmin_pos=xmin_pos, xmin_rule=xmin_rule, min_eigs=min_eigs, dtype=dtype, backend=backend,
              num_threads=num_threads, chunk_bytes=chunk_bytes, conv_mode=conv_mode, conv_scale=conv_scale,
              zero_tol=zero_tol, zero_rel=zero_rel, zero_rtol=zero_rtol, filter_zeros=filter_zeros)
    settings = dict(xmin_pos=xmin_pos, xmin_rule=xmin_rule, min_eigs=min_eigs,
                    dtype="auto" if dtype is None else str(dtype).replace("torch.", ""), backend="",
                    filter_zeros=filter_zeros, zero_tol=zero_tol, zero_rel=zero_rel,
                    zero_rtol="auto" if zero_rtol is None else zero_rtol, conv_mode=conv_mode, conv_scale=conv_scale)
    out = SpectralPass(specs, settings, time.perf_counter())
    use_cuda = backend != "torch"  # CUDA weights go to the CUDA core unless the torch reference was asked for
    dims: dict[int, int] = {}
    batch = _GramBatcher(backend, num_threads, chunk_bytes or DEFAULT_CHUNK_BYTES)
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
                out.dtypes[idx] = spectra.analysis_dtype(w.dtype, dtype)
                stack = spectra.slices(w, spec.kind, conv_mode=conv_mode, conv_scale=conv_scale,
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

    for idx, msg in batch.errors.items():
        out.results[idx] = _failed(specs[idx], out.shapes[idx], "error", f"layer '{specs[idx].name}': {msg}")
    done = [idx for idx in out.shapes if idx in batch.eigs]
    rtol = {idx: hill.default_zero_rtol(dims[idx], out.dtypes[idx]) if zero_rtol is None else zero_rtol
            for idx in done}
    options = dict(xmin_pos=xmin_pos, xmin_rule=xmin_rule, filter_zeros=filter_zeros, zero_tol=zero_tol,
                   zero_rel=zero_rel, min_eigs=min_eigs)
    out.device_tables = _device_metrics(batch.eigs, done, rtol, options)  # spectra on a GPU: Hill on the GPU
    on_device = {idx for idxs, _, _ in out.device_tables for idx in idxs}
    on_host = [idx for idx in done if idx not in on_device]
    # backend="native" needs the CPU core only when the CPU path has work (CUDA weights need the CUDA core only)
    host_backend = _backend.name(backend) if on_host or not on_device else ""
    if on_host:
        out.host_metrics = dict(zip(on_host, hill.hill_metrics(
            [batch.eigs[idx] for idx in on_host], zero_rtol=[rtol[idx] for idx in on_host], backend=host_backend,
            assume_sorted=True, num_threads=num_threads, **options)))
    out.backend_used = host_backend if not on_device else ("cuda" if not on_host else f"cuda+{host_backend}")
    return out


def analyze_specs(specs: list[MatrixSpec], *, skipped: list[tuple[str, str]] | None = None,
                  **options: Any) -> Report:
    """Analyse prepared :class:`MatrixSpec` s (what :func:`analyze` and the scheduler call). See :func:`analyze`;
    ``options`` are the keyword arguments of :func:`start_pass`."""
    report = start_pass(specs, **options).report()
    report.skipped = list(skipped or [])
    return report


def _device_metrics(eigs: dict[int, Any], done: list[int], rtol: dict[int, float],
                    options: dict[str, Any]) -> list[tuple[list[int], torch.Tensor, list[float]]]:
    """Hill metrics tables of the spectra that are device tensors, by the CUDA core's kernel, one per device, not
    waited for. Spectra it cannot take are moved to the host (the caller does them)."""
    by_device: dict[torch.device, list[int]] = {}
    for idx in done:
        if isinstance(eigs[idx], torch.Tensor):
            by_device.setdefault(eigs[idx].device, []).append(idx)
    out = []
    for idxs in by_device.values():
        rtols = [rtol[idx] for idx in idxs]
        got = cuda_backend.hill_lr([eigs[idx] for idx in idxs], [-1] * len(idxs), 0, hill=dict(options, zero_rtol=rtols))
        if got is None:  # not usable after all: the host path takes these spectra
            for idx in idxs:
                eigs[idx] = eigs[idx].cpu().numpy()
            continue
        out.append((idxs, got[0], rtols))
    return out


def _named_pairs(obj: Any) -> list[tuple[str, Any]] | None:
    if isinstance(obj, Mapping):
        return list(obj.items())
    if isinstance(obj, (str, bytes, torch.Tensor)):
        return None
    if isinstance(obj, Iterable):
        pairs = list(obj)
        if all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
            return pairs
    return None


def analyze(
    model_or_named_weights: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    *,
    xmin_pos: float = 2.0,
    xmin_rule: str = "median",
    min_eigs: int | None = None,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    filter_zeros: bool = False,
    include_embeddings: bool = False,
    adapter: Any = "auto",
    num_threads: int | None = None,
    chunk_bytes: int | None = None,
    conv_mode: str = "slices",
    conv_scale: float = 1.0,
    zero_tol: float = 1e-5,
    zero_rel: float = 0.0,
    zero_rtol: float | None = None,
) -> Report:
    """Spectral analysis (ESD -> PL_Alpha_Hill and friends) of every analysable matrix, in one batched pass.

    Args:
        model_or_named_weights: an ``nn.Module`` (matrices found by its adapter), a state_dict-like mapping, or an
            iterable of ``(name, tensor)`` (then every floating 2-d+ tensor except biases and embeddings).
        xmin_pos: the tail starts at index ``floor(N / xmin_pos)`` of the ascending spectrum (2 = median; > 1).
        xmin_rule: "median" (default, uses ``xmin_pos``), "fit" (smallest KS distance), "peak", "peak_compat".
        min_eigs: layers with fewer eigenvalues are reported but not fitted; ``None`` = the adapter's default
            (50 for transformers/CNNs).
        dtype: analysis precision, ``torch.float32`` or ``torch.float64``; ``None`` (default) follows each weight:
            float64 (complex128) weights in float64, the rest in float32 (bf16/fp16 are upcast).
        backend: "native" (compiled core), "torch" (reference), "auto" (native when built).
        filter_zeros: drop eigenvalues ``<= max(zero_tol, zero_rel * lambda_max)`` before fitting.
        include_embeddings: analyse embedding matrices too.
        adapter: "auto", a registered adapter name, or an :class:`~tempbalance.adapters.Adapter`.
        num_threads: native worker threads (default: torch's thread count).
        chunk_bytes: bound on the bytes of matrices + Grams solved per native call (default 1 GiB).
        conv_mode: "slices" (one (out, in) matrix per kernel position, pooled) or "flatten" ((out, in*k)).
        conv_scale: multiplies conv eigenvalues (0.5 reproduces the reference code; alpha is unchanged).
        zero_rtol: numerical-zero guard, ``xmin <= zero_rtol * lambda_max`` -> status "xmin_not_positive";
            ``None`` = ``d * eps(dtype)`` per matrix, ``d`` its Gram size (the worst-case round-off of the solve).

    Returns:
        A :class:`Report`. A layer that cannot be analysed (NaN/Inf weights, empty, too few eigenvalues, flat
        tail, ...) gets a row with a non-"ok" status and a reason naming it; weights of a model that no adapter
        rule analyses (recurrent weights, embeddings not asked for, bare 2-d parameters) are named with a reason
        in ``Report.skipped``; bad options raise ``ValueError``. Weights are read under ``torch.no_grad`` and
        never modified.
    """
    if not isinstance(include_embeddings, bool):
        raise ValueError(f"include_embeddings must be True or False, got {include_embeddings!r}")
    skipped: list[tuple[str, str]] = []
    if isinstance(model_or_named_weights, nn.Module):
        chosen = get_adapter(model_or_named_weights, adapter)
        specs = chosen.enumerate(model_or_named_weights, include_embeddings=include_embeddings)
        skipped = unanalysed(unwrap_model(model_or_named_weights), specs)
        default_min = getattr(chosen, "min_eigs", DEFAULT_MIN_EIGS)
    else:
        pairs = _named_pairs(model_or_named_weights)
        if pairs is None:
            raise TypeError(
                "model_or_named_weights must be an nn.Module, a mapping name -> tensor, or an iterable of "
                f"(name, tensor) pairs, got {type(model_or_named_weights).__name__}"
            )
        specs, skipped = specs_from_named_weights(pairs, include_embeddings=include_embeddings)
        default_min = DEFAULT_MIN_EIGS
    return analyze_specs(
        specs, xmin_pos=xmin_pos, xmin_rule=xmin_rule, min_eigs=default_min if min_eigs is None else min_eigs,
        dtype=dtype, backend=backend, filter_zeros=filter_zeros, zero_tol=zero_tol, zero_rel=zero_rel,
        zero_rtol=zero_rtol, num_threads=num_threads, chunk_bytes=chunk_bytes, conv_mode=conv_mode,
        conv_scale=conv_scale, skipped=skipped,
    )
