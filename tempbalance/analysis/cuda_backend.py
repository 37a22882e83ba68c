"""Dispatch of CUDA tensors to the CUDA core (`tempbalance._cuda<major>._core_cuda`), and why it is not used when it
is not. A release wheel carries one core per CUDA major (12, 13); the one matching torch's CUDA is loaded.

The extension is separate from the CPU core so that a CPU-only install never needs CUDA libraries. It takes raw
device pointers and torch's current stream, so it does not link libtorch, and it `dlopen`s the cuSOLVER/cuBLAS
that torch already loaded (or torch's NVIDIA wheels). Whenever the module, a driver, a device, the libraries or
a symbol is missing, callers get ``None`` here, one ``RuntimeWarning`` per process, and use the CPU path
(the weights are copied to host memory and analysed by the CPU core, or the torch reference without it).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from types import ModuleType
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .. import _warn
from .options import HillOptions

_module: ModuleType | None = None
_variant: int | None = None  # CUDA major of the imported core variant
_ready: ModuleType | None = None
_reason: str | None = None
_libraries: dict | None = None
_checked = False
_warned = False
_failed_warned = False

# The device type the core serves. Tests point it at "cpu" (with a stand-in module) to run the dispatch without a GPU.
DEVICE_TYPE = "cuda"
_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.complex64: "complex64",
           torch.complex128: "complex128"}
# Grams solved together (one cusolverDnXsyevBatched call) hold at most this many bytes; on an out-of-memory (torch's
# allocator, or cuBLAS/cuSOLVER's own allocations) the pass retries with a quarter of it, down to one Gram at a time.
GROUP_BYTES = 1 << 30
_OutOfMemory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
# What the last gram_eigvalsh call did ({"groups", "batched_groups", "scratch_bytes", "solver_bytes",
# "solver_host_bytes", "group_bytes", "retries"}: retries = out-of-memory retries with smaller groups), for
# diagnostics (scripts/gpu_check.sh).
last_pass: dict[str, int] = {}


class DeviceMemoryError(RuntimeError):
    """The GPU has too little free memory for the spectral pass even one Gram at a time."""


def library_dirs() -> list[str]:
    """Directories of the NVIDIA wheels next to torch (CUDA 13: nvidia/cu13/lib; CUDA 12: nvidia/<lib>/lib)."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    dirs = []
    for root in roots:
        # CUDA 13 wheels share one directory; CUDA 12 wheels have one per package (cuSOLVER's dependencies too).
        for sub in ("cu13", "cusolver", "cublas", "cusparse", "nvjitlink", "cu12"):
            lib = os.path.join(root, sub, "lib")
            if os.path.isdir(lib):
                dirs.append(lib)
    return dirs


def cuda_major() -> int:
    """CUDA major version torch was built with (0 when torch has no CUDA: then both 13 and 12 are tried)."""
    version = torch.version.cuda
    try:
        return int(version.split(".")[0]) if version else 0
    except ValueError:
        return 0


