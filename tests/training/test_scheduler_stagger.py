"""stagger=k: each refresh analyses one of k cost-balanced slices of the matrices, the others keep their last
alphas; checked against float64 SVD alphas of the weights each matrix was last analysed on."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from tempbalance.training.scheduler import TempBalance
from test_scheduler import KW, batches, make_model, numpy_alpha, sigmoid_factor, train_and_resume, train_step

LAYERS = ["0", "3", "5", "7"]  # Linear 16->48, 48->48, 48->24, 24->3 (the last: 3 eigenvalues, untuned)


def flops(m: int, n: int) -> float:
    """Gram of the smaller side plus a symmetric eigensolve, by hand."""
    d, big = min(m, n), max(m, n)
    return big * d * d + 4 / 3 * d ** 3


def weights_now(model) -> dict[str, np.ndarray]:
    return {u: model[int(u)].weight.detach().numpy().copy() for u in LAYERS}


def test_slices_cover_every_matrix_once_and_balance_the_cost():
    model = make_model()
    tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), stagger=2, **KW)
    costs = {0: flops(48, 16), 1: flops(48, 48), 2: flops(24, 48), 3: flops(3, 24)}
    # largest first onto the cheaper slice: the 48x48 alone, then everything else (together still cheaper)
    assert costs[1] > costs[0] + costs[2] + costs[3]
    assert tb._refresher.passes.slices == [[1], [0, 2, 3]]
    tb3 = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), stagger=3, **KW)
    assert sorted(i for s in tb3._refresher.passes.slices for i in s) == [0, 1, 2, 3]


def test_each_refresh_analyses_its_slice_and_keeps_the_other_alphas():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tb = TempBalance(model, opt, interval=1, stagger=2, **KW)
    seen = {u: weights_now(model)[u] for u in LAYERS}  # the weights each matrix was last analysed on
    slices = [["3"], ["0", "5", "7"]]
    prev = tb.alphas
    for t, b in enumerate(batches(6)):
        train_step(model, opt, b)
        tb.step()
        fresh = slices[t % 2]
        now = weights_now(model)
        for u in fresh:
            seen[u] = now[u]
        alphas = tb.alphas
        for u in LAYERS[:3]:
            np.testing.assert_allclose(alphas[u], numpy_alpha(seen[u]), rtol=1e-4, err_msg=f"step {t + 1} {u}")
        for u in set(LAYERS) - set(fresh):
            assert alphas[u] == prev[u] or (math.isnan(alphas[u]) and math.isnan(prev[u]))
        rec = tb.history[-1]
        assert rec["analysed"] == len(fresh)
        drift = [abs(alphas[u] - prev[u]) for u in fresh if math.isfinite(alphas[u])]
        assert rec["stale_drift"] == pytest.approx(max(drift))
        tuned = np.array([alphas[u] for u in LAYERS[:3]])
        np.testing.assert_allclose([tb.factors[u] for u in LAYERS[:3]], sigmoid_factor(tuned), rtol=1e-4)
        prev = alphas
    assert tb.history[0]["analysed"] == 4  # the pass at construction analyses everything


def test_resume_mid_cycle_is_bit_for_bit():
    data = batches(7)

    def fresh(seed):
        model = make_model(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=0.02)
        return model, opt, TempBalance(model, opt, interval=1, stagger=3, **KW)

    (_, _, tb), _, (_, _, tb3), _ = train_and_resume(fresh, data, 4)  # stopped mid-cycle: 4 refreshes of 3 slices
    assert tb3.factors == tb.factors
    assert [h["analysed"] for h in tb3.history] == [h["analysed"] for h in tb.history]
    other = make_model()
    with pytest.raises(ValueError, match="stagger"):
        TempBalance(other, torch.optim.SGD(other.parameters(), lr=0.1), stagger=2, **KW).load_state_dict(
            tb.state_dict())


def test_a_failure_is_warned_once_and_its_unit_keeps_its_factor_until_reanalysed():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tb = TempBalance(model, opt, interval=1, stagger=2, **KW)
    data = batches(3)
    train_step(model, opt, data[0])
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")  # in the slice the next refresh analyses
    with pytest.warns(RuntimeWarning, match=r"failed for unit\(s\) \['3'\]"):
        tb.step()
    kept = tb.factors["3"]
    with torch.no_grad():
        model[3].weight[0, 0] = 0.0
    train_step(model, opt, data[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stale failure is not warned again
        tb.step()  # analyses the other slice
    assert tb.factors["3"] == kept and "3" in tb.history[-1]["failed"]
    train_step(model, opt, data[2])
    tb.step()  # slice of '3' again: fitted again
    assert tb.history[-1]["failed"] == [] and tb.factors["3"] != kept


def test_background_passes_stagger_too():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tb = TempBalance(model, opt, interval=2, lag=1, stagger=2, **KW)
    for b in batches(8):
        train_step(model, opt, b)
        tb.step()
    # refreshes start at steps 2, 4, 6, 8 and apply a step later; the one of step 8 is still pending
    assert [h["analysed"] for h in tb.history] == [4, 1, 3, 1]
    assert [(h["started_step"], h["step"]) for h in tb.history[1:]] == [(2, 3), (4, 5), (6, 7)]
    assert tb.state_dict()["passes"]["pending"]["indices"] == [0, 2, 3]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_stagger_validation(bad):
    model = make_model()
    with pytest.raises(ValueError, match="stagger must be an integer >= 1"):
        TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), stagger=bad, **KW)


@pytest.mark.parametrize("kw, match", [(dict(stagger=2), "stagger >= 2"), (dict(lag=1), "lag >= 1")])
def test_stagger_and_lag_are_refused_under_torch_distributed(kw, match):
    import socket

    import torch.distributed as dist

    with socket.socket() as s:  # a free port for the one-rank group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        from tempbalance.distributed import Coordinator

        model = make_model()
        group = Coordinator(None)  # a one-rank group would otherwise run as a single process
        with pytest.raises(ValueError, match=match):
            TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), process_group=group, **kw, **KW)
        tb = TempBalance(model, torch.optim.SGD(model.parameters(), lr=0.1), process_group=group, **KW)
        assert tb.factors  # the default settings work there
    finally:
        dist.destroy_process_group()
