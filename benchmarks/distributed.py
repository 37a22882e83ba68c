"""Seconds of one TempBalance spectral pass vs the number of ranks, under DDP and FSDP2 (gloo, CPU).

    python benchmarks/distributed.py              # RoBERTa-base and SmolLM2-135M shapes, 1/2/4 ranks, writes results/
    python benchmarks/distributed.py --smoke      # a tiny RoBERTa, 1/2 ranks (seconds); for CI
    torchrun --nproc_per_node 8 benchmarks/distributed.py --torchrun   # the same pass at any scale (one world)

Each rank runs with one torch / native thread (one core per rank, as one GPU per rank). Per configuration: one
warm-up pass (it plans: reads every matrix's layout), then ``--reps`` timed passes, each started after a barrier;
a pass's time is the slowest rank's wall time of ``Coordinator.analyze_specs`` (1 rank: the single-process
``analysis.analyze_specs``), reported as the median over passes, and the CPU seconds of the busiest rank
(``time.process_time``: the work a rank does, which other load on the machine does not inflate), with the
phases (exchange = gathers / Gram reductions, analyse = the rank's own share, gather = the all-gather of the
rows), the bytes the ranks sent, the transports used and the cost imbalance of the partition (max rank cost /
mean). Weights: random init of the models' configs (the cost does not depend on the values), every analysed matrix
of the model.

On this 2-core machine 4 ranks share 2 cores, so 4 ranks cannot be faster than 2 in wall time, and other jobs
may be running (see ``loadavg``): the wall times then measure the contention. The CPU seconds of the busiest
rank show how the work per rank shrinks with the number of ranks.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from esd_cost import write_results  # noqa: E402

MODELS = ("roberta-base", "smollm2-135m")


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """Random-init model of a config: ``roberta-base``, ``smollm2-135m`` (vocab shrunk: embeddings are not
    analysed) or ``tiny`` (smoke)."""
    import transformers as T

    torch.manual_seed(seed)
    if name == "roberta-base":
        return T.RobertaModel(T.RobertaConfig(vocab_size=1000), add_pooling_layer=False)
    if name == "smollm2-135m":
        return T.LlamaModel(T.LlamaConfig(vocab_size=1000, hidden_size=576, intermediate_size=1536,
                                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3))
    if name == "tiny":
        return T.RobertaModel(T.RobertaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=256,
                                              max_position_embeddings=80), add_pooling_layer=False)
    raise ValueError(f"unknown model {name!r}")


def wrap(model: torch.nn.Module, parallel: str, world: int) -> torch.nn.Module:
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model)
    if parallel == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.ModuleList) and (name.endswith("layers") or name.endswith("layer")):
                for block in mod:
                    fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    return model


def measure(model_name: str, parallel: str, reps: int) -> dict[str, Any]:
    """On every rank of the initialised group: warm-up + ``reps`` timed passes; this rank's figures."""
    from tempbalance import analysis, distributed
    from tempbalance.adapters import get_adapter

    world = dist.get_world_size()
    model = wrap(build(model_name), parallel, world)
    specs = get_adapter(model).enumerate(model)
    coord = distributed.Coordinator.maybe(None)
    options = dict(min_eigs=50, dtype=torch.float32, num_threads=1)

    def one_pass() -> tuple[float, float, dict]:
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        if coord is None:
            analysis.analyze_specs(specs, **options)
            stats = {}
        else:
            coord.analyze_specs(specs, **options)
            stats = coord.last_stats
        return time.perf_counter() - t0, time.process_time() - c0, stats

    one_pass()  # warm-up: plans (reads the layouts), loads the core
    runs = [one_pass() for _ in range(reps)]
    return dict(rank=dist.get_rank(), seconds=[s for s, _, _ in runs], cpu_seconds=[c for _, c, _ in runs],
                stats=[st for _, _, st in runs], n_matrices=len(specs))


def end_rank_process() -> None:
    """Ends a rank's process once its results are written and its group destroyed, without interpreter shutdown.

    ``destroy_process_group`` does not free a gloo group that torch still references (here: torch._dynamo, which
    transformers imports after the group exists, holds ten references to the default group; FSDP2's device mesh
    one), so the group's worker threads live on into interpreter shutdown (measured). A worker still dropping a
    finished collective's tensors there would have to take the GIL of a finalizing interpreter, which aborts with
    std::terminate ("terminate called without an active exception", PyTorch PR #179291) - the likely cause of the
    smoke's rare aborts, which did not recur in 100 runs here, so it is not confirmed. Exiting here leaves no shutdown
    for them to race."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawned(rank: int, world: int, init: str, model_name: str, parallels: list[str], reps: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    res = [measure(model_name, parallel, reps) for parallel in parallels]
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()
    end_rank_process()


def run_spawned(model_name: str, parallels: list[str], world: int, reps: int) -> list[list[dict]]:
    """Per parallel mode, every rank's figures (one spawn of ``world`` processes runs every mode)."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_spawned, args=(world, f"file://{tmp}/rendezvous", model_name, parallels, reps, tmp),
                 nprocs=world, join=True)
        per_rank = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    return [[pr[i] for pr in per_rank] for i in range(len(parallels))]


