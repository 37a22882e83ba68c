"""What an adapter is: which matrices of a model are analysed, which unit each belongs to, which parameters a unit
drives (docs/ARCHITECTURE.md, "Adapter contract")."""
from __future__ import annotations

import torch
from torch import nn

from ..analysis.specs import MatrixSpec


def unique_params(params) -> list[nn.Parameter]:
    """``params`` without repeats (tied weights), in first-seen order."""
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class Adapter:
    """Base class. Subclasses implement :meth:`enumerate`; :meth:`unit_params` has a sensible default.

    ``min_eigs``: the ``min_eigs`` that :func:`tempbalance.analyze` uses for this adapter's models when the caller
    gives none (small FNO layers want fewer than the transformer/CNN default of 50).
    """

    name = "base"
    min_eigs: int = 50

    def enumerate(self, model: nn.Module, include_embeddings: bool = False) -> list[MatrixSpec]:
        raise NotImplementedError

    def unit_params(self, model: nn.Module, specs: list[MatrixSpec], unit: str = "block") -> dict[str, list[nn.Parameter]]:
        """Parameters each unit drives: per matrix (``"layer"``, keyed by spec name) or per block (``"block"``,
        keyed by ``spec.unit``; here the union of its matrices' params - adapters that know their blocks return
        every parameter of the block, norms and biases included)."""
        if unit not in ("block", "layer"):
            raise ValueError(f"unit must be 'block' or 'layer', got {unit!r}")
        out: dict[str, list[nn.Parameter]] = {}
        for s in specs:
            key = s.name if unit == "layer" else s.unit
            out[key] = unique_params(out.get(key, []) + list(s.params))
        return out


def is_lora_layer(module: nn.Module) -> bool:
    """True for a PEFT LoRA wrapper (a module holding ``base_layer``, ``lora_A``, ``lora_B`` and ``scaling``)."""
    return all(hasattr(module, a) for a in ("base_layer", "lora_A", "lora_B", "scaling"))


def lora_effective_weight(module: nn.Module, *, scaled: bool = True) -> torch.Tensor:
    """``W + sum_adapters scaling * (B @ A)`` of a PEFT LoRA linear (transposed when ``fan_in_fan_out``), detached.

    ``scaled=False`` leaves out ``scaling`` (the reference code's behaviour). Raises ``NotImplementedError`` for
    DoRA and for LoRA on convolutions or embeddings.
    """
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module.base_layer
    w = base.weight.detach()
    if getattr(module, "merged", False):
        return w  # the deltas are already in the base weight
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    active = getattr(module, "active_adapters", None) or list(module.lora_A.keys())
    for name in active:
        if name not in module.lora_A:
            continue
        if getattr(module, "use_dora", {}).get(name, False):
            raise NotImplementedError(f"DoRA adapter {name!r}: the effective weight is not analysed yet")
        a_mod, b_mod = module.lora_A[name], module.lora_B[name]
        if not (isinstance(a_mod, nn.Linear) and isinstance(b_mod, nn.Linear)):
            raise NotImplementedError(f"LoRA adapter {name!r} on {type(base).__name__}: only linear LoRA is analysed")
        delta = b_mod.weight.detach().to(w.dtype) @ a_mod.weight.detach().to(w.dtype)
        if getattr(module, "fan_in_fan_out", False):
            delta = delta.t()
        w = w + (module.scaling[name] if scaled else 1.0) * delta
    return w
