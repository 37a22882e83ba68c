"""SPEC §1: how a weight becomes the stack of (S, m, n) slices whose Gram eigenvalues form its ESD, and esd().

Slicing by kind:

* ``"linear"`` (out, in), ``"embedding"`` (vocab, dim), ``"lora"`` (the effective out x in weight): the matrix.
* ``"conv1d_hf"``: HF ``Conv1D`` stores (in, out); it is transposed to (out, in) (same spectrum, shown the
  usual way round).
* ``"conv"`` (out, in, k1, ..., kd): one (out, in) slice per kernel position, pooled (``conv_mode="slices"``), or
  one (out, in*k1*...*kd) matrix (``conv_mode="flatten"``). ``conv_scale`` multiplies the conv eigenvalues
  (the reference code's 0.5; alpha does not change).
* ``"spectral"`` (in, out, m1, ..., md), complex: one (in, out) slice per retained Fourier mode, pooled.

``kind="auto"`` guesses from the tensor alone: 2-d -> ``"linear"``; complex with 3+ dims -> ``"spectral"``;
real with 3-5 dims -> ``"conv"``; anything else is an error asking for an explicit kind. (An HF ``Conv1D``
weight is 2-d and guessed as ``"linear"``: its transpose has the same eigenvalues.)

Analysis precision follows the weight unless asked for (:func:`analysis_dtype`): float64 (complex128) weights in
float64, everything else in float32 - bf16/fp16 weights are upcast (torch has no half-precision eigensolver);
complex weights go to complex64/complex128 accordingly.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .. import _backend, _native, reference
from .options import CONV_MODES, check_dtype

KINDS = ("linear", "conv", "conv1d_hf", "spectral", "lora", "embedding")
_MATRIX_KINDS = ("linear", "lora", "embedding")


def analysis_dtype(weight_dtype: torch.dtype, requested: torch.dtype | None = None) -> torch.dtype:
    """The real precision a weight of ``weight_dtype`` is analysed in: ``requested`` when given, else float64 for
    float64 and complex128 weights and float32 for the rest (half precisions are upcast)."""
    if requested is not None:
        return check_dtype(requested)
    return torch.float64 if weight_dtype in (torch.float64, torch.complex128) else torch.float32


def guess_kind(weight: torch.Tensor) -> str:
    """The kind ``kind="auto"`` picks for ``weight`` (rules in the module docstring)."""
    if weight.ndim == 2:
        return "linear"
    if weight.is_complex() and weight.ndim >= 3:
        return "spectral"
    if not weight.is_complex() and 3 <= weight.ndim <= 5:
        return "conv"
    raise ValueError(
        f"weight of shape {tuple(weight.shape)} and dtype {weight.dtype}: cannot guess its kind; "
        f"pass kind= one of {KINDS}"
    )


def _check_weight(weight: torch.Tensor, arg: str) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.ndim < 2:
        raise ValueError(f"{arg} must be at least 2-d (a matrix), got a {weight.ndim}-d tensor of shape "
                         f"{tuple(weight.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"{arg} is empty (shape {tuple(weight.shape)})")
    if not (weight.is_floating_point() or weight.is_complex()):
        raise ValueError(f"{arg} must be a floating-point or complex tensor, got dtype {weight.dtype}")


def slices(
    weight: torch.Tensor,
    kind: str = "auto",
    *,
    conv_mode: str = "slices",
    conv_scale: float = 1.0,
    dtype: torch.dtype | None = None,
    arg: str = "weight",
    keep_device: bool = False,
) -> torch.Tensor:
    """``weight`` as a contiguous ``(S, m, n)`` stack whose pooled Gram eigenvalues are its ESD.

    ``dtype`` (float32/float64) converts to the analysis precision (complex weights to the matching complex
    dtype); ``None`` keeps the weight's dtype (see :func:`analysis_dtype` for the default analyses use). The result is detached and on the CPU, or on the weight's device
    with ``keep_device`` (for the CUDA core); ``weight`` is never modified. Errors name ``arg``.
    """
    _check_weight(weight, arg)
    if conv_mode not in CONV_MODES:
        raise ValueError(f"conv_mode must be one of {CONV_MODES}, got {conv_mode!r}")
    if not (isinstance(conv_scale, (int, float)) and math.isfinite(conv_scale) and conv_scale > 0):
        raise ValueError(f"conv_scale must be a finite number > 0, got {conv_scale!r}")
    if kind == "auto":
        kind = guess_kind(weight)
    if kind not in KINDS:
        raise ValueError(f"kind must be 'auto' or one of {KINDS}, got {kind!r}")
    w = weight.detach()
    if w.device.type != "cpu" and not keep_device:
        w = w.cpu()
    if dtype is not None:
        check_dtype(dtype)
        target = (torch.complex64 if dtype == torch.float32 else torch.complex128) if w.is_complex() else dtype
        w = w.to(target)
    shape = tuple(w.shape)
    if kind in _MATRIX_KINDS or kind == "conv1d_hf":
        if w.ndim != 2:
            raise ValueError(f"{arg}: kind {kind!r} needs a 2-d weight, got shape {shape}")
        stack = (w.t() if kind == "conv1d_hf" else w).unsqueeze(0)
    elif kind == "conv":
        if w.ndim < 3:
            raise ValueError(f"{arg}: kind 'conv' needs an (out, in, k...) weight, got shape {shape}")
        if conv_mode == "flatten":
            stack = w.reshape(1, shape[0], -1)
        else:  # (out, in, k...) -> (k..., out, in) -> (S, out, in)
            stack = w.permute(*range(2, w.ndim), 0, 1).reshape(-1, shape[0], shape[1])
        if conv_scale != 1.0:
            stack = stack * math.sqrt(conv_scale)  # eigenvalues scale by conv_scale
    else:  # spectral: (in, out, m1, ...) -> (m1, ..., in, out) -> (S, in, out)
        stack = w.permute(*range(2, w.ndim), 0, 1).reshape(-1, shape[0], shape[1])
    return stack.contiguous()


# Largest |log2(max |entry|)| a stack may have before it is rescaled for its Gram: float32 Grams of weights beyond
# 2**±30 (~1e±9) lose their small eigenvalues to underflow (1e-22 weights: 0.5% alpha error, "ok") or overflow.
_UNSCALED_LOG2 = {torch.float32: 30, torch.float64: 400}
_MAX_SHIFT = 120  # 2**±120 stays a normal float32


def unit_scale(stack: torch.Tensor, on_device: bool, largest: float | None = None) -> tuple[torch.Tensor, Any]:
    """``stack`` times ``2**-k`` - only the exponents change, so exactly - and ``k``: the Gram eigenvalues of the
    original are those of the result times ``4**k``. Brings the largest entry near 1 when the Gram would under- or
    overflow its dtype (CPU: only then; device stacks: always, as tensor ops, so nothing waits for the GPU).
    ``largest``: the largest |entry| (of the real and imaginary parts) when the caller knows it already."""
    parts = torch.view_as_real(stack) if stack.is_complex() else stack
    if on_device:
        k = torch.frexp(parts.abs().amax()).exponent.clamp(-_MAX_SHIFT, _MAX_SHIFT)
        return stack * torch.exp2(-k.to(parts.dtype)), k
    if largest is None:
        lo, hi = torch.aminmax(parts)
        largest = max(-float(lo), float(hi))
    if not (0.0 < largest < math.inf):
        return stack, 0
    k = math.frexp(largest)[1]
    if abs(k) <= _UNSCALED_LOG2.get(parts.dtype, 30):
        return stack, 0
    k = max(-_MAX_SHIFT, min(_MAX_SHIFT, k))
    return stack * (2.0 ** -k), k


def gram_dim(stack: torch.Tensor) -> int:
    """Size of the Gram each slice of ``stack`` is reduced to (its smaller side)."""
    return min(int(stack.shape[1]), int(stack.shape[2]))


# Grams at least this wide go to the two-stage tridiagonal reduction (LAPACK ?syevd_2stage: dense -> band by
# level-3 BLAS, then bulge chasing), narrower ones to the one-stage ?syevd. benchmarks/solver_crossover.py, float32,
# 2 threads, Gram + eigenvalues of square weights, 2stage/evd time: 1.21 at 768, 1.07 at 1536, 1.02 at 2048,
# 0.84 at 2560, 0.74 at 3072, 0.60 at 4096.
TWO_STAGE_MIN_DIM = 2560


def gram_eigvals(
    stacks: Sequence[torch.Tensor],
    *,
    backend: str = "auto",
    num_threads: int | None = None,
    top: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """Pooled ascending Gram eigenvalues of every stack in one call (native) or a loop (torch).

    CUDA stacks go to the CUDA core unless ``backend="torch"`` (their spectra stay on the device); what it does not
    take goes to the CPU core, or the torch reference. ``backend="native"`` needs a compiled core for what it gets:
    the CUDA core alone serves CUDA weights.
    """
    if backend not in _backend.BACKENDS:
        raise ValueError(f"backend must be one of {_backend.BACKENDS}, got {backend!r}")
    top = [0] * len(stacks) if top is None else list(top)
    out: list[torch.Tensor | None] = [None] * len(stacks)
    from . import cuda_backend

    if backend != "torch" and stacks and cuda_backend.is_device(stacks[0]):
        # CUDA tensors stay on the device; None: the CUDA core is not usable here (or not for these stacks)
        out = list(cuda_backend.gram_eigvals(stacks, top) or out)
    rest = [i for i, o in enumerate(out) if o is None]
    if not rest:
        return out  # type: ignore[return-value]
    core = _backend.resolve(backend)
    if core is None:
        for i, e in zip(rest, reference.gram_eigvalsh([stacks[i] for i in rest], [top[i] for i in rest])):
            out[i] = e
        return out  # type: ignore[return-value]
    if num_threads is None:
        num_threads = _native.default_threads()
    mats = {i: np.ascontiguousarray(stacks[i].detach().cpu().numpy()) for i in rest}
    for solver in ("evd", "2stage"):
        idx = [i for i in rest if (gram_dim(stacks[i]) >= TWO_STAGE_MIN_DIM) == (solver == "2stage")]
        if idx:
            eigs = core.gram_eigvalsh([mats[i] for i in idx], [top[i] for i in idx], int(num_threads), solver)
            for i, e in zip(idx, eigs):
                out[i] = torch.from_numpy(np.asarray(e))
    return out  # type: ignore[return-value]


def esd(
    weight: torch.Tensor,
    *,
    kind: str = "auto",
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    conv_mode: str = "slices",
    conv_scale: float = 1.0,
) -> torch.Tensor:
    """Ascending eigenvalues of one layer's ESD (SPEC §1): squared singular values, pooled over slices.

    ``kind``: ``"auto"`` or one of ``KINDS`` (see the module docstring for the slicing and the auto rule).
    ``dtype``: analysis precision, float32 or float64 (``None``: float64 for float64/complex128 weights, else
    float32); the result is real of that precision. Raises ``ValueError`` naming ``weight`` for 0-/1-d, empty,
    integer or non-finite weights.
    """
    check_dtype(dtype)
    _check_weight(weight, "weight")
    stack = slices(weight, kind, conv_mode=conv_mode, conv_scale=conv_scale, dtype=analysis_dtype(weight.dtype, dtype))
    bad = int((~torch.isfinite(stack)).sum())
    if bad:
        raise ValueError(f"weight has {bad} non-finite (NaN/Inf) entries")
    stack, k = unit_scale(stack, on_device=False)
    eigs = gram_eigvals([stack], backend=backend)[0]
    return eigs * 4.0 ** k if k else eigs
