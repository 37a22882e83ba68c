"""Integrations: HF ``Trainer`` (:mod:`.hf_trainer`) and the plain PyTorch loop (:mod:`.loop`).

Importing this package does not import transformers; :mod:`.hf_trainer` does.
"""
from .loop import auto_step

__all__ = ["auto_step"]
