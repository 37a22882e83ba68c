"""Adapters: which matrices of a model are analysed and which unit (block) each belongs to.

The registry is a list of ``(name, detect_fn, factory, priority)``. ``get_adapter(model)`` returns
``factory()`` of the highest-priority entry whose ``detect_fn(model)`` is true; the generic adapter (priority
-100, detects everything) is the last resort. To add an adapter, write a module in this package that calls::

    register_adapter("llama", detect_fn=lambda m: ..., factory=LlamaAdapter, priority=10)

at import time and list it in ``_BUILTIN_MODULES`` (modules missing from an install are skipped), or call
:func:`register_adapter` from user code for a custom model.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .base import Adapter, MatrixSpec, is_lora_layer, lora_effective_weight
from .generic import GenericAdapter, specs_from_named_weights, unanalysed


@dataclass(frozen=True)
class _Entry:
    name: str
    detect_fn: Callable[[nn.Module], bool]
    factory: Callable[[], Adapter]
    priority: int


_REGISTRY: dict[str, _Entry] = {}
_BUILTIN_MODULES = ("hf_encoder", "llama", "fno", "unet")


def register_adapter(name: str, detect_fn: Callable[[nn.Module], bool], factory: Callable[[], Adapter],
                     priority: int = 0) -> None:
    """Register (or replace) an adapter under ``name``; higher ``priority`` is tried first by ``"auto"``."""
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"adapter name must be a non-empty string other than 'auto', got {name!r}")
    _REGISTRY[name] = _Entry(name, detect_fn, factory, int(priority))


def available_adapters() -> list[str]:
    """Registered adapter names, highest priority first."""
    _load_builtins()
    return [e.name for e in sorted(_REGISTRY.values(), key=lambda e: -e.priority)]


def _inner(model: nn.Module) -> nn.Module | None:
    """The module a wrapper holds: DDP / DataParallel's ``module``, ``torch.compile``'s ``_orig_mod``."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return model._orig_mod
    return None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside wrappers (DDP, DataParallel, ``torch.compile``): its names are the plain model's, so
    units and checkpoints match an unwrapped run."""
    while (inner := _inner(model)) is not None:
        model = inner
    return model


def _unwrapping(adapter: Adapter) -> Adapter:
    """``adapter`` reading the wrapped module of a DDP model, so names, units and checkpoints match a
    single-process run (idempotent)."""
    if getattr(adapter, "_unwraps_data_parallel", False):
        return adapter
    adapter._unwraps_data_parallel = True  # type: ignore[attr-defined]
    enumerate_, unit_params = adapter.enumerate, adapter.unit_params
    adapter.enumerate = lambda m, *a, **k: enumerate_(unwrap_model(m), *a, **k)  # type: ignore[method-assign]
    adapter.unit_params = lambda m, *a, **k: unit_params(unwrap_model(m), *a, **k)  # type: ignore[method-assign]
    return adapter


def get_adapter(model: nn.Module, name: str | Adapter = "auto") -> Adapter:
    """The adapter for ``model``: an :class:`Adapter` instance as given, a registered name, or ``"auto"``.
    For a DDP / DataParallel / ``torch.compile`` model it reads the wrapped module (names without the
    ``module.`` / ``_orig_mod.`` prefix)."""
    if unwrap_model(model) is not model:
        inner = name if isinstance(name, Adapter) else get_adapter(unwrap_model(model), name)
        return _unwrapping(inner)
    if isinstance(name, Adapter):
        return name
    _load_builtins()
    if name == "auto":
        for entry in sorted(_REGISTRY.values(), key=lambda e: -e.priority):
            if entry.detect_fn(model):
                return entry.factory()
        return GenericAdapter()
    if name not in _REGISTRY:
        raise ValueError(f"adapter must be 'auto', an Adapter or one of {available_adapters()}, got {name!r}")
    return _REGISTRY[name].factory()


_loaded = False


def _load_builtins() -> None:
    """Import the adapter modules of this package once, so they register themselves."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


register_adapter("generic", lambda model: True, GenericAdapter, priority=-100)

__all__ = [
    "Adapter", "MatrixSpec", "GenericAdapter", "register_adapter", "get_adapter", "available_adapters",
    "specs_from_named_weights", "is_lora_layer", "lora_effective_weight", "unwrap_model", "unanalysed",
]
