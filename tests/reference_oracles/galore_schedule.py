"""The warmup + cosine LambdaLR factor both pretraining references take from GaLore's ``training_utils.py``
(``_get_cosine_schedule_with_warmup_lr_lambda``): hed-ucas/AlphaDecay@23ce27c
``LLaMa-pretraining/peft_pretraining/training_utils.py:128-143`` and hed-ucas/Layer-wise-Learning-Rate@bbd0dcf
``galore_utils/training_utils.py:206-221`` hold the same function. Transcribed once, used by both oracles."""
from __future__ import annotations

import math


def cosine_with_warmup(current_step: int, *, num_warmup_steps: int, cycle_length: int, min_lr_ratio: float) -> float:
    """The factor of step ``current_step``: linear warmup from 0, then cosine to ``min_lr_ratio``; a restarted cycle
    (``current_step`` past ``cycle_length``) begins with two steps at 1e-7."""
    cycle_step = current_step % cycle_length
    if cycle_step < num_warmup_steps:
        if current_step != cycle_step and cycle_step < 2:
            return 1e-7
        return float(cycle_step) / float(max(1, num_warmup_steps))
    progress = float(cycle_step - num_warmup_steps) / float(max(1, cycle_length - num_warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
