"""Scenarios that tests/test_distributed.py runs in spawned gloo process groups (one spawn per scenario).

Each rank runs the scenario function and writes a JSON-able dict to ``<tmp>/rank<r>.json``; the test process
asserts on them. The single-process reference runs inside each worker on a 1-rank subgroup (TempBalance's
single-process path) over an identical copy of the weights.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import tempbalance

SMALL_LLAMA = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=256, max_position_embeddings=64)
SMALL_ROBERTA = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=80)
TB_KW = dict(min_eigs=20, interval=2)


# --- harness -------------------------------------------------------------------------------------------------------
def run(scenario: str, world: int, tmp: Path) -> list[dict]:
    """Run ``scenario`` on ``world`` spawned gloo ranks; the per-rank result dicts, in rank order."""
    tmp.mkdir(parents=True, exist_ok=True)
    mp.spawn(_entry, args=(world, scenario, str(tmp)), nprocs=world, join=True)
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(world)]


def _entry(rank: int, world: int, scenario: str, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        out = SCENARIOS[scenario](rank, world)
    except Exception:  # the test reports the worker's traceback
        out = {"traceback": traceback.format_exc()}
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()
    # torch keeps the gloo group (and its worker threads) alive past destroy_process_group; ending without
    # interpreter shutdown leaves them nothing to race (benchmarks/distributed.py, end_rank_process)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def single_process_group() -> Any:
    """This rank's own 1-rank group (collective call): TempBalance on it takes the single-process path."""
    mine, _ = dist.new_subgroups(group_size=1)
    return mine


# --- models --------------------------------------------------------------------------------------------------------
def tiny_llama_lora(seed: int = 0) -> nn.Module:
    import peft
    import transformers as T

    torch.manual_seed(seed)
    model = T.LlamaForCausalLM(T.LlamaConfig(**SMALL_LLAMA))
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16,
                                                       target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # PEFT starts B at zero; make the effective weight differ from W
    return model


def tiny_roberta(seed: int = 0) -> nn.Module:
    import transformers as T

    torch.manual_seed(seed)
    cfg = T.RobertaConfig(**SMALL_ROBERTA)
    cfg.num_labels = 2
    return T.RobertaForSequenceClassification(cfg)


