"""Warnings attributed to the user's line: the first caller outside tempbalance and torch (a warning raised inside
an optimizer step pre-hook would otherwise point at ``torch/optim/optimizer.py``)."""
from __future__ import annotations

import os
import sys
import warnings

import torch

_OURS = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _stacklevel() -> int:
    """The ``stacklevel`` of the first frame (counting from warn()'s caller) outside tempbalance and torch; the
    outermost frame when every frame is inside (the warning then points at the program's entry)."""
    frame, level = sys._getframe(2), 2
    while frame.f_back is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not (path.startswith(_OURS) or path.startswith(_TORCH)):
            break
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` pointing at the user's code."""
    warnings.warn(message, category, stacklevel=_stacklevel())
