"""Loads the compiled spectral core (`tempbalance._core`) and says why when it cannot.

The core links scipy-openblas32's LAPACK. Its rpath finds the library next to it in site-packages; loading the
library here first (RTLD_GLOBAL) also covers editable installs and relocated environments.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import urllib.parse
from pathlib import Path
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
        unavailable_reason = (unavailable_reason + "; " if unavailable_reason else "") + _why_no_core(exc)
        return
    core = loaded
    unavailable_reason = None


def _why_no_core(exc: ImportError, here: Path | None = None) -> str:
    """Why ``tempbalance._core`` did not import, and the fix. The common case is a source tree (a clone, where the
    core is never compiled) imported instead of the installed package, because its folder is on ``sys.path`` first
    (Python run from the clone's root): the ImportError itself then reads like a circular import."""
    here = Path(__file__).resolve().parent if here is None else here
    if not _compiled(here, "_core"):
        installed = _installed_core_folder()
        if installed is not None and here != installed and here.parent != _editable_project():
            return (f"tempbalance was imported from {here}, a source tree without the compiled core, which shadows "
                    f"the installed tempbalance at {installed} because {here.parent} comes before it on sys.path (Python "
                    "started in that folder, or PYTHONPATH). Run it from another folder, or install this tree in editable mode, "
                    f"which builds its core: pip install -e {here.parent}")
        return (f"tempbalance was imported from {here}, which has no compiled core (a source tree that was never "
                f"built?). Build it: pip install -e {here.parent} (or pip install {here.parent}), which needs a C++17 "
                "compiler and CMake >= 3.18")
    return f"the native extension tempbalance._core is not importable ({exc}); reinstall with `pip install .`"


def _compiled(folder: Path, name: str) -> bool:
    return any(folder.glob(f"{name}.*.so")) or any(folder.glob(f"{name}.*.pyd")) or (folder / f"{name}.so").exists()


def _installed_core_folder() -> Path | None:
    """The folder holding the compiled core of the installed ``tempbalance`` distribution, if it has one."""
    try:
        files = importlib.metadata.distribution("tempbalance").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if len(f.parts) == 2 and f.parts[0] == "tempbalance" and f.name.startswith("_core.") \
                and f.name.endswith((".so", ".pyd")):
            path = Path(str(f.locate())).resolve()
            if path.exists():
                return path.parent
    return None


def _editable_project() -> Path | None:
    """The project folder of an editable install of ``tempbalance`` (its source tree is the install), else None."""
    try:
        info = json.loads(importlib.metadata.distribution("tempbalance").read_text("direct_url.json") or "{}")
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    url = urllib.parse.urlparse(info.get("url", ""))
    if not info.get("dir_info", {}).get("editable") or url.scheme != "file":
        return None
    return Path(urllib.parse.unquote(url.path)).resolve()


def default_threads() -> int:
    """Threads the native core uses by default: torch's intra-op thread count (what the trainer gave torch)."""
    return max(1, torch.get_num_threads())


_load()
