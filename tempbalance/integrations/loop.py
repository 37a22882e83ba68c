"""A plain PyTorch loop needs nothing beyond :meth:`TempBalance.step`::

    tb = TempBalance(model, optimizer, base_scheduler=scheduler, interval=100)   # 1
    ...
        optimizer.step()
        tb.step()                                                                 # 2 (instead of scheduler.step())

For loops you cannot edit (a library's train function), :func:`auto_step` runs ``tb.step()`` after every
``optimizer.step()`` through the optimizer's step hook, so construction is the only line added.
"""
from __future__ import annotations

from typing import Any


def auto_step(tb: Any) -> Any:
    """Call ``tb.step()`` after every ``tb.optimizer.step()``; returns the hook handle (``.remove()`` undoes it).

    Don't combine with explicit ``tb.step()`` calls, nor with optimizers whose ``step()`` runs twice per update
    (SAM's first/second step): there call ``tb.step()`` yourself once per update.
    """
    register = getattr(tb.optimizer, "register_step_post_hook", None)
    if register is None:
        raise TypeError(f"{type(tb.optimizer).__name__} has no register_step_post_hook; call tb.step() after "
                        "optimizer.step() instead")
    return register(lambda optimizer, args, kwargs: tb.step())
