"""Independent transcriptions of the papers' reference code, the oracles of the compat tests.

Each module was written from reading the reference repository at a fixed commit (cited file:line for every rule);
nothing is vendored or copied, and nothing here imports ``tempbalance``. They work on a torch model and return
per-parameter learning rates in float64.

* :mod:`reference_oracles.modelbalancing` - ZihangHLiu/ModelBalancing (EMNLP'24) at 9970cea.
* :mod:`reference_oracles.modelbalancing_fno` - the same repository's FNO trainer (sciml/pdebench/models/fno/).
* :mod:`reference_oracles.tempbalance_cnn` - YefanZhou/TempBalance (NeurIPS'23) at 9f0d9c7, ``tempbalance.py``.
* :mod:`reference_oracles.alphadecay` - hed-ucas/AlphaDecay (NeurIPS'25) at 23ce27c,
  ``LLaMa-pretraining/WeightDecayUnbalance.py`` and ``torchrun_main.py`` (per-parameter weight decays).
"""