def built_variants() -> list[int]:
    """CUDA majors of the core variants installed with the package (``tempbalance/_cuda<major>/``), newest first.
    A release wheel carries 12 and 13; a source build the one its nvcc made."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package root: tempbalance/
    found = (re.fullmatch(r"_cuda(\d+)", name) for name in os.listdir(here))
    return sorted((int(m.group(1)) for m in found if m and os.path.isdir(os.path.join(here, m.group(0)))),
                  reverse=True)


def variant_order(torch_major: int, built: Sequence[int], forced: str | None = None) -> list[int]:
    """The built variants to try, best first, for a torch built with CUDA ``torch_major`` (0: without CUDA).

    torch's own CUDA major first: the same runtime major as torch, so whatever driver runs torch runs it. Then
    the others newest first (a CUDA 12 core also runs under the newer drivers a CUDA 13 torch needs).
    ``forced`` (TEMPBALANCE_CUDA_VARIANT, e.g. "12") tries only that one."""
    if forced:
        return [int(forced)] if forced.isdigit() and int(forced) in built else []
    return sorted(built, key=lambda major: (major != torch_major, -major))


def _import() -> ModuleType | None:
    global _module, _reason, _variant
    if _module is None and _reason is None:
        built = built_variants()
        forced = os.environ.get("TEMPBALANCE_CUDA_VARIANT")
        order = variant_order(cuda_major(), built, forced)
        failures = []
        for major in order:
            try:
                _module = importlib.import_module(f"tempbalance._cuda{major}._core_cuda")
                _variant = major
                return _module
            except ImportError as exc:
                failures.append(f"_cuda{major}: {exc}")
        if not built:
            _reason = ("not built (no tempbalance._cuda<major>._core_cuda); rebuild with nvcc on PATH and the "
                       "nvidia-cusolver/nvidia-cublas headers installed (TEMPBALANCE_CUDA=ON makes a missing piece a "
                       "build error)")
        elif not order:
            _reason = f"TEMPBALANCE_CUDA_VARIANT={forced} names no built variant (built: CUDA {built})"
        else:
            _reason = f"not importable ({'; '.join(failures)})"
    return _module


def _check() -> ModuleType | None:
    """The ready module (built, a device visible, libraries loaded), else None with `_reason` set. Runs once."""
    global _ready, _reason, _libraries, _checked
    if _checked:
        return _ready
    _checked = True
    module = _import()
    if module is None:
        return None
    try:
        count, why = module.device_count()
        if count <= 0:
            _reason = f"built, but no usable CUDA device ({why or 'no devices'})"
            return None
        _libraries = module.load(cuda_major(), library_dirs())
    except Exception as exc:  # noqa: BLE001 - a missing library or symbol must mean "fall back", never a crash
        _reason = f"built, but cuSOLVER/cuBLAS could not be loaded: {exc}"
        return None
    _ready = module
    return module


def cuda_status() -> str:
    """One line: whether the CUDA core is built and usable here, and if not, why (no GPU, no library, ...)."""
    module = _check()
    if module is not None:
        batched = "batched syev" if _libraries.get("batched") else "per-matrix syevd (no cusolverDnXsyevBatched)"
        built = f"CUDA {_variant} build, " if _variant else ""
        return f"CUDA core ready: {built}cuSOLVER {_libraries['cusolver']}, cuBLAS {_libraries['cublas']}, {batched}"
    return f"CUDA core unavailable: {_reason}"


def _fallback_warning() -> None:
    global _warned
    if not _warned:
        _warned = True
        _warn.warn(f"tempbalance: {cuda_status()}; CUDA weights are analysed on the CPU path instead (copied to "
                   "host memory)", RuntimeWarning)


def _failure_warning(exc: BaseException) -> None:
    """A call into the loaded core failed (a cuBLAS/cuSOLVER error status, or a kernel launch that could not get
    memory): that batch goes to the CPU path."""
    global _failed_warned
    if not _failed_warned:
        _failed_warned = True
        _warn.warn(f"tempbalance: the CUDA core failed ({exc}); those weights are analysed on the CPU path "
                   "instead (further failures are not reported)", RuntimeWarning)


def is_device(t: torch.Tensor) -> bool:
    """Whether ``t`` lives where the CUDA core works (a CUDA tensor)."""
    return t.device.type == DEVICE_TYPE


def use_for(t: torch.Tensor) -> bool:
    """True when ``t`` is a CUDA tensor and the CUDA core is usable. A CUDA tensor while the core is not usable
    gives False and, once per process, a ``RuntimeWarning`` saying why; a CPU tensor gives False silently."""
    if not is_device(t):
        return False
    if _check() is None:
        _fallback_warning()
        return False
    return True


@contextlib.contextmanager
def _current_stream(device: torch.device) -> Iterator[int]:
    """Makes ``device`` current and yields torch's current stream on it as an integer handle: the core enqueues
    there, so its work is ordered with the caller's."""
    with torch.cuda.device(device):
        yield torch.cuda.current_stream(device).cuda_stream


