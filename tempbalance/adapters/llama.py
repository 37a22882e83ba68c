"""LLaMA-style decoders (LLaMA, Mistral, Qwen2/3, SmolLM, ...), with or without PEFT LoRA: one unit per block.

Blocks are the entries of a ``*layers`` ModuleList whose modules have ``self_attn`` and ``mlp``. A LoRA-wrapped
linear is analysed as its effective weight ``W + scaling * B @ A`` (transposed when ``fan_in_fan_out``;
``scaling`` is PEFT's ``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA; ``lora_scaling=False`` leaves it out, as the
reference code). In block mode the block's factor drives every trainable parameter of the block - with PEFT that
is the trainable ``lora_A`` / ``lora_B``. DoRA is refused. Embeddings and the LM head are not tuned; a tied LM head
is the embedding tensor and is counted once.
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .blocks import BlockAdapter, module_lists


def _decoder_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    return [(p, ml) for p, ml in module_lists(model, ("layers",))
            if len(ml) and all(hasattr(b, "self_attn") and hasattr(b, "mlp") for b in ml)]


class LlamaAdapter(BlockAdapter):
    name = "llama"

    def find_blocks(self, model: nn.Module) -> list[str]:
        return [f"{path}.{i}" for path, ml in _decoder_lists(model) for i in range(len(ml))]


def detect(model: nn.Module) -> bool:
    return bool(_decoder_lists(model))


register_adapter("llama", detect, LlamaAdapter, priority=10)
