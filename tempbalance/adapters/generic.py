"""The adapter for any model: every Linear / Conv / HF Conv1D (and PEFT LoRA linear), each its own unit.

It knows no blocks, so ``unit`` is the layer name in both unit modes; model-specific adapters (registered in
:mod:`tempbalance.adapters`) group matrices into blocks. Also builds specs from a plain state_dict or
(name, tensor) pairs, where no module types are known, and names the weights of a model no rule analyses
(:func:`unanalysed`).

A layer's ``params`` are all its parameters, frozen ones included: which unit a parameter belongs to follows the
model's structure, so a layer unfrozen later (gradual unfreezing) gets its unit's factor.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..analysis import spectra
from .base import Adapter, MatrixSpec, is_lora_layer, lora_effective_weight

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
# state_dict names that are embeddings (there is no module type to tell): "...embed...", GPT-2's wte/wpe.
_EMBEDDING_NAME_PARTS = ("embed", "wte.", "wpe.")


def module_kind(module: nn.Module, include_embeddings: bool = False) -> str | None:
    """The spec kind of a module's ``weight``, or None when the module is not analysed."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _CONV_TYPES):
        return "conv"
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.ndim == 2:
        return "conv1d_hf"  # transformers' GPT-2 style layer, weight stored (in, out)
    if include_embeddings and isinstance(module, _EMBEDDING_TYPES):
        return "embedding"
    return None


def _layer_params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters())


def _embedding_weights(model: nn.Module) -> set[int]:
    """``id`` of every embedding's weight: a Linear that holds one (a tied LM head) is that embedding."""
    return {id(m.weight) for m in model.modules() if isinstance(m, _EMBEDDING_TYPES)
            and isinstance(getattr(m, "weight", None), torch.Tensor)}


class GenericAdapter(Adapter):
    """Linear, Conv1d/2d/3d (and transposed), HF Conv1D, nn.MultiheadAttention's in-projection (packed, or its
    separate q/k/v projections when ``kdim``/``vdim`` differ from ``embed_dim``), PEFT LoRA linears (effective
    weight), embeddings on request. Tied weights are analysed once, under their first name; a layer whose weight is
    an embedding's (GPT-2's ``lm_head``, LLaMA's tied head) is that embedding: left out unless
    ``include_embeddings``, then analysed once under the embedding's name.

    ``lora_scaling=False`` analyses LoRA layers as ``W + B @ A`` without ``lora_alpha / r`` (compat).
    """

    name = "generic"

    def __init__(self, lora_scaling: bool = True):
        self.lora_scaling = lora_scaling

    def enumerate(self, model: nn.Module, include_embeddings: bool = False) -> list[MatrixSpec]:
        specs: list[MatrixSpec] = []
        seen: set[int] = set()
        embedding_weights = _embedding_weights(model)
        lora_prefixes: list[str] = []
        for name, mod in model.named_modules():
            if any(name.startswith(p) for p in lora_prefixes):
                continue  # base layer and factors of a LoRA wrapper: analysed as one effective weight
            if is_lora_layer(mod):
                lora_prefixes.append(name + ".")
                base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod.base_layer
                seen.add(id(base.weight))
                specs.append(MatrixSpec(
                    name, "lora", lambda m=mod: lora_effective_weight(m, scaled=self.lora_scaling), name,
                    _layer_params(mod),
                ))
                continue
            if isinstance(mod, nn.MultiheadAttention):
                specs += _attention_in_projections(name, mod, seen)
                continue  # out_proj is a Linear and comes as its own module
            kind = module_kind(mod, include_embeddings)
            w = getattr(mod, "weight", None)
            if kind is None or not isinstance(w, torch.Tensor) or isinstance(w, nn.parameter.UninitializedParameter):
                continue
            if id(w) in seen or (kind != "embedding" and id(w) in embedding_weights):
                continue  # tied to a matrix already listed, or to an embedding (listed as one, if asked for)
            seen.add(id(w))
            specs.append(MatrixSpec(name, kind, lambda m=mod: m.weight.detach(), name, _layer_params(mod)))
        return specs


