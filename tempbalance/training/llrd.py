"""Layer-wise learning-rate decay (LLRD): the fixed, top-heavy lr profile practitioners use when fine-tuning
pretrained transformers (ELECTRA 0.8, BEiT 0.75, Sun et al. 2019 0.95), as the baseline to A/B TempBalance against.

    optimizer = torch.optim.AdamW(tempbalance.layer_decay_groups(model, lr=5e-5, decay=0.85, weight_decay=0.01))

With ``L`` blocks (found by the model's adapter, as TempBalance finds its block units), block ``l`` (0 = nearest
the input) trains at ``lr * decay ** (L - 1 - l)``, the input side (embeddings) at ``lr * decay ** L``, and
everything above the blocks (pooler, classification head) at ``lr``. A parameter outside every block counts as
input side when it is registered before the first block or belongs to an ``nn.Embedding`` (a table the blocks
read, such as MPNet's shared ``relative_attention_bias``); every other one is the head.
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..adapters import Adapter, get_adapter, unwrap_model
from ..adapters.blocks import block_of

EMBEDDINGS = "embeddings"  # the depth names of the parameters outside the blocks
HEAD = "head"


def _check_decay(decay: float) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0 < decay <= 1):
        raise ValueError(f"decay must be a number in (0, 1] (1 = no decay), got {decay!r}")
    return float(decay)


def _blocks(model: nn.Module, adapter: str | Adapter) -> list[str]:
    """The model's blocks, input side first, from its adapter; a ValueError when the adapter knows none."""
    ad = get_adapter(model, adapter)
    inner = unwrap_model(model)
    blocks = ad.find_blocks(inner) if hasattr(ad, "find_blocks") else []
    if not blocks:
        raise ValueError(f"layer-wise lr decay needs the model's blocks, and the {getattr(ad, 'name', ad)!r} "
                         f"adapter finds none in {type(inner).__name__}; pass adapter= one that knows them")
    return list(blocks)


def layer_depths(model: nn.Module, adapter: str | Adapter = "auto") -> dict[str, str]:
    """Where every parameter sits, by name: its block (a module path from the adapter), ``"embeddings"`` (input
    side) or ``"head"`` (above the blocks)."""
    blocks = _blocks(model, adapter)
    inner = unwrap_model(model)
    embedding_params = {id(p) for m in inner.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    out: dict[str, str] = {}
    seen_block = False
    for name, p in inner.named_parameters():
        block = block_of(name.rsplit(".", 1)[0], blocks)
        if block is not None:
            seen_block = True
            out[name] = block
        else:
            out[name] = EMBEDDINGS if (not seen_block or id(p) in embedding_params) else HEAD
    return out


def layer_decay_profile(model: nn.Module, decay: float, adapter: str | Adapter = "auto") -> dict[str, float]:
    """The lr multiplier of every block (keyed like TempBalance's block units: ``block -> decay ** (L - 1 -
    l)``) plus ``"embeddings"`` (``decay ** L``) and ``"head"`` (1): LLRD's profile beside TempBalance's
    factors."""
    decay = _check_decay(decay)
    blocks = _blocks(model, adapter)
    n = len(blocks)
    out = {b: decay ** (n - 1 - i) for i, b in enumerate(blocks)}
    out[EMBEDDINGS] = decay ** n
    out[HEAD] = 1.0
    return out


def layer_decay_scales(model: nn.Module, decay: float, adapter: str | Adapter = "auto") -> dict[str, float]:
    """The lr multiplier of every parameter, by name (:func:`layer_depths` mapped through
    :func:`layer_decay_profile`)."""
    profile = layer_decay_profile(model, decay, adapter)
    return {name: profile[depth] for name, depth in layer_depths(model, adapter).items()}


def layer_decay_groups(model: nn.Module, lr: float, decay: float, *, weight_decay: float = 0.0,
                       adapter: str | Adapter = "auto") -> list[dict[str, Any]]:
    """Optimizer param groups with layer-wise lr decay: per depth (embeddings, each block, head; in that order)
    one group of its matrices (``weight_decay``) and one of its vectors (biases, norms: no weight decay), each at
    ``lr`` times the depth's multiplier (:func:`layer_decay_profile`). Frozen parameters are left out. An lr
    schedule (``LambdaLR``, warmup) scales every group alike, so the profile holds through training."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not (
            math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    profile = layer_decay_profile(model, decay, adapter)
    depths = layer_depths(model, adapter)
    order = [EMBEDDINGS] + [d for d in profile if d not in (EMBEDDINGS, HEAD)] + [HEAD]
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in unwrap_model(model).named_parameters():
        if p.requires_grad:
            buckets.setdefault((depths[name], p.ndim >= 2), []).append(p)
    return [dict(params=buckets[d, mat], lr=lr * profile[d], weight_decay=float(weight_decay) if mat else 0.0)
            for d in order for mat in (True, False) if (d, mat) in buckets]
