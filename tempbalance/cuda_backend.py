"""Dispatch of CUDA tensors to the CUDA core (`tempbalance._core_cuda`), and why it is not used when it is not.

The extension is separate from the CPU core so that a CPU-only install never needs CUDA libraries. It takes raw
device pointers and torch's current stream, so it does not link libtorch, and it `dlopen`s the cuSOLVER/cuBLAS
that torch already loaded (or torch's NVIDIA wheels). Whenever the module, a driver, a device, the libraries or
a symbol is missing, callers get ``None`` here, one ``RuntimeWarning`` per process, and use the torch path.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import warnings
from types import ModuleType
from typing import Any, Mapping, Sequence

import torch

_module: ModuleType | None = None
_ready: ModuleType | None = None
_reason: str | None = None
_libraries: dict | None = None
_checked = False
_warned = False

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.complex64: "complex64",
           torch.complex128: "complex128"}


def library_dirs() -> list[str]:
    """Directories of the NVIDIA wheels next to torch (CUDA 13: nvidia/cu13/lib; CUDA 12: nvidia/<lib>/lib)."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    dirs = []
    for root in roots:
        for sub in ("cu13", "cusolver", "cublas", "cu12"):
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


def _import() -> ModuleType | None:
    global _module, _reason
    if _module is None and _reason is None:
        try:
            from . import _core_cuda  # type: ignore[attr-defined]
        except ImportError as exc:
            _reason = (f"not built ({exc}); rebuild with nvcc on PATH and the nvidia-cusolver/nvidia-cublas headers "
                       "installed (TEMPBALANCE_CUDA=ON makes a missing piece a build error)")
            return None
        _module = _core_cuda
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
    count, why = module.device_count()
    if count <= 0:
        _reason = f"built, but no usable CUDA device ({why or 'no devices'})"
        return None
    try:
        _libraries = module.load(cuda_major(), library_dirs())
    except RuntimeError as exc:
        _reason = f"built, but cuSOLVER/cuBLAS could not be loaded: {exc}"
        return None
    _ready = module
    return module


def cuda_status() -> str:
    """One line: whether the CUDA core is built and usable here, and if not, why (no GPU, no library, ...)."""
    module = _check()
    if module is not None:
        batched = "batched syev" if _libraries.get("batched") else "per-matrix syevd (no cusolverDnXsyevBatched)"
        return f"CUDA core ready: cuSOLVER {_libraries['cusolver']}, cuBLAS {_libraries['cublas']}, {batched}"
    return f"CUDA core unavailable: {_reason}"


def _fallback_warning() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"tempbalance: {cuda_status()}; using the torch path for CUDA tensors", RuntimeWarning,
                      stacklevel=4)


def gram_eigvals(stacks: Sequence[torch.Tensor], top: Sequence[int] | None = None) -> list[torch.Tensor] | None:
    """Pooled ascending Gram eigenvalues of CUDA stacks (S, m, n) on the current stream, or None to fall back.

    The results stay on the device (real dtype of the input's precision); nothing waits for the GPU. None (after
    one warning) when the core is unusable; None without a warning for inputs it does not handle (``top``,
    mixed devices, empty or unsupported dtypes), which the torch path then handles or reports.
    """
    if not stacks or any(t for t in (top or ())):
        return None
    device = stacks[0].device
    if device.type != "cuda" or any(s.device != device or s.dim() != 3 or s.numel() == 0 or s.dtype not in _DTYPES
                                    for s in stacks):
        return None
    module = _check()
    if module is None:
        _fallback_warning()
        return None
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        stacks = [s.detach().contiguous() for s in stacks]
        outs = [torch.empty(int(s.shape[0]) * min(int(s.shape[1]), int(s.shape[2])),
                            dtype=s.real.dtype if s.is_complex() else s.dtype, device=device) for s in stacks]
        for name in {_DTYPES[s.dtype] for s in stacks}:  # one call per scalar type
            mats = [(s.data_ptr(), int(s.shape[0]), int(s.shape[1]), int(s.shape[2]), o.data_ptr())
                    for s, o in zip(stacks, outs) if _DTYPES[s.dtype] == name]
            module.gram_eigvalsh(mats, name, stream)
        # Each slice's eigenvalues come back ascending; pooling several slices needs one sort (on the device).
        return [o if s.shape[0] == 1 else torch.sort(o).values for s, o in zip(stacks, outs)]


def _keyword_defaults(fn, skip: tuple[str, ...]) -> dict:
    """Keyword-only defaults of `fn`: the CUDA kernels take the same options, defined once in the CPU API."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and k not in skip}


def hill_lr(
    eigs: Sequence[torch.Tensor],
    unit_index: Sequence[int],
    n_units: int,
    *,
    hill: Mapping[str, Any] | None = None,
    mapping: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Hill metrics (n, 10), mean alpha per unit and LR factor per unit, computed on the device, or None.

    ``eigs``: ascending CUDA spectra (one per matrix), ``unit_index[j]`` the unit of spectrum j. ``hill``: options
    of ``reference.hill_metrics_one`` (xmin_pos, xmin_rule, filter_zeros, zero_tol, zero_rel, zero_rtol,
    min_eigs); ``mapping``: options of ``mapping.lr_factors`` (mapping, tau, s_lo, s_hi, s1, s2, compat); omitted
    ones take those functions' defaults. Columns as ``hill.HILL_COLUMNS``. The kernels run the same tb_math.h
    functions as the CPU core; nothing waits for the GPU.
    """
    if not eigs or eigs[0].device.type != "cuda" or len(unit_index) != len(eigs):
        return None
    module = _check()
    if module is None:
        _fallback_warning()
        return None
    from . import mapping as mapping_module, reference

    h = {**_keyword_defaults(reference.hill_metrics_one, ("n_total",)), **(hill or {})}
    m = {**_keyword_defaults(mapping_module.lr_factors, ("backend",)), **(mapping or {})}
    device = eigs[0].device
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        flat = torch.cat([e.reshape(-1).to(torch.float64) for e in eigs])
        lengths = torch.tensor([0] + [int(e.numel()) for e in eigs], dtype=torch.int64)
        offsets = lengths.cumsum(0).to(device, non_blocking=True)
        units = torch.tensor(list(unit_index), dtype=torch.int64).to(device, non_blocking=True)
        metrics = torch.empty((len(eigs), module.hill_columns), dtype=torch.float64, device=device)
        unit_alpha = torch.empty(n_units, dtype=torch.float64, device=device)
        factors = torch.empty(n_units, dtype=torch.float64, device=device)
        module.hill_lr(flat.data_ptr(), offsets.data_ptr(), len(eigs), units.data_ptr(), int(n_units),
                       float(h["xmin_pos"]), h["xmin_rule"], bool(h["filter_zeros"]), float(h["zero_tol"]),
                       float(h["zero_rel"]), float(h["zero_rtol"]), int(h["min_eigs"]), m["mapping"],
                       float(m["tau"]), float(m["s_lo"]), float(m["s_hi"]), float(m["s1"]), float(m["s2"]),
                       bool(m["compat"]), metrics.data_ptr(), unit_alpha.data_ptr(), factors.data_ptr(), stream)
        return metrics, unit_alpha, factors
