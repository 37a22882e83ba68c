"""TempBalance under torch.distributed: the plan (pure functions), the Gram identity, and spawned gloo groups.

The spawned scenarios (tests/distributed_workers.py) run once per module: DDP on 2 ranks (LoRA LLaMA, RoBERTa),
FSDP2 on 2 ranks (LoRA LLaMA, RoBERTa, uneven shards, failures, unsupported layouts), and DDP + FSDP2 on 4 ranks.
Each is compared with the single-process TempBalance / analyze on the same weights, computed in the workers.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import distributed_workers as W
from tempbalance import distributed
from tempbalance.adapters import get_adapter
from tempbalance.distributed.partition import (Layout, Step, assign, chunk_sizes, cost, gram_side, make_plan,
                                        split_rounds, step_for)
from tempbalance.distributed.transport import local_gram


# --- the plan: pure functions ----------------------------------------------------------------------------------------
def test_cost_is_gram_plus_eigensolve_flops():
    # 1 slice of 300 x 100: Gram of the 100 side (300 * 100^2) + eigensolve (4/3 * 100^3)
    assert cost((300, 100), "linear") == pytest.approx(300 * 100 ** 2 + 4 / 3 * 100 ** 3)
    # a 3x3 conv (out 8, in 4): 9 slices of 8 x 4; flatten mode: one 8 x 36 matrix
    assert cost((8, 4, 3, 3), "conv") == pytest.approx(9 * (8 * 16 + 4 / 3 * 64))
    assert cost((8, 4, 3, 3), "conv", "flatten") == pytest.approx(36 * 64 + 4 / 3 * 512)
    assert cost((0, 5), "linear") == 0.0


def test_assign_is_largest_first_and_within_lpt_bound_of_the_optimum():
    rng = np.random.default_rng(0)
    for world in (2, 3):
        for _ in range(20):
            costs = [float(c) for c in rng.integers(1, 100, size=7)]
            owners, loads = assign(costs, world)
            assert assign(costs, world) == (owners, loads)  # deterministic
            assert loads == [sum(c for c, o in zip(costs, owners) if o == r) for r in range(world)]
            best = min(max(sum(c for c, o in zip(costs, combo) if o == r) for r in range(world))
                       for combo in itertools.product(range(world), repeat=len(costs)))
            assert max(loads) <= (4 / 3 - 1 / (3 * world)) * best + 1e-9  # Graham's LPT bound
    # hand-checked: 5 -> rank 0, 4 -> rank 1, the first 3 (index 0) -> rank 1 (4 < 5), the other 3 -> rank 0
    assert assign([3.0, 5.0, 3.0, 4.0], 2) == ([1, 0, 0, 1], [8.0, 7.0])


def test_chunk_sizes_follow_torch_chunk():
    for n, world in [(33, 2), (5, 4), (199, 2), (8, 4), (3, 4), (0, 2)]:
        expect = [len(c) for c in torch.arange(n).chunk(world)] if n else []
        expect += [0] * (world - len(expect))
        assert chunk_sizes(n, world) == expect


def test_transport_choice_by_bytes():
    f32 = torch.float32
    tall = Layout((256, 64), "linear", f32, True, 0)  # row-sharded, Gram of the 64 side = sum of shard Grams
    assert gram_side(tall) == 64
    s2 = step_for(tall, 0, 2, f32, "slices")
    assert (s2.method, s2.nbytes) == ("gram", (64 * 64 + 3) * 4)  # < gather 128 * 64 * 4
    s4 = step_for(tall, 0, 4, f32, "slices")  # 3 Grams (49 KiB) > 3 shards of 64 x 64 (48 KiB)
    assert (s4.method, s4.nbytes) == ("gather", 3 * 64 * 64 * 4)
    wide = Layout((64, 256), "linear", f32, True, 0)  # sharded along the smaller side: gather only
    assert gram_side(wide) is None and step_for(wide, 0, 2, f32, "slices").method == "gather"
    assert gram_side(Layout((64, 256), "linear", f32, True, 1)) == 64
    assert gram_side(Layout((8, 4, 3, 3), "conv", f32, True, 0)) is None
    assert step_for(tall, 0, 2, f32, "slices", allow_gram=False).method == "gather"
    assert step_for(Layout((256, 64), "linear", f32), 1, 2, f32, "slices").method == "local"
    assert step_for(Layout((), "linear", f32, error="boom"), 0, 2, f32, "slices").method == "failed"
    bf16 = Layout((256, 64), "linear", torch.bfloat16, True, 1)  # travels as float32 (gloo, exact upcast)
    assert step_for(bf16, 0, 2, f32, "slices").nbytes == 256 * 32 * 4


def test_rounds_keep_each_owner_within_the_budget():
    steps = [Step(k % 2, "gather", 1.0, 10, 10) for k in range(6)] + [Step(0, "local", 1.0, 0, 0)]
    rounds = split_rounds(steps, 2, budget=20)
    assert [k for r in rounds for k in r] == list(range(7))
    for r in rounds:
        for owner in (0, 1):
            assert sum(steps[k].recv_bytes for k in r if steps[k].owner == owner) <= 20
    assert split_rounds([Step(0, "gather", 1.0, 50, 50)] * 2, 2, budget=20) == [[0], [1]]  # one matrix a round
    plan = make_plan([Layout((256, 64), "linear", torch.float32, True, 0)] * 3, 2, dtype=torch.float32,
                     conv_mode="slices", budget=1 << 30)
    assert plan.rounds == [[0, 1, 2]] and plan.summary()["methods"] == {"gram": 3}


def test_shard_grams_sum_to_the_gram_and_its_eigenvalues():
    """The identity the Gram path relies on, against numpy float64 singular values; plus the NaN/Inf counters."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(199, 40, generator=g, dtype=torch.float64)
    lay = Layout((199, 40), "linear", torch.float64, True, 0)
    total = sum(local_gram(part, lay, torch.float64) for part in w.split(chunk_sizes(199, 3)))
    gram = total[:-3].reshape(40, 40)
    torch.testing.assert_close(gram, w.T @ w)
    sv = np.linalg.svd(w.numpy(), compute_uv=False)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(gram.numpy())), np.sort(sv ** 2), rtol=1e-10)
    assert total[-3:].tolist() == [0.0, 0.0, 0.0]
    bad = w.clone()
    bad[0, 0], bad[5, 1], bad[6, 2] = float("nan"), float("inf"), 1e300  # 1e300 overflows float32
    counts = local_gram(bad, lay, torch.float32)[-3:]
    assert counts.tolist() == [1.0, 1.0, 1.0]
    wide = Layout((40, 199), "linear", torch.float64, True, 1)  # column-sharded: W W^T = sum W_i W_i^T
    total = sum(local_gram(p, wide, torch.float64) for p in w.T.split(chunk_sizes(199, 2), dim=1))
    torch.testing.assert_close(total[:-3].reshape(40, 40), w.T @ w)
    assert torch.isnan(local_gram(None, lay, torch.float32)).all()  # a rank that failed sends NaN


