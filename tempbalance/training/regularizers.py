"""Spectral-norm regulariser (TB+SNR): adds the gradient of (sg/2) * sigma_max(W)^2 to every analysed weight.

sigma_max, u, v come from power iteration whose vectors persist across steps (buffers in ``state_dict``), so one
iteration per step tracks the top singular pair as the weights move (the reference code restarted from random
vectors every step). The gradient of (sg/2) sigma^2 is ``sg * sigma * u v^T``.

Which matrix: a Linear's weight; a conv's weight flattened to (dim 0, rest) - one matrix per layer, as the
regulariser of the paper; an HF Conv1D's stored (in, out) weight (same sigma as its transpose); a PEFT LoRA
layer's effective weight ``W + s * B @ A``, whose gradient goes to the trainable ``lora_A``/``lora_B`` (and W if it
trains). Complex spectral weights (FNO) and embeddings are left out (listed in ``skipped``).

Use::

    snr = SpectralNormRegularizer(model, sg=0.01)
    loss.backward(); snr.apply(); optimizer.step()
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..adapters import MatrixSpec, get_adapter


@dataclass
class _Target:
    name: str
    matrix: Callable[[], torch.Tensor]              # the 2-d matrix whose top singular value is penalised
    add_grad: Callable[[torch.Tensor], None]        # adds dR/dmatrix (same layout) to the parameters' .grad


def _accumulate(p: nn.Parameter, g: torch.Tensor) -> None:
    if not p.requires_grad:
        return
    g = g.reshape(p.shape).to(p.dtype)
    if p.grad is None:
        p.grad = g.clone()
    else:
        p.grad.add_(g)


def _plain_target(name: str, weight: nn.Parameter) -> _Target:
    return _Target(name, lambda: weight.detach().reshape(weight.shape[0], -1),
                   lambda g: _accumulate(weight, g))


def _lora_target(name: str, module: nn.Module) -> _Target:
    from ..adapters import lora_effective_weight

    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module.base_layer
    fan_in_fan_out = getattr(module, "fan_in_fan_out", False)

    def add_grad(g: torch.Tensor) -> None:
        _accumulate(base.weight, g)
        g_ba = g.t() if fan_in_fan_out else g  # gradient w.r.t. B @ A in (out, in) layout
        for adapter in (getattr(module, "active_adapters", None) or list(module.lora_A.keys())):
            if adapter not in module.lora_A:
                continue
            a, b, s = module.lora_A[adapter].weight, module.lora_B[adapter].weight, module.scaling[adapter]
            _accumulate(b, s * g_ba.to(a.dtype) @ a.detach().t())
            _accumulate(a, s * b.detach().t() @ g_ba.to(b.dtype))

    return _Target(name, lambda: lora_effective_weight(module), add_grad)


def _targets_from_model(model: nn.Module, adapter: Any) -> tuple[list[_Target], list[tuple[str, str]]]:
    targets, skipped = [], []
    for spec in get_adapter(model, adapter).enumerate(model):
        if spec.kind in ("spectral", "embedding"):
            skipped.append((spec.name, f"kind {spec.kind!r} is not regularised"))
            continue
        if spec.kind == "lora":
            targets.append(_lora_target(spec.name, model.get_submodule(spec.name)))
            continue
        if spec.name.endswith(".in_proj"):
            w = model.get_submodule(spec.name[: -len(".in_proj")]).in_proj_weight
        else:
            w = getattr(model.get_submodule(spec.name), "weight", None)
        if not isinstance(w, nn.Parameter):
            skipped.append((spec.name, "no weight parameter"))
            continue
        targets.append(_plain_target(spec.name, w))
    return targets, skipped


def _targets_from_specs(specs: list[MatrixSpec]) -> tuple[list[_Target], list[tuple[str, str]]]:
    targets, skipped = [], []
    for spec in specs:
        if spec.kind in ("spectral", "embedding", "lora"):
            skipped.append((spec.name, f"kind {spec.kind!r} needs the model (pass the nn.Module)"))
            continue
        w = spec.weight()
        match = [p for p in spec.params if p.data_ptr() == w.data_ptr() and p.shape == w.shape]
        if not match:
            skipped.append((spec.name, "its weight is not one of the spec's params"))
            continue
        targets.append(_plain_target(spec.name, match[0]))
    return targets, skipped


class SpectralNormRegularizer:
    """Adds ``sg * sigma_max(W) * u v^T`` (the gradient of ``sg/2 * sigma_max(W)^2``) to each weight's ``.grad``.

    Args:
        model_or_specs: a model (matrices found by its adapter) or a list of :class:`MatrixSpec`.
        sg: strength (>= 0).
        n_power_iterations: power iterations per :meth:`apply` (>= 1); the vectors carry over between calls.
        adapter: adapter for a model (``"auto"``, a name or an Adapter).
        seed: seed of the random initial vectors (reproducible runs).

    Call :meth:`apply` after ``backward()`` and before ``optimizer.step()``. ``skipped`` lists the matrices left
    out and why; ``sigmas`` the last sigma_max per matrix.
    """

    def __init__(self, model_or_specs: nn.Module | list[MatrixSpec], sg: float = 0.01, n_power_iterations: int = 1,
                 *, adapter: Any = "auto", seed: int = 0):
        if isinstance(sg, bool) or not isinstance(sg, (int, float)) or not math.isfinite(sg) or sg < 0:
            raise ValueError(f"sg must be a finite number >= 0, got {sg!r}")
        if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) or n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be an integer >= 1, got {n_power_iterations!r}")
        self.sg, self.n_power_iterations = float(sg), n_power_iterations
        if isinstance(model_or_specs, nn.Module):
            self._targets, self.skipped = _targets_from_model(model_or_specs, adapter)
        elif isinstance(model_or_specs, (list, tuple)) and all(isinstance(s, MatrixSpec) for s in model_or_specs):
            self._targets, self.skipped = _targets_from_specs(list(model_or_specs))
        else:
            raise TypeError(f"model_or_specs must be an nn.Module or a list of MatrixSpec, got "
                            f"{type(model_or_specs).__name__}")
        gen = torch.Generator().manual_seed(seed)
        self.u: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}
        for t in self._targets:
            m = t.matrix()
            real = torch.float64 if m.dtype == torch.float64 else torch.float32
            self.u[t.name] = nn.functional.normalize(torch.randn(m.shape[0], generator=gen, dtype=real), dim=0).to(m.device)
            self.v[t.name] = nn.functional.normalize(torch.randn(m.shape[1], generator=gen, dtype=real), dim=0).to(m.device)
        self.sigmas: dict[str, float] = {}

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._targets]

    @torch.no_grad()
    def apply(self) -> float:
        """Power-iterate, add the gradients; returns the penalty ``sum sg/2 * sigma^2`` (for logging).
        A matrix with non-finite entries is skipped (its vectors kept) with a warning naming it."""
        total = 0.0
        bad = []
        for t in self._targets:
            m = t.matrix()
            u, v = self.u[t.name], self.v[t.name]
            m = m.to(u.dtype)
            if not bool(torch.isfinite(m).all()):
                bad.append(t.name)
                continue
            for _ in range(self.n_power_iterations):
                v = nn.functional.normalize(m.t() @ u, dim=0)
                u = nn.functional.normalize(m @ v, dim=0)
            sigma = float(u @ m @ v)
            self.u[t.name], self.v[t.name] = u, v
            self.sigmas[t.name] = sigma
            total += 0.5 * self.sg * sigma * sigma
            if self.sg:
                t.add_grad(self.sg * sigma * torch.outer(u, v))
        if bad:
            warnings.warn(f"SpectralNormRegularizer: non-finite weights in {bad}; not regularised this step",
                          RuntimeWarning, stacklevel=2)
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"sg": self.sg, "n_power_iterations": self.n_power_iterations,
                "u": {k: v.clone() for k, v in self.u.items()}, "v": {k: v.clone() for k, v in self.v.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("u", "v"):
            mine, theirs = getattr(self, key), state[key]
            if set(mine) != set(theirs):
                raise ValueError(f"SpectralNormRegularizer.load_state_dict: matrices differ (missing now: "
                                 f"{sorted(set(theirs) - set(mine))[:5]}, new: {sorted(set(mine) - set(theirs))[:5]})")
            for k, t in theirs.items():
                if t.shape != mine[k].shape:
                    raise ValueError(f"SpectralNormRegularizer.load_state_dict: '{k}' has {key} of shape "
                                     f"{tuple(t.shape)}, expected {tuple(mine[k].shape)}")
        self.sg, self.n_power_iterations = float(state["sg"]), int(state["n_power_iterations"])
        self.u = {k: t.clone().to(self.u[k].device) for k, t in state["u"].items()}
        self.v = {k: t.clone().to(self.v[k].device) for k, t in state["v"].items()}
