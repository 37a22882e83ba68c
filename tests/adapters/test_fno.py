"""FNO adapter: complex spectral weights (dense and factorized) per mode, plus the 1x1 convs; min_eigs 10."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from schedule_cases import SCHEDULES, assert_sigmoid_factors, run_checked
from tempbalance.adapters import get_adapter
from tempbalance.training.scheduler import TempBalance

neuralop = pytest.importorskip("neuralop")
from neuralop.models import FNO  # noqa: E402


def tiny_fno(seed=0, **kw):
    torch.manual_seed(seed)
    return FNO(n_modes=(8, 8), hidden_channels=16, in_channels=1, out_channels=1, n_layers=2, **kw)


def data(n):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 1, 16, 16, generator=g)) for _ in range(n)]


def mse(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def numpy_spectral_alpha(w: np.ndarray) -> float:
    """Pool the squared singular values of every (in, out) mode slice; median-xmin Hill in float64."""
    w = w.astype(np.complex128)
    slices = w.reshape(w.shape[0], w.shape[1], -1).transpose(2, 0, 1)
    lam = np.sort(np.concatenate([np.linalg.svd(s, compute_uv=False) ** 2 for s in slices]))
    i = len(lam) // 2
    return 1.0 + (len(lam) - i) / np.sum(np.log(lam[i:] / lam[i]))


@pytest.mark.parametrize("factorization", [None, "tucker"])
def test_spectral_weights_found_and_analysed(factorization):
    m = tiny_fno(factorization=factorization, rank=0.5)
    a = get_adapter(m)
    assert a.name == "fno" and a.min_eigs == 10 and a.default_unit == "layer"
    specs = {s.name: s for s in a.enumerate(m)}
    conv = m.fno_blocks.convs[0]
    w = specs["fno_blocks.convs.0"].weight()
    assert specs["fno_blocks.convs.0"].kind == "spectral" and w.is_complex() and tuple(w.shape) == (16, 16, 8, 5)
    dense = conv.weight.to_tensor() if hasattr(conv.weight, "to_tensor") else conv.weight
    torch.testing.assert_close(w, dense.detach())
    assert {"fno_blocks.fno_skips.0.conv", "lifting.fcs.1", "projection.fcs.0"} <= set(specs)
    tb = TempBalance(m, torch.optim.Adam(m.parameters(), lr=1e-3), backend="torch")
    assert tb.analysis_options["min_eigs"] == 10
    assert tb.alphas["fno_blocks.convs.0"] == pytest.approx(numpy_spectral_alpha(w.numpy()), rel=1e-4)
    # 1x1 convs with >= 10 eigenvalues are tuned; lifting's 3-wide input and the 1-channel output are not
    assert math.isfinite(tb.unit_alphas["fno_blocks.fno_skips.0.conv"])
    assert math.isnan(tb.unit_alphas["lifting.fcs.0"]) and tb.factors["lifting.fcs.0"] == 1.0
    assert math.isnan(tb.unit_alphas["projection.fcs.1"])


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_training_under_every_schedule(schedule):
    m = tiny_fno()
    tb = run_checked(m, mse, data(4), schedule, backend="torch", interval=2)
    assert_sigmoid_factors(tb)
    spectral = {id(p) for p in m.fno_blocks.convs[1].parameters()}
    units = {u for g, u in zip(tb.optimizer.param_groups, tb.group_units) if {id(p) for p in g["params"]} & spectral}
    assert units == {"fno_blocks.convs.1"}


def test_block_units_and_factorized_training():
    m = tiny_fno(factorization="tucker", rank=0.5)
    tb = run_checked(m, mse, data(3), "hf_linear", unit="block", backend="torch", interval=1)
    assert sorted(tb.units) == ["fno_blocks.0", "fno_blocks.1", "lifting", "projection"]
    assert_sigmoid_factors(tb)
    core = m.fno_blocks.convs[0].weight.core
    assert [u for g, u in zip(tb.optimizer.param_groups, tb.group_units) if any(p is core for p in g["params"])] \
        == ["fno_blocks.0"]