def test_data_parallel_wrappers_are_read_through_with_the_plain_names():
    model = W.odd_mlp()
    plain = [s.name for s in get_adapter(model).enumerate(model)]
    wrapped = torch.nn.DataParallel(model)  # CPU: a wrapper holding .module, like DDP
    adapter = get_adapter(wrapped)
    assert [s.name for s in adapter.enumerate(wrapped)] == plain == ["0", "1", "2", "3"]
    assert get_adapter(wrapped, adapter) is adapter  # wrapping the wrapper's adapter again changes nothing
    assert [s.name for s in adapter.enumerate(wrapped)] == plain
    units = adapter.unit_params(wrapped, adapter.enumerate(wrapped), "layer")
    assert [p is q for p, q in zip(units["0"], model[0].parameters())] == [True, True]


def test_single_process_needs_no_coordinator():
    assert not torch.distributed.is_initialized()
    assert distributed.Coordinator.maybe(None) is None
    with pytest.raises(ValueError, match="transport"):
        distributed.Coordinator(transport="all")  # checked before any torch.distributed call


# --- spawned groups ------------------------------------------------------------------------------------------------
def _run(name: str, world: int, tmp_path_factory) -> list[dict]:
    res = W.run(name, world, tmp_path_factory.mktemp(name))
    for r, out in enumerate(res):
        assert "traceback" not in out, f"rank {r}:\n{out['traceback']}"
    return res


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    return _run("ddp", 2, tmp_path_factory)


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    return _run("fsdp", 2, tmp_path_factory)


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return _run("plain_4", 4, tmp_path_factory)


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def assert_same_alphas(got: dict, ref: dict, tol: float = 1e-5) -> None:
    assert list(got) == list(ref)
    for name in ref:
        if _nan(ref[name]):
            assert _nan(got[name]), name
        else:
            assert abs(got[name] - ref[name]) <= tol, (name, got[name], ref[name])


def assert_matches_single(state: dict, ref: dict, *, exact_lrs: bool = True) -> None:
    assert_same_alphas(state["alphas"], ref["alphas"])
    assert state["units"] == ref["units"]
    assert [r[0] for r in state["rows"].values()] == [r[0] for r in ref["rows"].values()]  # statuses
    if exact_lrs:
        assert state["lrs"] == ref["lrs"] and state["factors"] == ref["factors"]
    else:  # the Gram path: round-off of the summed Grams only
        np.testing.assert_allclose(state["lrs"], ref["lrs"], rtol=1e-5)
        assert list(state["factors"]) == list(ref["factors"])


