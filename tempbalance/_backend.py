"""Choosing between the native core and the torch reference (``backend="native" | "torch" | "auto"``)."""
from __future__ import annotations

from . import _native, _warn

BACKENDS = ("auto", "native", "torch")
_warned = False


def resolve(backend: str):
    """The native ``_core`` module for the native backend, or ``None`` for the torch reference.

    ``"auto"`` takes the native core when it is built and otherwise falls back to torch with one warning per
    process; ``"native"`` without a built core raises ``RuntimeError`` saying why it is missing.
    """
    global _warned
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    core = _native.core
    if backend == "torch":
        return None
    if core is None:
        if backend == "native":
            raise RuntimeError(
                f"backend='native' was requested but the native core is unavailable: {_native.unavailable_reason}"
            )
        if not _warned:
            _warned = True
            _warn.warn(f"tempbalance: native core unavailable ({_native.unavailable_reason}); using the torch backend",
                       RuntimeWarning)
    return core


def name(backend: str) -> str:
    """The backend that ``backend`` resolves to: ``"native"`` or ``"torch"``."""
    return "torch" if resolve(backend) is None else "native"