def _attention_in_projections(name: str, mod: nn.MultiheadAttention, seen: set[int]) -> list[MatrixSpec]:
    """The in-projection of an ``nn.MultiheadAttention``: one packed (3E, E) matrix, or the separate q/k/v
    projections (E x E, E x kdim, E x vdim) when the key/value sizes differ. Their shared bias (3E) stays with the
    packed matrix, or untuned when the projections are separate (it belongs to all three)."""
    if mod.in_proj_weight is not None:
        parts = [("in_proj", mod.in_proj_weight, [mod.in_proj_weight, mod.in_proj_bias])]
    else:
        parts = [(f"{x}_proj", w, [w]) for x, w in (("q", mod.q_proj_weight), ("k", mod.k_proj_weight),
                                                      ("v", mod.v_proj_weight))]
    specs = []
    for part, w, params in parts:
        if w is None or id(w) in seen:
            continue
        seen.add(id(w))
        full = f"{name}.{part}" if name else part
        specs.append(MatrixSpec(full, "linear", lambda w=w: w.detach(), full, [p for p in params if p is not None]))
    return specs


def unanalysed(model: nn.Module, specs: list[MatrixSpec]) -> list[tuple[str, str]]:
    """(name, reason) of every floating parameter of 2 or more dims that none of ``specs`` analyses: what an
    analysis of ``model`` leaves out (biases and norms, 1-d, are not listed)."""
    covered = {id(p) for s in specs for p in s.params}
    out = []
    for mod_name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in covered or p.ndim < 2 or not (p.is_floating_point() or p.is_complex()):
                continue
            covered.add(id(p))  # a shared parameter is named once
            name = f"{mod_name}.{pname}" if mod_name else pname
            if isinstance(mod, _EMBEDDING_TYPES):
                reason = "embedding (include_embeddings=False)"
            elif isinstance(mod, nn.RNNBase):
                reason = (f"{type(mod).__name__} recurrent weight: not analysed (SPEC §1 covers Linear, Conv, HF "
                          "Conv1D, LoRA and spectral weights)")
            else:
                reason = f"{p.ndim}-d parameter of {type(mod).__name__}: no adapter rule analyses it"
            out.append((name, reason))
    return out


def _is_embedding_name(name: str) -> bool:
    low = name.lower()
    return any(part in low for part in _EMBEDDING_NAME_PARTS)


def specs_from_named_weights(
    named: Iterable[tuple[str, torch.Tensor]], include_embeddings: bool = False
) -> tuple[list[MatrixSpec], list[tuple[str, str]]]:
    """Specs for (name, tensor) pairs (a state_dict's items), and the (name, reason) of every tensor left out.

    Left out: non-tensors, 0-/1-d tensors (biases, norms), integer/bool buffers, ``*.bias``, and embeddings
    (names containing "embed", "wte.", "wpe.") unless ``include_embeddings``. The kind is guessed from the tensor
    (:func:`tempbalance.spectra.guess_kind`); the unit is the name without a trailing ".weight".
    """
    specs: list[MatrixSpec] = []
    skipped: list[tuple[str, str]] = []
    seen: set[int] = set()
    embeddings: set[int] = set()
    pairs = list(named)
    if not include_embeddings:  # a tensor tied to an embedding is one, whatever its other name
        embeddings = {id(t) for n, t in pairs if isinstance(t, torch.Tensor) and _is_embedding_name(str(n))}
    for name, t in pairs:
        name = str(name)
        if not isinstance(t, torch.Tensor):
            skipped.append((name, f"not a tensor ({type(t).__name__})"))
        elif t.ndim < 2:
            skipped.append((name, f"{t.ndim}-d (bias/norm/scalar)"))
        elif not (t.is_floating_point() or t.is_complex()):
            skipped.append((name, f"dtype {t.dtype} is not floating point"))
        elif name.endswith(".bias"):
            skipped.append((name, "bias"))
        elif _is_embedding_name(name) and not include_embeddings:
            skipped.append((name, "embedding (include_embeddings=False)"))
            embeddings.add(id(t))
        elif id(t) in embeddings:
            skipped.append((name, "tied to an embedding (include_embeddings=False)"))
        elif id(t) in seen:
            skipped.append((name, "tied to a tensor listed before"))
        else:
            try:
                kind = "embedding" if _is_embedding_name(name) else spectra.guess_kind(t)
            except ValueError as e:
                skipped.append((name, str(e)))
                continue
            seen.add(id(t))
            unit = name[: -len(".weight")] if name.endswith(".weight") else name
            params = [t] if isinstance(t, nn.Parameter) and t.requires_grad else []
            specs.append(MatrixSpec(name, kind, lambda t=t: t.detach(), unit, params))
    return specs, skipped

