"""Fused per-group LR rescaling (tempbalance/training/fused_gpu.py), run on the CPU.

The CUDA stand-in of tests/analysis/test_cuda_backend.py serves CPU tensors as if they were on a GPU, and its
``unit_factors`` is the CPU twin of the kernel (``_core.unit_factors_packed``). Tensor learning rates (as fused or
capturable Adam/AdamW hold them) then take the fused path: the refresh writes ``base x factor`` into the lr tensors
from the device-side factors, with no host read of a device tensor between the pass and the next optimizer step,
and the Python floats come later. Everything must equal, bit for bit, what the host path does with the same model.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from tempbalance import TempBalance
from tempbalance.training import fused_gpu as device_lr, mapping
from test_cuda_backend import FakeDeviceCore, core, cuda_backend_off, install, model

pytestmark = pytest.mark.skipif(core is None or not hasattr(core, "unit_factors_packed"),
                                reason="native core without the CUDA twins (rebuild the package)")

_HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


@contextlib.contextmanager
def no_host_reads():
    """Any read of a tensor's value by the host (on a GPU: a synchronisation) raises inside."""
    saved = {name: getattr(torch.Tensor, name) for name in _HOST_READS}

    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"host read of a device tensor: Tensor.{name}")
        return read

    for name in _HOST_READS:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def build(seed=0, tensor_lr=True, **kw):
    m = model(seed)
    lr = torch.tensor(0.01) if tensor_lr else 0.01
    opt = torch.optim.Adam(m.parameters(), lr=lr, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.1 * t))
    return m, opt, TempBalance(m, opt, base_scheduler=sched, unit="layer", min_eigs=8, interval=2, **kw)


def train(m, opt, tb, steps, guard=False, poison_at=None):
    g = torch.Generator().manual_seed(1)
    lrs = []
    for step in range(steps):
        x = torch.randn(4, 64, generator=g)
        loss = m[4](m[3](torch.relu(m[0](x)) @ torch.eye(96))).pow(2).mean() + m[2].weight.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if poison_at == step:
            with torch.no_grad():
                m[3].weight[0, 0] = float("nan")
        if guard:
            with guarded(tb):
                tb.step()
        else:
            tb.step()
        lrs.append([float(g["lr"]) for g in opt.param_groups])
    return lrs


@contextlib.contextmanager
def guarded(tb):
    """No host read from the start of the refresh to the end of step() (what follows the pass: the next
    optimizer.step())."""
    start, apply = tb._start_refresh, tb._apply
    state = {"on": False}

    def start_refresh():
        state["on"] = True
        with no_host_reads():
            start()

    def apply_after():
        if state["on"]:
            with no_host_reads():
                return apply()
        return apply()

    tb._start_refresh, tb._apply = start_refresh, apply_after
    try:
        yield
    finally:
        tb._start_refresh, tb._apply = start, apply