def assert_ranks_agree(results: list[dict], key: str) -> None:
    for out in results[1:]:
        assert out[key]["lrs"] == results[0][key]["lrs"] and out[key]["factors"] == results[0][key]["factors"]
        assert str(out[key]["rows"]) == str(results[0][key]["rows"])  # NaN-safe: identical reports


def test_ddp_matches_single_process(ddp):
    for out in ddp:
        assert out["coordinated"]  # the default group is used; a 1-rank group is the single-process path
        for stage in ("init", "trained"):
            assert_matches_single(out[stage], out[f"{stage}_ref"])
        assert not any(n.startswith("module.") for n in out["init"]["alphas"])  # DDP's wrapper is unwrapped
        for stage in ("init", "trained"):
            assert_matches_single(out["roberta"][stage], out["roberta"][f"{stage}_ref"])
    for key in ("init", "trained", "nan", "share_failed", "recovered"):
        assert_ranks_agree(ddp, key)


def test_ddp_shares_the_matrices_by_cost(ddp):
    owners = ddp[0]["owners"]
    assert all(out["owners"] == owners for out in ddp)  # the same partition on every rank
    assert sorted(set(owners)) == [0, 1]
    stats = [out["stats"] for out in ddp]
    assert sum(s["analysed"] for s in stats) == len(owners)
    assert stats[0]["methods"] == {"local": len(owners)} and stats[0]["bytes_planned"] == 0  # nothing moves
    assert stats[0]["imbalance"] == pytest.approx(1.0)  # 2 identical blocks split evenly
    rob = [out["roberta"]["owners"] for out in ddp]
    assert rob[0] == rob[1] and set(rob[0]) == {0, 1}


def test_ddp_state_dict_resumes_either_way(ddp):
    for out in ddp:
        assert out["resumed_single_lrs"] == out["trained"]["lrs"]
        assert out["resumed_ddp_lrs"] == out["trained"]["lrs"]


def test_ddp_non_finite_layer_is_agreed_and_its_unit_keeps_its_factor(ddp):
    for out in ddp:
        name, state = out["nan_layer"], out["nan"]
        status, _, unit = state["rows"][name][:3]
        assert status == "non_finite" and "1 NaN" in state["rows"][name][5]
        assert state["history_failed"][-1] == [unit]
        assert state["factors"][unit] == out["nan_before"][unit]


def test_ddp_failed_share_comes_back_as_error_rows(ddp):
    for out in ddp:
        state = out["share_failed"]
        owned = out["share_failed_owned"]
        assert owned and all(state["rows"][n][0] == "error" for n in owned)
        assert all("simulated failure of rank 1" in state["rows"][n][5] for n in owned)
        assert all(r[0] == "ok" for n, r in state["rows"].items() if n not in owned and r[4] >= 20)
        failed_units = sorted({state["rows"][n][2] for n in owned})
        assert state["history_failed"][-1] == failed_units
        for u in failed_units:
            assert state["factors"][u] == out["share_failed_before"][u]
        assert out["recovered"]["history_failed"][-1] == []


def test_disagreement_and_bad_input_raise_on_every_rank(ddp):
    for out in ddp:
        assert out["disagree"].startswith("RuntimeError") and "ranks [1]" in out["disagree"]
        assert "layer 'w' differs between ranks" in out["mismatch"] and "(65, 64)" in out["mismatch"]
        assert "rank 1 analyses other matrices than rank 0" in out["mismatch_names"] and "'w1'" in out["mismatch_names"]
        assert out["bad_option"].startswith("ValueError: xmin_rule")


def test_fsdp2_matches_single_process(fsdp):
    for out in fsdp:
        assert out["llama_param_is_dtensor"] == "DTensor"
        for key in ("llama_init", "llama_trained", "roberta_init", "roberta_trained"):
            assert_matches_single(out[key], out[f"{key}_ref"], exact_lrs=False)
        # gather-only transport: bit-identical to the single-process run
        assert out["llama_gather_only_methods"] == ["gather"]
        assert_matches_single(out["llama_gather_only"], out["llama_init_ref"])
    for key in ("llama_init", "llama_trained", "roberta_init", "roberta_trained", "poison", "raise"):
        assert_ranks_agree(fsdp, key)


def test_fsdp2_state_dict_resumes_either_way(fsdp):
    for out in fsdp:
        assert out["llama_resumed_single_lrs"] == out["llama_trained"]["lrs"]
        assert out["llama_resumed_fsdp_lrs"] == out["llama_trained"]["lrs"]


