"""HF encoders (BERT, RoBERTa, MiniLM, DistilBERT, ...): one unit per transformer block.

Blocks are the entries of ``*.encoder.layer`` (BERT family) or ``*.transformer.layer`` (DistilBERT); embeddings,
pooler and classifier head are not tuned (factor 1) unless ``include_embeddings`` analyses the embeddings.
Works on the bare encoder, a task model and a PEFT-wrapped model alike.
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .blocks import BlockAdapter, module_lists

_SUFFIXES = ("encoder.layer", "transformer.layer")


class HFEncoderAdapter(BlockAdapter):
    name = "hf_encoder"

    def find_blocks(self, model: nn.Module) -> list[str]:
        return [f"{path}.{i}" for path, ml in module_lists(model, _SUFFIXES) for i in range(len(ml))]


def detect(model: nn.Module) -> bool:
    return bool(module_lists(model, _SUFFIXES))


register_adapter("hf_encoder", detect, HFEncoderAdapter, priority=10)