def test_tensor_lrs_get_the_factors_from_the_device_without_host_reads(monkeypatch):
    fake = install(monkeypatch, FakeDeviceCore())
    m, opt, tb = build()
    got = train(m, opt, tb, 6, guard=True)
    assert fake.calls["unit_factors"] == 3  # refreshes after steps 2, 4 and 6 (the one at construction: host path)
    with cuda_backend_off():
        m2, opt2, plain = build()
        want = train(m2, opt2, plain, 6)
    assert got == want  # the lr tensors hold the same bits as the host path writes
    assert tb.factors == plain.factors and tb.alphas == plain.alphas
    strip = ("seconds", "blocking_seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in tb.history] == \
        [{k: v for k, v in r.items() if k not in strip} for r in plain.history]


def test_floats_are_materialised_when_read():
    fake = FakeDeviceCore()
    with pytest.MonkeyPatch.context() as mp:
        install(mp, fake)
        m, opt, tb = build()
        train(m, opt, tb, 2)  # a fused refresh after step 2, not committed yet
        assert tb._refresher.fused.pending is not None and len(tb._refresher.results.history) == 1
        record = tb.history[-1]  # reading commits it
        assert tb._refresher.fused.pending is None and record["step"] == 2 and len(tb.history) == 2
        assert math.isclose(float(opt.param_groups[1]["lr"]), tb.get_base_lr()[1] * tb.factors[tb.group_units[1]],
                            rel_tol=1e-6)


def test_a_failed_layer_keeps_its_factor_on_the_device_too(monkeypatch):
    install(monkeypatch, FakeDeviceCore())
    m, opt, tb = build()
    with pytest.warns(RuntimeWarning, match="failed for unit"):
        got = train(m, opt, tb, 4, poison_at=3)  # layer 3 is NaN when the refresh after the 4th step runs
        assert tb.history[-1]["failed"] == ["3"]  # the commit (and its warning) comes when read
    with cuda_backend_off():
        m2, opt2, plain = build()
        with pytest.warns(RuntimeWarning, match="failed for unit"):
            want = train(m2, opt2, plain, 4, poison_at=3)
    assert got == want and tb.factors == plain.factors and tb.factors["3"] != 1.0


def test_float_lrs_and_background_passes_use_the_host_path(monkeypatch):
    fake = install(monkeypatch, FakeDeviceCore())
    train(*build(tensor_lr=False), 4)
    train(*build(lag=1), 4)
    assert fake.calls["unit_factors"] == 0


def test_state_dict_commits_the_device_refresh_first(monkeypatch):
    install(monkeypatch, FakeDeviceCore())
    m, opt, tb = build()
    train(m, opt, tb, 2)
    state = tb.state_dict()
    assert len(state["results"]["history"]) == 2 and state["results"]["factors"] == tb.factors


@pytest.mark.parametrize("metric", ["alpha", "stable_rank"])
def test_unit_factor_kernel_commits_like_the_scheduler(metric):
    # tb::packed_unit_factors against TempBalance's host rule, written out: ok rows' finite values, mean per unit,
    # units with a non_finite/empty matrix keep their previous factor, the mapping over the rest.
    rng = np.random.default_rng(2)
    n, n_units = 40, 7
    table = np.zeros((n, 10))
    table[:, 0] = rng.uniform(2, 6, n)
    table[:, 6] = rng.uniform(5, 50, n)
    table[:, 9] = rng.choice([0, 0, 0, 0, 1, 2, 4, 5], n)  # ok, too_few, flat_tail, non_finite, empty
    table[table[:, 9] != 0, 0] = np.nan
    units = rng.integers(-1, n_units, n)
    previous = rng.uniform(0.5, 2.0, n_units)
    col = {"alpha": 0, "stable_rank": 6}[metric]
    values, factors, taken = core.unit_factors_packed(table, units, n_units, metric, previous, "sigmoid", 10.0, 2.0,
                                                      1.0, 0.5, 1.5, False)
    vals = np.where((table[:, 9] == 0) & np.isfinite(table[:, col]), table[:, col], np.nan)
    means = mapping.unit_means(vals, units, n_units, backend="native")
    failed = {int(u) for u, s in zip(units, table[:, 9]) if u >= 0 and s in (4, 5)}
    means[list(failed)] = np.nan
    want = mapping.lr_factors(means, backend="native")
    want[list(failed)] = previous[list(failed)]
    assert taken and failed
    np.testing.assert_array_equal(factors, want)
    np.testing.assert_array_equal(values, means)


def test_unit_factor_kernel_keeps_every_factor_when_one_is_invalid():
    # TBLinearMap with s1 < 0 gives a negative factor: the host raises and keeps all factors; so does the kernel.
    table = np.zeros((3, 10))
    table[:, 0] = [2.0, 3.0, 4.0]
    previous = np.array([1.1, 0.9, 1.3])
    _, factors, taken = core.unit_factors_packed(table, np.arange(3), 3, "alpha", previous, "linear", 10.0, 2.0, 1.0,
                                                 -0.5, 1.5, False)
    assert not taken
    np.testing.assert_array_equal(factors, previous)


def test_write_lrs_rounds_like_fill_of_the_host_product():
    lrs = [torch.tensor(0.0), torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0)]
    base = [3e-4, 1e-3, 7e-5]
    factors = torch.tensor([1.2345678901, 0.87654321], dtype=torch.float64)
    device_lr.write_lrs(lrs, base, factors, [1, 0, -1])
    want = [torch.tensor(0.0).fill_(3e-4 * 0.87654321), torch.tensor(1e-3 * 1.2345678901, dtype=torch.float64),
            torch.tensor(0.0).fill_(7e-5)]
    assert [t.item() for t in lrs] == [t.item() for t in want]