def max_gram_dim() -> int:
    """The largest Gram the loaded cuSOLVER takes (0: no limit); larger ones go to the CPU path."""
    return int((_libraries or {}).get("max_n", 0))


def host_to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on ``device`` without waiting: a pinned staging copy is truly asynchronous."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def _gram_bytes(stack: torch.Tensor) -> int:
    k = min(int(stack.shape[1]), int(stack.shape[2]))
    return k * k * stack.element_size()


def _memory_errors(module: ModuleType) -> tuple[type[BaseException], ...]:
    """What an out-of-memory raises: torch's allocator (the pass's scratch), and the core's ``DeviceAllocError``
    (cuBLAS, cuSOLVER or the CUDA runtime could not allocate their own device memory)."""
    own = getattr(module, "DeviceAllocError", None)
    return (_OutOfMemory,) if own is None else (_OutOfMemory, own)


def _release_cached_memory(device: torch.device) -> None:
    """Hands torch's cached, unused blocks back to the driver, so that cuBLAS/cuSOLVER's own allocations can use
    them (only after they failed: it waits for the device)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _solve_on_device(module: ModuleType, mats: list, name: str, stream: int, device: torch.device,
                     smallest: int) -> dict:
    """One gram_eigvalsh call whose scratch comes from torch's caching allocator (counted and reused like every
    other allocation). An out-of-memory - of that allocator, or inside cuBLAS/cuSOLVER - retries with smaller solve
    groups (a quarter each time; after a library's failure, torch's cached blocks are released first), then raises
    DeviceMemoryError. Never a switch to the CPU."""
    group_bytes, retries = GROUP_BYTES, 0
    memory_errors = _memory_errors(module)
    while True:
        keep: list[torch.Tensor] = []  # alive until the call returns: the work is stream-ordered after it

        def alloc(nbytes: int) -> int:
            buf = torch.empty(int(nbytes), dtype=torch.uint8, device=device)
            keep.append(buf)
            return buf.data_ptr()

        try:
            info = dict(module.gram_eigvalsh(mats, name, stream, alloc, group_bytes))
        except memory_errors as exc:
            failure = exc
        else:
            info.update(group_bytes=group_bytes, retries=retries)
            return info
        finally:
            keep.clear()
        if group_bytes <= smallest:
            raise DeviceMemoryError(
                f"tempbalance: not enough free GPU memory for the spectral pass ({name}; even one Gram at a "
                f"time, {smallest / 2**20:.1f} MiB plus cuSOLVER's workspace, could not be allocated: {failure}). "
                "Free GPU memory (e.g. torch.cuda.empty_cache()) or analyse on the CPU (backend='torch', or "
                "CPU copies of the weights)") from failure
        if not isinstance(failure, _OutOfMemory):
            _release_cached_memory(device)  # the scratch of the failed call is back in torch's cache by now
        group_bytes = max(group_bytes // 4, smallest)
        retries += 1


def gram_eigvals(stacks: Sequence[torch.Tensor], top: Sequence[int] | None = None
                 ) -> list[torch.Tensor | None] | None:
    """Pooled ascending Gram eigenvalues of CUDA stacks (S, m, n) on the current stream, or None to fall back.

    The results stay on the device (real dtype of the input's precision); nothing waits for the GPU. A stack whose
    weights are NaN/Inf, whose Gram overflows the precision, or whose solve fails comes back all NaN (decided on
    the device; the Hill pass reports it as failed). An entry is None for a Gram above the loaded cuSOLVER's size
    limit (the caller solves those on the CPU). None for all (after one warning) when the core is unusable; None
    without a warning for inputs it does not handle (``top``, mixed devices, empty or unsupported dtypes). Raises
    DeviceMemoryError when even one Gram at a time does not fit in GPU memory.
    """
    if not stacks or any(t for t in (top or ())):
        return None
    device = stacks[0].device
    if not is_device(stacks[0]) or any(s.device != device or s.dim() != 3 or s.numel() == 0 or s.dtype not in _DTYPES
                                       for s in stacks):
        return None
    module = _check()
    if module is None:
        _fallback_warning()
        return None
    limit = max_gram_dim()
    with _current_stream(device) as stream:
        stacks = [s.detach().contiguous() for s in stacks]
        outs: list[torch.Tensor | None] = [
            None if limit and min(int(s.shape[1]), int(s.shape[2])) > limit else
            torch.empty(int(s.shape[0]) * min(int(s.shape[1]), int(s.shape[2])),
                        dtype=s.real.dtype if s.is_complex() else s.dtype, device=device) for s in stacks]
        for name in dict.fromkeys(_DTYPES[s.dtype] for s in stacks):  # one call per scalar type
            chosen = [(s, o) for s, o in zip(stacks, outs) if _DTYPES[s.dtype] == name and o is not None]
            if not chosen:
                continue
            mats = [(s.data_ptr(), int(s.shape[0]), int(s.shape[1]), int(s.shape[2]), o.data_ptr()) for s, o in chosen]
            try:
                info = _solve_on_device(module, mats, name, stream, device, max(_gram_bytes(s) for s, _ in chosen))
            except DeviceMemoryError:
                raise
            except RuntimeError as exc:
                _failure_warning(exc)
                return None
            last_pass.clear()
            last_pass.update(info)
        # Each slice's eigenvalues come back ascending; pooling several slices needs one sort (on the device; NaN
        # sorts last, and a failed slice is all NaN anyway).
        return [o if o is None or s.shape[0] == 1 else torch.sort(o).values for s, o in zip(stacks, outs)]


def _per_spectrum(value: Any, n: int, device: torch.device, arg: str) -> tuple[float, torch.Tensor | None]:
    """An option given as one number or one per spectrum -> (scalar, None) or (0.0, float64 device array)."""
    values = np.asarray(value, dtype=np.float64)
    if values.ndim == 0:
        return float(values), None
    values = values.reshape(-1)
    if values.size != n:
        raise ValueError(f"{arg} must be one number or one per spectrum ({n}), got {values.size} values")
    return 0.0, host_to_device(values.tolist(), torch.float64, device)


# The mapping arguments of the hill_lr kernel when it has no units to map (n_units = 0): never read.
_NO_MAPPING = ("sigmoid", 1.0, 0.0, 0.0, 0.0, 0.0, False)


def _mapping_args(mapping: Any) -> tuple:
    """The kernels' mapping arguments from a mapping options object (``mapping``, ``tau``, ``s_lo``, ``s_hi``,
    ``s1``, ``s2``, ``compat``: :class:`tempbalance.training.mapping.MappingOptions`, checked when it was built)."""
    return (mapping.mapping, float(mapping.tau), float(mapping.s_lo), float(mapping.s_hi), float(mapping.s1),
            float(mapping.s2), bool(mapping.compat))


def hill_lr(
    eigs: Sequence[torch.Tensor],
    unit_index: Sequence[int],
    n_units: int,
    *,
    hill: HillOptions | None = None,
    zero_rtol: float | Sequence[float] = 0.0,
    mapping: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Hill metrics (n, 10), mean alpha per unit and LR factor per unit, computed on the device, or None.

    ``eigs``: ascending CUDA spectra (one per matrix, all on one device), ``unit_index[j]`` the unit of spectrum j
    (-1: none; ``n_units=0`` computes the metrics only). ``hill``: the fit
    (:class:`~tempbalance.analysis.options.HillOptions`, default: its defaults); ``zero_rtol``: one value or one per
    spectrum; ``mapping``: the mapping options of the units (needed when ``n_units > 0``). Columns as
    ``hill.HILL_COLUMNS``. The kernels run the same tb_math.h functions as the CPU core (``_core.hill_lr_packed`` is
    their CPU twin); nothing waits for the GPU. None (after one warning) when the core is unusable.
    """
    if not eigs or not is_device(eigs[0]) or any(e.device != eigs[0].device for e in eigs):
        return None
    if len(unit_index) != len(eigs):
        raise ValueError(f"unit_index has {len(unit_index)} entries for {len(eigs)} spectra")
    if n_units and mapping is None:
        raise ValueError(f"hill_lr with {n_units} units needs mapping= (the options of their LR mapping)")
    module = _check()
    if module is None:
        _fallback_warning()
        return None
    h = HillOptions() if hill is None else hill
    margs = _mapping_args(mapping) if n_units else _NO_MAPPING
    device, n = eigs[0].device, len(eigs)
    with _current_stream(device) as stream:
        flat = torch.cat([e.reshape(-1).to(torch.float64) for e in eigs])
        lengths = np.cumsum([0] + [int(e.numel()) for e in eigs]).tolist()
        offsets = host_to_device(lengths, torch.int64, device)
        units = host_to_device([int(u) for u in unit_index], torch.int64, device)
        zero_tol, tols = _per_spectrum(h.zero_tol, n, device, "zero_tol")
        rtol, rtols = _per_spectrum(zero_rtol, n, device, "zero_rtol")
        metrics = torch.empty((n, module.hill_columns), dtype=torch.float64, device=device)
        unit_alpha = torch.empty(n_units, dtype=torch.float64, device=device)
        factors = torch.empty(n_units, dtype=torch.float64, device=device)
        scratch = torch.empty(n + 2 * int(n_units), dtype=torch.float64, device=device)
        try:
            module.hill_lr(flat.data_ptr(), offsets.data_ptr(), n, units.data_ptr(), int(n_units),
                           float(h.xmin_pos), h.xmin_rule, bool(h.filter_zeros), zero_tol, float(h.zero_rel), rtol,
                           int(h.min_eigs), *margs, metrics.data_ptr(), unit_alpha.data_ptr(), factors.data_ptr(),
                           scratch.data_ptr(), stream,
                           zero_tols=tols.data_ptr() if tols is not None else 0,
                           zero_rtols=rtols.data_ptr() if rtols is not None else 0)
        except (RuntimeError, *_memory_errors(module)) as exc:  # a launch's out-of-memory too: never a crash here
            _failure_warning(exc)
            return None
        return metrics, unit_alpha, factors