def test_fsdp2_moves_shards_not_models(fsdp):
    out = fsdp[0]
    methods = out["llama_methods"]
    # the tall 256 x 64 MLP projections go by their 64 x 64 Gram, the rest is gathered on its owner
    assert {n.rsplit(".", 1)[1] for n, m in methods.items() if m == "gram"} == {"gate_proj", "up_proj"}
    for r in fsdp:
        s = r["llama_stats"]
        assert s["bytes_received"] < out["model_bytes"] / 2  # each rank holds less than half the matrices
        assert s["analysed"] == 7 and s["rounds"] == 1
    assert sum(r["llama_stats"]["bytes_sent"] for r in fsdp) == out["llama_stats"]["bytes_planned"]


def test_fsdp2_uneven_shards_both_transports_and_dtypes(fsdp):
    for out in fsdp:
        assert out["mlp_float32_methods"] == ["gram", "gather", "gather", "gram"]
        for dtype, tol in (("float32", 1e-5), ("float64", 1e-10)):
            got, ref = out[f"mlp_{dtype}"], out[f"mlp_{dtype}_ref"]
            assert list(got) == list(ref)
            for name in ref:
                assert got[name][0] == ref[name][0] == "ok"
                assert got[name][2:5] == ref[name][2:5]  # unit, shape, n_eigs
                assert abs(got[name][1] - ref[name][1]) <= tol, (dtype, name)
        assert out["mlp_rounds"] == 2 and out["mlp_rounds_rows"] == out["mlp_float32"]  # 1 matrix per owner a round


def test_fsdp2_a_poisoned_shard_on_one_rank_is_agreed(fsdp):
    for out in fsdp:
        state = out["poison"]
        for name in out["poisoned"]:  # one Gram-path and one gathered matrix, NaN only in rank 1's shard
            assert state["rows"][name][0] == "non_finite" and "1 NaN" in state["rows"][name][5]
        unit = state["rows"][out["poisoned"][0]][2]
        assert state["history_failed"][-1] == [unit] and state["factors"][unit] == out["poison_before"][unit]


def test_fsdp2_a_rank_that_raises_does_not_block_the_others(fsdp):
    for out in fsdp:
        row = out["raise"]["rows"][out["raise_layer"]]
        assert row[0] == "error" and "rank 1: RuntimeError: simulated read failure" in row[5]
        assert out["raise"]["factors"][row[2]] == out["raise_before"][row[2]]
        assert out["raise_recovered"]["history_failed"][-1] == []


def test_fsdp2_unsupported_layouts_raise_clearly_on_every_rank(fsdp):
    for out in fsdp:
        for key in ("hsdp_error", "hsdp_error_type"):
            assert out[key].startswith("LayoutError") and "layer '0'" in out[key] and "2-d device mesh" in out[key]
        assert out["partial_error"].startswith("LayoutError") and "Partial" in out["partial_error"]


def test_four_ranks_ddp_and_fsdp2(four):
    for out in four:
        assert_matches_single(out["ddp"], out["ddp_ref"])
        assert out["ddp_owners"] == four[0]["ddp_owners"] and sorted(out["ddp_owners"]) == [0, 1, 2, 3]
        assert_same_alphas(out["fsdp"]["alphas"], out["ddp_ref"]["alphas"])
        ref_rows = out["analyze_ref"]
        assert [r[0] for r in out["fsdp"]["rows"].values()] == [r[0] for r in ref_rows.values()]
        assert out["fsdp_stats"]["world"] == 4
    assert_ranks_agree(four, "fsdp")


@pytest.fixture(scope="module")
def muon(tmp_path_factory):
    return _run("muon", 2, tmp_path_factory)


def test_ddp_with_muon_and_adamw_shares_one_pass_and_matches_one_process(muon):
    """TempBalance(ddp_model, [muon, adamw], preset="llr-muon-1b-20b") over 2 gloo ranks: the pass is shared, both
    optimizers get the lrs of one process training the same model on both ranks' batches (float64; DDP's averaged
    gradient differs by round-off), identical on the ranks, through three refreshes and their transitions."""
    for out in muon:
        assert out["coordinated"]
        assert out["refreshes"] == [0, 2, 5] and out["units"][-3:] == ["model.embed_tokens", "lm_head", "(rest)"]
        np.testing.assert_allclose(out["lrs"], out["ref_lrs"], rtol=1e-9)
        assert len({round(v / max(out["lrs"][4]), 9) for v in out["lrs"][4]}) >= 8
    assert muon[0]["lrs"] == muon[1]["lrs"] and muon[0]["policy_state"] == 5


def test_torch_muon_takes_fsdp2_shards_but_not_as_muon_of_the_full_matrix(muon):
    """docs/DISTRIBUTED.md: torch 2.13's Muon steps FSDP2 (DTensor) shards without an error, but its update differs
    from Muon on the whole matrix, so LLR with Muon is tested under DDP. (If this fails, torch's Muon handles
    shards now: update the docs.)"""
    for out in muon:
        assert out["muon_fsdp_max_diff"] > 1e-3