def odd_mlp(seed: int = 0) -> nn.Module:
    """Shapes that shard unevenly and take both transports (a tall row-sharded layer goes by Gram)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 199), nn.Linear(199, 70), nn.Linear(70, 61), nn.Linear(61, 257))


def blocks_of(model: nn.Module) -> list[nn.Module]:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and (name.endswith("layers") or name.endswith("encoder.layer")):
            return list(mod)
    return []


def shard(model: nn.Module, world: int) -> nn.Module:
    """FSDP2: every block (or every child of a Sequential) and the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for b in blocks_of(model) or list(model.children()):
        fully_shard(b, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights (collective for DTensors)."""
    from tempbalance.distributed.transport import is_dtensor

    return {k: (v.full_tensor() if is_dtensor(v) else v).detach().clone() for k, v in model.state_dict().items()}


# --- helpers -------------------------------------------------------------------------------------------------------
def make_tb(model: nn.Module, group: Any = None, lr: float = 1e-3, **kw: Any):
    from tempbalance.training.scheduler import TempBalance

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return TempBalance(model, opt, base_scheduler=sched, process_group=group, **{**TB_KW, **kw})


def rows(report) -> dict[str, list]:
    return {r.name: [r.status, r.alpha, r.unit, list(r.shape), r.n_eigs, r.reason] for r in report.rows}


def tb_state(tb) -> dict:
    return dict(alphas=tb.alphas, factors=tb.factors, lrs=tb.get_last_lr(), units=tb.group_units,
                rows=rows(tb.last_report), history_failed=[h["failed"] for h in tb.history])


def lm_step(model: nn.Module, tb, rank: int, step: int) -> None:
    g = torch.Generator().manual_seed(100 * step + rank)  # each rank its own batch, as in real training
    x = torch.randint(0, SMALL_LLAMA["vocab_size"], (2, 12), generator=g)
    model(input_ids=x, labels=x).loss.backward()
    tb.optimizer.step()
    tb.optimizer.zero_grad()
    tb.step()


def cls_step(model: nn.Module, tb, rank: int, step: int) -> None:
    g = torch.Generator().manual_seed(100 * step + rank)
    x = torch.randint(3, SMALL_ROBERTA["vocab_size"], (2, 12), generator=g)
    model(input_ids=x, labels=torch.tensor([0, 1])).loss.backward()
    tb.optimizer.step()
    tb.optimizer.zero_grad()
    tb.step()


def owned_by(tb, rank: int, method: str | None = None) -> list[int]:
    plan = tb._analyzer._plan
    return [k for k, s in enumerate(plan.steps) if s.owner == rank and (method is None or s.method == method)]


def compare_fresh(model_full: dict, build: Callable[[], nn.Module], group: Any, tb) -> dict:
    """A single-process TempBalance over ``model_full``'s weights, its base schedule stepped like ``tb``'s."""
    ref = build()
    ref.load_state_dict(model_full)
    ref_tb = make_tb(ref, group, interval=None)
    for _ in range(tb.step_count):
        ref_tb.step()
    ref_tb.refresh()
    return tb_state(ref_tb)


def expect_raise(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return ""


# --- scenarios -----------------------------------------------------------------------------------------------------
def ddp(rank: int, world: int) -> dict:
    """DDP over a LoRA LLaMA (construction, training, failures on one rank, resume, disagreement), then RoBERTa."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from tempbalance import analysis, distributed

    solo = single_process_group()
    out: dict[str, Any] = {}
    model = tiny_llama_lora()
    ddp = DDP(model)
    tb = make_tb(ddp)
    out["coordinated"] = tb._analyzer.distributed and not make_tb(tiny_llama_lora(), solo)._analyzer.distributed
    out["init"] = tb_state(tb)
    out["init_ref"] = compare_fresh(model.state_dict(), tiny_llama_lora, solo, tb)
    out["stats"] = tb._analyzer.last_stats
    out["owners"] = [s.owner for s in tb._analyzer._plan.steps]
    for step in range(4):  # refreshes at steps 2 and 4
        lm_step(ddp, tb, rank, step)
    out["trained"] = tb_state(tb)
    out["trained_ref"] = compare_fresh(model.state_dict(), tiny_llama_lora, solo, tb)

    # resume: the distributed state loads into a single-process TempBalance and back
    ref2 = tiny_llama_lora()
    ref2.load_state_dict(model.state_dict())
    single = make_tb(ref2, solo)
    for _ in range(tb.step_count):
        single.step()
    single.load_state_dict(tb.state_dict())
    out["resumed_single_lrs"] = single.get_last_lr()
    again = make_tb(DDP(tiny_llama_lora()))
    again.load_state_dict(single.state_dict())
    out["resumed_ddp_lrs"] = again.get_last_lr()

    # NaN in a matrix rank 1 owns, on every replica (DDP keeps them equal): agreed non_finite, factor kept
    specs = tb._specs
    k_nan = owned_by(tb, 1)[0]
    out["nan_layer"] = specs[k_nan].name
    out["nan_before"] = tb.factors
    weight = _weight_param(model, specs[k_nan].name)
    with torch.no_grad():
        good = weight[0, 0].item()
        weight[0, 0] = float("nan")
    tb.step(), tb.step()  # a refresh
    out["nan"] = tb_state(tb)
    with torch.no_grad():
        weight[0, 0] = good

    # rank 1's whole share raises inside the analysis (only on rank 1): its rows come back "error" everywhere
    real = analysis.analyze_specs

    def broken(specs_, *args, **kw):
        if specs_ and rank == 1:
            raise MemoryError("simulated failure of rank 1's share")
        return real(specs_, *args, **kw)

    out["share_failed_before"] = tb.factors
    analysis.analyze_specs = broken
    try:
        tb.step(), tb.step()
    finally:
        analysis.analyze_specs = real
    out["share_failed"] = tb_state(tb)
    out["share_failed_owned"] = [specs[k].name for k in owned_by(tb, 1)]
    tb.step(), tb.step()
    out["recovered"] = tb_state(tb)

    # the ranks disagree: raised on every rank
    out["disagree"] = expect_raise(lambda: tb._analyzer.check_identical({"u": float(rank)}, step=7))
    # different models on the ranks: a clear error on every rank, nobody hangs
    from tempbalance.adapters import specs_from_named_weights

    odd, _ = specs_from_named_weights([("w", torch.randn(64 + rank, 64))])
    out["mismatch"] = expect_raise(lambda: distributed.Coordinator().analyze_specs(odd, min_eigs=20))
    other, _ = specs_from_named_weights([(f"w{rank}", torch.randn(64, 64))])
    out["mismatch_names"] = expect_raise(lambda: distributed.Coordinator().analyze_specs(other, min_eigs=20))
    out["bad_option"] = expect_raise(lambda: tb._analyzer.analyze_specs(tb._specs, xmin_rule="nope"))
    out["roberta"] = ddp_roberta(rank, world, solo)
    return out


def _weight_param(model: nn.Module, spec_name: str) -> torch.Tensor:
    mod = model.get_submodule(spec_name)
    return (mod.base_layer if hasattr(mod, "base_layer") else mod).weight


def ddp_roberta(rank: int, world: int, solo: Any) -> dict:
    """DDP over a tiny RoBERTa."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = tiny_roberta()
    ddp = DDP(model)
    tb = make_tb(ddp)
    out = {"init": tb_state(tb), "init_ref": compare_fresh(model.state_dict(), tiny_roberta, solo, tb),
           "owners": [s.owner for s in tb._analyzer._plan.steps], "stats": tb._analyzer.last_stats}
    for step in range(2):
        cls_step(ddp, tb, rank, step)
    out["trained"] = tb_state(tb)
    out["trained_ref"] = compare_fresh(model.state_dict(), tiny_roberta, solo, tb)
    return out


def fsdp(rank: int, world: int) -> dict:
    """FSDP2 (fully_shard, DTensor parameters): LoRA LLaMA, RoBERTa, uneven shards, failures, bad layouts."""
    from tempbalance import distributed
    from tempbalance.distributed.transport import LayoutError

    solo = single_process_group()
    out: dict[str, Any] = {}

    # LoRA LLaMA
    model = tiny_llama_lora()
    full0 = copy.deepcopy(model.state_dict())
    shard(model, world)
    tb = make_tb(model)
    out["llama_param_is_dtensor"] = type(model.get_submodule(tb._specs[0].name).base_layer.weight).__name__
    out["llama_init"] = tb_state(tb)
    out["llama_init_ref"] = compare_fresh(full0, tiny_llama_lora, solo, tb)
    out["llama_stats"] = tb._analyzer.last_stats
    exact = make_tb(model, distributed.Coordinator(transport="gather"))
    out["llama_gather_only"] = tb_state(exact)
    out["llama_gather_only_methods"] = sorted({s.method for s in exact._analyzer._plan.steps})
    out["llama_methods"] = {tb._specs[k].name: s.method for k, s in enumerate(tb._analyzer._plan.steps)}
    out["model_bytes"] = sum(math.prod(lay.shape) * 4 for lay in tb._analyzer._plan.layouts)
    for step in range(2):
        lm_step(model, tb, rank, step)
    out["llama_trained"] = tb_state(tb)
    full = full_state(model)
    out["llama_trained_ref"] = compare_fresh(full, tiny_llama_lora, solo, tb)
    ref2 = tiny_llama_lora()  # resume the FSDP2 run's state in a single process, and back into FSDP2
    ref2.load_state_dict(full)
    single = make_tb(ref2, solo)
    single.load_state_dict(tb.state_dict())
    out["llama_resumed_single_lrs"] = single.get_last_lr()
    again = make_tb(shard(tiny_llama_lora(), world))
    again.load_state_dict(single.state_dict())
    out["llama_resumed_fsdp_lrs"] = again.get_last_lr()

    # one shard on rank 1 turns NaN (a Gram-path and a gather-path matrix): agreed non_finite on every rank
    by_method = {m: [k for k, s in enumerate(tb._analyzer._plan.steps) if s.method == m] for m in ("gram", "gather")}
    poisoned = [by_method["gram"][0], by_method["gather"][0]]
    out["poisoned"] = [tb._specs[k].name for k in poisoned]
    saved = {}
    for k in poisoned:
        w = _weight_param(model, tb._specs[k].name)
        saved[k] = w.to_local().clone()
        if rank == 1:
            with torch.no_grad():
                w.to_local()[0, 0] = float("nan")
    out["poison_before"] = tb.factors
    tb.step(), tb.step()
    out["poison"] = tb_state(tb)
    for k, local in saved.items():
        with torch.no_grad():
            _weight_param(model, tb._specs[k].name).to_local().copy_(local)

    # weight() raises on rank 1 only, for a gathered DTensor: rank 1 still enters the collective, row "error"
    k_raise = by_method["gather"][-1]
    spec = tb._specs[k_raise]
    real_weight = spec.weight
    if rank == 1:
        spec.weight = lambda: (_ for _ in ()).throw(RuntimeError("simulated read failure"))
    out["raise_layer"] = spec.name
    out["raise_before"] = tb.factors
    tb.step(), tb.step()
    spec.weight = real_weight
    out["raise"] = tb_state(tb)
    tb.step(), tb.step()
    out["raise_recovered"] = tb_state(tb)

    # RoBERTa
    rob = tiny_roberta()
    rob_full = copy.deepcopy(rob.state_dict())
    shard(rob, world)
    rtb = make_tb(rob)
    out["roberta_init"] = tb_state(rtb)
    out["roberta_init_ref"] = compare_fresh(rob_full, tiny_roberta, solo, rtb)
    cls_step(rob, rtb, rank, 0), cls_step(rob, rtb, rank, 1)
    out["roberta_trained"] = tb_state(rtb)
    out["roberta_trained_ref"] = compare_fresh(full_state(rob), tiny_roberta, solo, rtb)

    # uneven shards, float64, both transports: Coordinator vs single-process analyze on the same weights
    mlp = odd_mlp()
    mlp_ref = copy.deepcopy(mlp)
    shard(mlp, world)
    coord = distributed.Coordinator()
    from tempbalance.adapters import get_adapter

    specs = get_adapter(mlp).enumerate(mlp)
    for dtype in (torch.float32, torch.float64):
        rep = coord.analyze_specs(specs, min_eigs=20, dtype=dtype)
        ref = tempbalance.analyze(mlp_ref, min_eigs=20, dtype=dtype)
        out[f"mlp_{str(dtype)[6:]}"] = rows(rep)
        out[f"mlp_{str(dtype)[6:]}_ref"] = rows(ref)
        out[f"mlp_{str(dtype)[6:]}_methods"] = [s.method for s in coord._plan.steps]
        out[f"mlp_{str(dtype)[6:]}_stats"] = coord.last_stats
    # a budget smaller than one matrix: one round per matrix, same rows
    rep = coord.analyze_specs(specs, min_eigs=20, chunk_bytes=1)
    out["mlp_rounds"] = coord.last_stats["rounds"]
    out["mlp_rounds_rows"] = rows(rep)

    # layouts it cannot handle: a 2-d mesh (HSDP-like), a Partial placement
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor

    mesh2 = init_device_mesh("cpu", (1, world), mesh_dim_names=("replicate", "shard"))
    lin = nn.Sequential(nn.Linear(64, 64))
    lin[0].weight = nn.Parameter(distribute_tensor(lin[0].weight.detach(), mesh2, [Replicate(), Shard(0)]))
    out["hsdp_error"] = expect_raise(lambda: make_tb(lin, interval=None))
    out["hsdp_error_type"] = expect_raise(lambda: coord.analyze_specs(get_adapter(lin).enumerate(lin)))
    mesh1 = init_device_mesh("cpu", (world,))
    part = nn.Sequential(nn.Linear(64, 64))
    from torch.distributed.tensor import DTensor

    part[0].weight = nn.Parameter(DTensor.from_local(part[0].weight.detach(), mesh1, [Partial()], run_check=False))
    out["partial_error"] = expect_raise(lambda: coord.analyze_specs(get_adapter(part).enumerate(part)))
    out["layout_error_cls"] = LayoutError.__name__
    return out


def plain_4(rank: int, world: int) -> dict:
    """4 ranks, no transformers: DDP and FSDP2 over the uneven MLP, against single-process analyze."""
    from torch.nn.parallel import DistributedDataParallel as DDP


    solo = single_process_group()
    out: dict[str, Any] = {}
    mlp = odd_mlp()
    ref = copy.deepcopy(mlp)
    tb = make_tb(DDP(mlp), unit="layer")
    out["ddp"] = tb_state(tb)
    out["ddp_ref"] = tb_state(make_tb(ref, solo, unit="layer"))
    out["ddp_owners"] = [s.owner for s in tb._analyzer._plan.steps]
    sharded = shard(odd_mlp(), world)
    ftb = make_tb(sharded, unit="layer")
    out["fsdp"] = tb_state(ftb)
    out["fsdp_methods"] = [s.method for s in ftb._analyzer._plan.steps]
    out["fsdp_stats"] = ftb._analyzer.last_stats
    out["analyze_ref"] = rows(tempbalance.analyze(ref, min_eigs=20))
    return out


def _llama64(seed: int = 0) -> nn.Module:
    """A float64 LLaMA whose hidden matrices all have 64 eigenvalues (LLR tunes those with >= 50)."""
    import transformers as T

    torch.manual_seed(seed)
    return T.LlamaForCausalLM(T.LlamaConfig(**{**SMALL_LLAMA, "num_key_value_heads": 4, "intermediate_size": 128,
                                               "tie_word_embeddings": False})).double()


def _muon_adamw(model: nn.Module) -> list[torch.optim.Optimizer]:
    named = list(model.named_parameters())
    hidden = [p for n, p in named if p.ndim == 2 and "embed" not in n and "head" not in n]
    return [torch.optim.Muon(hidden, lr=2e-2),
            torch.optim.AdamW([p for p in model.parameters() if all(p is not h for h in hidden)], lr=1e-3)]


def _llr_tb(model: nn.Module, opts: list, group: Any = None):
    from tempbalance.training.scheduler import TempBalance

    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0 / (1 + 0.1 * k)) for o in opts]
    return TempBalance(model, opts, base_scheduler=scheds, preset="llr-muon-1b-20b", every=3, linear_steps=2,
                       max_steps=8, llr_ratio=1.0, lr_min_ratio=0.666, dtype=torch.float64, process_group=group)


def _ids(step: int, rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randint(0, SMALL_LLAMA["vocab_size"], (2, 12), generator=g)


def muon(rank: int, world: int) -> dict:
    """LLR (compat, the llr-muon preset) over DDP with [Muon, AdamW]: one shared pass, the same lrs on every rank and
    as one process that trains the same model on every rank's batch; torch's Muon on FSDP2 shards, measured."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    solo = single_process_group()
    out: dict[str, Any] = {}
    model = _llama64()
    single = copy.deepcopy(model)
    opts = _muon_adamw(model)
    ddp = DDP(model)
    tb = _llr_tb(ddp, opts)
    ref_opts = _muon_adamw(single)
    ref_tb = _llr_tb(single, ref_opts, solo)
    out["coordinated"] = tb._analyzer.distributed and not ref_tb._analyzer.distributed
    out["lrs"], out["ref_lrs"] = [tb.get_last_lr()], [ref_tb.get_last_lr()]
    for step in range(8):  # refreshes at updates 1, 3 and 6: two transitions and their ends
        x = _ids(step, rank)
        ddp(input_ids=x, labels=x).loss.backward()  # DDP averages the ranks' gradients
        for o in opts:
            o.step()
            o.zero_grad()
        tb.step()
        sum(single(input_ids=y, labels=y).loss for y in (_ids(step, r) for r in range(world))).div(world).backward()
        for o in ref_opts:
            o.step()
            o.zero_grad()
        ref_tb.step()
        out["lrs"].append(tb.get_last_lr())
        out["ref_lrs"].append(ref_tb.get_last_lr())
    out["refreshes"] = [h["step"] for h in tb.history]
    out["units"] = tb.units
    out["policy_state"] = tb.state_dict()["policies"][0]["phase"]["start"]
    # torch's Muon on FSDP2 shards: it runs, but is its update Muon's update of the full matrix?
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Linear(32, 16, bias=False)).double()
    full = copy.deepcopy(mlp)
    mesh = init_device_mesh("cpu", (world,))
    for layer in mlp:
        fully_shard(layer, mesh=mesh)
    fully_shard(mlp, mesh=mesh)
    sharded_opt, full_opt = torch.optim.Muon(mlp.parameters(), lr=0.02), torch.optim.Muon(full.parameters(), lr=0.02)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for _ in range(3):
        for net, o in ((mlp, sharded_opt), (full, full_opt)):
            net(x).sum().backward()
            o.step()
            o.zero_grad()
    out["muon_fsdp_max_diff"] = float((mlp[0].weight.full_tensor() - full[0].weight).abs().max())
    return out


SCENARIOS: dict[str, Callable[[int, int], dict]] = {
    "ddp": ddp, "fsdp": fsdp, "plain_4": plain_4, "muon": muon,
}

if __name__ == "__main__":  # python tests/distributed_workers.py <scenario> <world> <tmpdir>: debug one scenario
    res = run(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
    print(json.dumps(res, indent=1)[:20000])
