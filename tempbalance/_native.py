"""Loads the compiled spectral core (`tempbalance._core`) and says why when it cannot.

The core links scipy-openblas32's LAPACK. Its rpath finds the library next to it in site-packages; loading the
library here first (RTLD_GLOBAL) also covers editable installs and relocated environments.
"""
from __future__ import annotations

import ctypes
import os
from types import ModuleType

import torch

core: ModuleType | None = None
unavailable_reason: str | None = None


def _preload_openblas() -> None:
    import scipy_openblas32

    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def _load() -> None:
    global core, unavailable_reason
    try:
        _preload_openblas()
    except Exception as exc:  # the core's own rpath may still find it
        unavailable_reason = f"scipy-openblas32 could not be loaded: {exc}"
    try:
        from . import _core as loaded
    except ImportError as exc:
        unavailable_reason = (unavailable_reason + "; " if unavailable_reason else "") + (
            f"the native extension tempbalance._core is not importable ({exc}); reinstall with `pip install .`")
        return
    core = loaded
    unavailable_reason = None


def default_threads() -> int:
    """Threads the native core uses by default: torch's intra-op thread count (what the trainer gave torch)."""
    return max(1, torch.get_num_threads())


_load()
