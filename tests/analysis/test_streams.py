"""The handoff of a background pass's weight snapshot between CUDA streams (tempbalance/analysis/streams.py), on the CPU.

`FakeStreams` (tests/analysis/test_cuda_backend.py) records what a Handoff asks of torch.cuda; with the CUDA stand-in
installed, CPU tensors count as device tensors. What a GPU must show on top (the copies really are complete
before the background stream reads them, and their memory is not reused under it) is checked by
scripts/gpu_check.sh.
"""
from __future__ import annotations

import pytest
import torch

from tempbalance import TempBalance
from tempbalance.analysis import streams
from test_cuda_backend import FakeDeviceCore, core, install, model

pytestmark = pytest.mark.skipif(core is None or not hasattr(core, "unit_factors_packed"),
                                reason="native core without the CUDA twins (rebuild the package)")


def test_handoff_orders_the_side_stream_after_the_copies_and_keeps_their_memory(monkeypatch):
    fake = install(monkeypatch, FakeDeviceCore())
    log = fake.streams.log
    copies = [torch.ones(3, 4), torch.ones(5, 2)]
    handoff = streams.Handoff(copies)
    assert log == [("record", "training")]  # one event per device, on the stream the copies were made on
    seen = []
    handoff.run(lambda: seen.append(fake.streams.current))
    assert seen == ["side0"]  # the body ran with the side stream current
    assert log[1:] == [("stream", "side0"), ("wait", "side0"), ("record_stream", "side0", (3, 4)),
                       ("record_stream", "side0", (5, 2)), ("enter", "side0"), ("exit", "side0")]


def test_host_tensors_pass_straight_through():
    # No CUDA tensors (the real dispatch): no event, no stream, nothing asked of torch.cuda.
    handoff = streams.Handoff([torch.ones(2, 2)])
    assert handoff.events == {} and handoff.run(lambda x: x + 1, 1) == 2


def test_background_pass_runs_on_its_side_stream_after_the_snapshot(monkeypatch):
    # lag=1: the snapshot is copied on the training stream, the pass waits for it on a side stream of its own.
    fake = install(monkeypatch, FakeDeviceCore())
    m = model()
    tb = TempBalance(m, torch.optim.SGD(m.parameters(), lr=0.1), unit="layer", min_eigs=8, interval=1, lag=1)
    assert set(fake.called_on) == {"training"}  # the construction-time pass is synchronous
    fake.called_on.clear()
    tb.step()
    tb.wait()
    tb.step()  # applied here
    log = fake.streams.log
    assert log[0] == ("record", "training") and ("wait", "side0") in log
    assert log.index(("wait", "side0")) < log.index(("enter", "side0"))
    assert sum(1 for e in log if e[0] == "record_stream") == 4  # every copied weight
    assert fake.called_on and set(fake.called_on) <= {"side0", "side1"}
    assert tb.history[-1]["started_step"] == 1
