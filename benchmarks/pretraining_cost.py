"""What one refresh of the pretraining methods costs: each reference code's spectral pass against TempBalance's
refresh with that method's preset, side by side on the same weights.

* LLR (``preset="llr-adamw-1b-20b"``): the reference runs ``torch.linalg.svdvals`` on every Linear and Embedding,
  the embedding and LM head included (hed-ucas/Layer-wise-Learning-Rate, olmo/LRUnbalance.py:474-599); TempBalance
  analyses the hidden matrices only (the embedding and head are units without an analysis), batched in the native
  core.
* AlphaDecay (``preset="alphadecay-llama-adamw"``): the reference runs ``svdvals`` on every Linear, the LM head
  included (hed-ucas/AlphaDecay, LLaMa-pretraining/WeightDecayUnbalance.py:197-310); TempBalance analyses the
  Linear layers its plan keeps (the first and last dropped).

    python benchmarks/pretraining_cost.py            # LLaMA-130M (llama_130m.json) and one LLaMA-1B block
    python benchmarks/pretraining_cost.py --smoke    # a tiny LLaMA, seconds

Random float32 weights of the models' shapes (the cost does not depend on the values); the reference and
TempBalance interleaved, ``--reps`` repetitions each, medians; writes ``--out`` (default
results/pretraining_cost{,_smoke}.json) and the .md beside it. A refresh every 100 updates (LLR's published runs)
or 500 (AlphaDecay's) costs the pass / 100 or / 500 per update.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"
# configs/llama_130m.json and llama_1b.json of the two repositories (the same LLaMA shapes)
SHAPES = {
    "llama-130m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                       vocab_size=32000),
    "llama-1b-one-block": dict(hidden_size=2048, intermediate_size=5461, num_hidden_layers=1, num_attention_heads=32,
                               vocab_size=32000),
}
SMOKE = {
    "llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       vocab_size=500),
}
# method -> (its preset, the module types whose weights the reference's pass runs svdvals on)
METHODS: dict[str, tuple[str, tuple[type, ...]]] = {
    "llr": ("llr-adamw-1b-20b", (nn.Linear, nn.Embedding)),
    "alphadecay": ("alphadecay-llama-adamw", (nn.Linear,)),
}


def model_of(shape: dict) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**shape, num_key_value_heads=shape["num_attention_heads"],
                                   max_position_embeddings=64, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).float()


def reference_pass(model: nn.Module, types: tuple[type, ...]) -> int:
    """svdvals of every weight of ``types``, squared and sorted (the fit after it is negligible); the count."""
    n = 0
    for _, m in model.named_modules():
        if isinstance(m, types):
            s = torch.linalg.svdvals(m.weight.detach().clone().float())
            torch.sort(s * s)
            n += 1
    return n


def measure(model: nn.Module, method: str, reps: int, threads: int) -> dict:
    from tempbalance import TempBalance

    preset, types = METHODS[method]
    tb = TempBalance(model, torch.optim.AdamW(model.parameters(), lr=5e-4), preset=preset, num_threads=threads)
    times: dict[str, list[float]] = {"reference": [], "tempbalance": []}
    count = 0
    for _ in range(reps):
        for kind in ("reference", "tempbalance"):
            start = time.perf_counter()
            if kind == "reference":
                count = reference_pass(model, types)
            else:
                tb.refresh()
            times[kind].append(time.perf_counter() - start)
    tb.close()
    ref, ours = (statistics.median(times[k]) for k in ("reference", "tempbalance"))
    return dict(method=method, preset=preset, reference_matrices=count, matrices=len(tb._specs),
                units=len(tb.units), reference_s=ref, tempbalance_s=ours, speedup=ref / ours, times=times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="the JSON to write (the .md beside it)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for name, shape in (SMOKE if a.smoke else SHAPES).items():
        model = model_of(shape)
        for method in METHODS:
            r = dict(model=name, **measure(model, method, a.reps, a.threads))
            rows.append(r)
            print(f"{name} {method}: reference {r['reference_s']:.2f} s, tempbalance {r['tempbalance_s']:.2f} s "
                  f"({r['speedup']:.1f}x)", flush=True)
    out = dict(mode="smoke" if a.smoke else "full", rows=rows, threads=a.threads, reps=a.reps,
               torch=torch.__version__, machine=platform.machine(), date=time.strftime("%Y-%m-%d"))
    path = Path(a.out) if a.out else RESULTS / ("pretraining_cost_smoke.json" if a.smoke else "pretraining_cost.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    md = ["| model | method (preset) | reference: matrices, svdvals pass s | TempBalance: matrices analysed (units), "
          "refresh s | reference / TempBalance |", "|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['method']} (`{r['preset']}`) | {r['reference_matrices']}, {r['reference_s']:.2f} | "
           f"{r['matrices']} ({r['units']}), {r['tempbalance_s']:.2f} | {r['speedup']:.1f}x |" for r in rows]
    md += ["", f"Median of {a.reps} interleaved repetitions, {a.threads} threads, float32, torch {torch.__version__}, "
               f"{platform.machine()}, {out['date']}."]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