def summarise(model_name: str, parallel: str, per_rank: list[dict]) -> dict[str, Any]:
    """The slowest rank per pass, medians over passes."""
    world = len(per_rank)
    reps = len(per_rank[0]["seconds"])
    slowest = [max(r["seconds"][i] for r in per_rank) for i in range(reps)]
    cpu = [max(r["cpu_seconds"][i] for r in per_rank) for i in range(reps)]
    out: dict[str, Any] = dict(model=model_name, parallel=parallel, ranks=world, n_matrices=per_rank[0]["n_matrices"],
                               seconds=statistics.median(slowest), seconds_reps=slowest,
                               cpu_seconds=statistics.median(cpu), cpu_seconds_reps=cpu)
    if per_rank[0]["stats"][0]:
        phases = {ph: statistics.median(max(r["stats"][i]["seconds"][ph] for r in per_rank) for i in range(reps))
                  for ph in ("plan", "exchange", "analyse", "gather")}
        st = per_rank[0]["stats"][0]
        out.update(phases=phases, methods=st["methods"], imbalance=st["imbalance"], rounds=st["rounds"],
                   bytes_sent=sum(r["stats"][0]["bytes_sent"] for r in per_rank),
                   max_bytes_received=max(r["stats"][0]["bytes_received"] for r in per_rank),
                   analysed_per_rank=[r["stats"][0]["analysed"] for r in sorted(per_rank, key=lambda r: r["rank"])])
    return out


def table(results: list[dict]) -> str:
    base = {r["model"]: r for r in results if r["ranks"] == 1}
    lines = ["| model (matrices) | parallel | ranks | pass s | speedup | CPU s, busiest rank | CPU ratio | exchange s "
             "| analyse s | rows gather s | MB sent | transports | cost imbalance |", "|" + "---|" * 13]
    for r in results:
        ph, b = r.get("phases", {}), base.get(r["model"])
        f = (lambda k: f"{ph[k]:.3f}" if k in ph else "-")
        speed = f"{b['seconds'] / r['seconds']:.2f}×" if b else "-"
        cpu = f"{b['cpu_seconds'] / r['cpu_seconds']:.2f}×" if b else "-"
        methods = ", ".join(f"{k} {v}" for k, v in r.get("methods", {}).items()) or "single process"
        mb = f"{r['bytes_sent'] / 1e6:.1f}" if "bytes_sent" in r else "0"
        imb = f"{r['imbalance']:.3f}" if "imbalance" in r else "-"
        lines.append(f"| {r['model']} ({r['n_matrices']}) | {r['parallel']} | {r['ranks']} | {r['seconds']:.3f} | "
                     f"{speed} | {r['cpu_seconds']:.3f} | {cpu} | {f('exchange')} | {f('analyse')} | {f('gather')} "
                     f"| {mb} | {methods} | {imb} |")
    return "\n".join(lines)


def torchrun_main(a: argparse.Namespace) -> int:
    """Launched by torchrun: one world, every model x parallel; rank 0 writes the results."""
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo")
    results = []
    for model_name in a.models:
        for parallel in a.parallel:
            mine = measure(model_name, parallel, a.reps)
            everyone: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
            results.append(summarise(model_name, parallel, everyone))
    if dist.get_rank() == 0:
        out = dict(mode="torchrun", results=results, total_seconds=0.0, loadavg=os.getloadavg())
        write_results(a.out or RESULTS / "distributed_torchrun.json", out, table(results))
    dist.destroy_process_group()
    end_rank_process()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny RoBERTa, 1 and 2 ranks, 1 pass (seconds)")
    p.add_argument("--ranks", type=int, nargs="+", default=None, help="rank counts (default 1 2 4; smoke 1 2)")
    p.add_argument("--models", nargs="+", default=None, choices=MODELS + ("tiny",))
    p.add_argument("--parallel", nargs="+", default=["ddp", "fsdp2"], choices=("ddp", "fsdp2"))
    p.add_argument("--reps", type=int, default=None, help="timed passes per configuration (default 3; smoke 1)")
    p.add_argument("--torchrun", action="store_true", help="launched by torchrun: one world, env:// rendezvous")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank under --torchrun")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/distributed[_smoke].json)")
    a = p.parse_args(argv)
    a.models = a.models or (["tiny"] if a.smoke else list(MODELS))
    a.reps = a.reps or (1 if a.smoke else 3)
    if a.torchrun:
        return torchrun_main(a)
    ranks = a.ranks or ([1, 2] if a.smoke else [1, 2, 4])
    t_start = time.perf_counter()
    results = []
    for model_name in a.models:
        for world in ranks:
            parallels = ["single"] if world == 1 else list(a.parallel)
            for parallel, per_rank in zip(parallels, run_spawned(model_name, parallels, world, a.reps)):
                r = summarise(model_name, parallel, per_rank)
                results.append(r)
                print(f"[{time.perf_counter() - t_start:6.1f}s] {model_name} {parallel} x{world}: "
                      f"{r['seconds']:.3f} s", flush=True)
    out = dict(mode="smoke" if a.smoke else "full", reps=a.reps, threads_per_rank=1, cpu_count=os.cpu_count(),
               torch=torch.__version__, loadavg=os.getloadavg(), results=results,
               total_seconds=time.perf_counter() - t_start)
    path = a.out or RESULTS / ("distributed_smoke.json" if a.smoke else "distributed.json")
    write_results(path, out, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