def unit_factors(metrics: torch.Tensor, unit_index: Sequence[int], n_units: int, *, metric: str,
                 previous: torch.Tensor, mapping: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """TempBalance's (unit values, factors) of a pass, computed on the device from its ``(n, 10)`` metrics
    table (``tb::packed_unit_factors``: units with a failed matrix keep ``previous``, and all keep it when a
    factor comes out non-finite or <= 0); ``mapping``: the units' mapping options. Nothing waits for the GPU; None
    when the core is unusable."""
    module = _check()
    if module is None or not is_device(metrics):
        return None
    device, n = metrics.device, int(metrics.shape[0])
    with _current_stream(device) as stream:
        units = host_to_device([int(u) for u in unit_index], torch.int64, device)
        previous = previous.to(device=device, dtype=torch.float64).contiguous()
        values = torch.empty(n_units, dtype=torch.float64, device=device)
        factors = torch.empty(n_units, dtype=torch.float64, device=device)
        scratch = torch.empty(n + 2 * int(n_units), dtype=torch.float64, device=device)
        try:
            module.unit_factors(metrics.contiguous().data_ptr(), units.data_ptr(), n, int(n_units), metric,
                                previous.data_ptr(), *_mapping_args(mapping), values.data_ptr(), factors.data_ptr(),
                                scratch.data_ptr(), stream)
        except (RuntimeError, *_memory_errors(module)) as exc:
            _failure_warning(exc)
            return None
        return values, factors
