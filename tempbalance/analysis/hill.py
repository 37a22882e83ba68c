"""PL_Alpha_Hill and the per-layer metrics of a spectrum (SPEC §2), on the native core or the torch reference."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from .. import _backend, _native, reference
from ..reference import HILL_COLUMNS
from .options import HillOptions

# Status codes of csrc/tb_math.h (tb::Status) <-> the strings reports use.
STATUS_NAMES = {
    reference.STATUS_OK: "ok",
    reference.STATUS_TOO_FEW_EIGS: "too_few_eigs",
    reference.STATUS_FLAT_TAIL: "flat_tail",
    reference.STATUS_XMIN_NOT_POSITIVE: "xmin_not_positive",
    reference.STATUS_NON_FINITE: "non_finite",
    reference.STATUS_EMPTY: "empty",
    reference.STATUS_TOP_TOO_SHORT: "top_too_short",
}
STATUS_CODES = {v: k for k, v in STATUS_NAMES.items()}


def default_zero_rtol(gram_dim: int, dtype: torch.dtype) -> float:
    """Relative size below which an eigenvalue of a ``gram_dim``-square Gram counts as zero: ``gram_dim * eps``.

    The eigenvalues of a Gram formed and solved in ``dtype`` carry an absolute error of order
    ``gram_dim * eps(dtype) * lam_max`` (backward-stable solver, worst case), so a true zero of a rank-deficient
    matrix shows up as noise of that size; an xmin at or below it is not a power-law tail start.
    (float32, d = 384: 4.6e-5; d = 4096: 4.9e-4. float64 makes it ~5e8 times smaller.)
    """
    real = dtype.to_real() if dtype.is_complex else dtype
    return float(gram_dim) * torch.finfo(real).eps


def _as_spectrum(eigs: Any, arg: str = "eigenvalues") -> np.ndarray:
    if isinstance(eigs, torch.Tensor):
        if eigs.is_complex():
            raise ValueError(f"{arg} must be real, got dtype {eigs.dtype}")
        eigs = eigs.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(eigs)
    if arr.dtype.kind == "c":
        raise ValueError(f"{arg} must be real, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{arg} must be a 1-d array of eigenvalues, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _reason(row: dict, min_eigs: int, zero_rtol: float) -> str:
    status = row["status"]
    if status == "ok":
        return ""
    if status == "too_few_eigs":
        return f"{row['n_eigs']} eigenvalues < min_eigs={max(min_eigs, 2)}: reported, not tuned"
    if status == "flat_tail":
        return (f"flat tail: the top {row['n_tail']} eigenvalues lie within {zero_rtol:.2g}*lambda_max of xmin="
                f"{row['xmin']:.4g} (equal singular values, as an orthogonal matrix's; the round-off of the "
                "analysis): no power law to fit")
    if status == "xmin_not_positive":
        return (f"xmin={row['xmin']:.4g} is not above the numerical zero {zero_rtol:.2g}*lambda_max "
                f"(rank-deficient matrix?)")
    if status == "non_finite":
        return ("non-finite eigenvalues (NaN/Inf weights, a Gram that overflows the analysis dtype, or an "
                "eigensolver that did not converge)")
    if status == "empty":
        return "no eigenvalues (empty matrix, or all filtered as zeros)"
    if status == "top_too_short":
        return "only the top eigenvalues were computed and xmin lies below them"
    return status


def hill_metrics(
    eig_list: Sequence[Any],
    options: HillOptions | None = None,
    *,
    zero_rtol: float | Sequence[float] = 0.0,
    backend: str = "auto",
    assume_sorted: bool = False,
    num_threads: int | None = None,
    **fit: Any,
) -> list[dict]:
    """Per-spectrum metrics as dicts with the keys of ``HILL_COLUMNS`` (``status`` as a string) plus ``reason``.

    ``options`` (or its fields as keywords, ``fit``: ``xmin_pos``, ``xmin_rule``, ``filter_zeros``, ``zero_tol``,
    ``zero_rel``, ``min_eigs``; :class:`~tempbalance.analysis.options.HillOptions`) is the fit; ``filter_zeros``
    drops eigenvalues ``<= max(zero_tol, zero_rel * lam_max)`` first. ``zero_rtol`` (one value or one per spectrum)
    is the numerical-zero guard: ``xmin <= zero_rtol * lam_max`` gives status ``xmin_not_positive`` (see
    :func:`default_zero_rtol`). Spectra are sorted unless ``assume_sorted``. ``num_threads``: the native core's
    workers (``None``: torch's intra-op thread count).
    """
    opt = HillOptions.of(options, fit)
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer))
                                    or num_threads < 1):
        raise ValueError(f"num_threads must be None or an integer >= 1, got {num_threads!r}")
    eigs = [_as_spectrum(e, f"eig_list[{k}]") for k, e in enumerate(eig_list)]
    try:
        rtol = np.broadcast_to(np.asarray(zero_rtol, dtype=np.float64), (len(eigs),)).copy()
    except ValueError:
        raise ValueError(f"zero_rtol must be one number or one per spectrum ({len(eigs)}), got {zero_rtol!r}")
    if np.any(~np.isfinite(rtol)) or np.any(rtol < 0):
        raise ValueError(f"zero_rtol must be finite and >= 0, got {zero_rtol!r}")
    core = _backend.resolve(backend)
    if not assume_sorted:
        eigs = [np.sort(e) for e in eigs]
    kw = dict(xmin_pos=float(opt.xmin_pos), xmin_rule=opt.xmin_rule, filter_zeros=opt.filter_zeros,
              min_eigs=int(opt.min_eigs))
    if core is None:
        table = np.empty((len(eigs), len(HILL_COLUMNS)))
        for k, e in enumerate(eigs):
            table[k] = reference.hill_metrics_one(e, zero_tol=opt.zero_tol, zero_rel=opt.zero_rel, zero_rtol=rtol[k],
                                                  **kw)
    else:
        threads = _native.default_threads() if num_threads is None else int(num_threads)
        table = np.asarray(core.hill_metrics(eigs, zero_tol=float(opt.zero_tol), zero_rel=float(opt.zero_rel),
                                             zero_rtol=rtol, num_threads=threads, **kw)
                           ).reshape(len(eigs), len(HILL_COLUMNS))
    return rows_from_table(table, min_eigs=int(opt.min_eigs), zero_rtol=rtol)


def rows_from_table(table: np.ndarray, *, min_eigs: int, zero_rtol: Sequence[float]) -> list[dict]:
    """The dicts :func:`hill_metrics` returns, from a ``(n, len(HILL_COLUMNS))`` table of any backend (CPU core,
    torch reference, CUDA core); ``zero_rtol`` per row, for the reasons."""
    rows = []
    for k, r in enumerate(np.asarray(table, dtype=np.float64).reshape(-1, len(HILL_COLUMNS))):
        row = {c: float(r[j]) for j, c in enumerate(HILL_COLUMNS[:-1])}
        row["n_tail"] = int(row["n_tail"])
        row["n_eigs"] = int(row["n_eigs"])
        row["status"] = STATUS_NAMES.get(int(r[-1]), f"status_{int(r[-1])}")
        row["reason"] = _reason(row, min_eigs, float(zero_rtol[k]))
        rows.append(row)
    return rows


def alpha_hill(
    eigenvalues: Any,
    *,
    xmin_pos: float = 2.0,
    filter_zeros: bool = False,
    xmin_rule: str = "median",
    zero_rtol: float = 0.0,
    backend: str = "auto",
) -> float:
    """PL_Alpha_Hill of one spectrum: ``alpha = 1 + n / sum_{j>=i} ln(lam_j / lam_i)``, ``i = floor(N / xmin_pos)``.

    ``eigenvalues`` is a 1-d tensor/array (any order). ``filter_zeros`` drops ``lam <= 1e-5`` first.
    ``zero_rtol`` treats ``xmin <= zero_rtol * lam_max`` as zero (pass ``d * eps`` for the spectrum of a
    ``d``-square Gram; :func:`tempbalance.analyze` does). A spectrum without a valid fit (empty, NaN/Inf, flat
    tail, xmin <= 0) gives NaN with a ``RuntimeWarning`` saying why.
    """
    row = hill_metrics([_as_spectrum(eigenvalues)], xmin_pos=xmin_pos, xmin_rule=xmin_rule,
                       filter_zeros=filter_zeros, zero_rtol=zero_rtol, min_eigs=0, backend=backend)[0]
    if row["status"] != "ok":
        warnings.warn(f"alpha_hill: {row['reason']}; returning NaN", RuntimeWarning, stacklevel=2)
    return row["alpha"]
