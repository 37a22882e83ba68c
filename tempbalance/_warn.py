"""Warnings attributed to the user's line: the first caller outside tempbalance and torch.

A warning raised inside the optimizer's step hook or a refresh is many frames below the line that caused it, and
how many depends on the path (``tb.step()``, ``optimizer.step()`` through torch's hooks, a framework's loop); a
fixed ``stacklevel`` points into torch for some of them.
"""
from __future__ import annotations

import os
import sys
import warnings

import torch

_INTERNAL = tuple(os.path.dirname(os.path.abspath(p)) + os.sep for p in (__file__, torch.__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` call in the calling function point at the first frame
    outside tempbalance and torch (1, the calling function itself, when there is none: e.g. a background thread)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 1


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the user's line (see :func:`user_stacklevel`)."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
