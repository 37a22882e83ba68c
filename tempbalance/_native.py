"""Placeholder until the native core is built (the lead engineer replaces this file)."""
from __future__ import annotations

import torch

core = None
unavailable_reason: str | None = "not built"


def default_threads() -> int:
    """Threads the native core uses by default: torch's intra-op thread count."""
    return torch.get_num_threads()
