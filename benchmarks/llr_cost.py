"""What one LLR refresh costs: the reference's spectral pass (per-module ``torch.linalg.svdvals`` of every Linear and
Embedding, the embedding and LM head included, olmo/LRUnbalance.py:474-599) against ``TempBalance(preset=
"llr-adamw-1b-20b")``'s (the hidden matrices only, batched Grams + eigenvalues in the native core).

    python benchmarks/llr_cost.py            # LLaMA-130M (the repository's llama_130m.json) and one LLaMA-1B block
    python benchmarks/llr_cost.py --smoke    # tiny shapes, seconds

Random float32 weights of the models' shapes (the cost does not depend on the values); interleaved repetitions,
medians; writes results/llr_cost{,_smoke}.{json,md}. A refresh every 100 updates (the published runs) costs the
pass / 100 per update.
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
# configs/llama_1024/configs/llama_130m.json and llama_1b.json of hed-ucas/Layer-wise-Learning-Rate@bbd0dcf
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


def model_of(shape: dict) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**shape, num_key_value_heads=shape["num_attention_heads"],
                                   max_position_embeddings=64, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).float()


def reference_pass(model: nn.Module) -> None:
    """LU:474-499: svdvals of every Conv2d / Linear / Embedding weight, squared and sorted (the fit is negligible)."""
    for _, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            s = torch.linalg.svdvals(m.weight.detach().clone().float())
            torch.sort(s * s)


def main(argv: list[str] | None = None) -> int:
    from tempbalance import TempBalance

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for name, shape in (SMOKE if a.smoke else SHAPES).items():
        model = model_of(shape)
        tb = TempBalance(model, torch.optim.AdamW(model.parameters(), lr=5e-4), preset="llr-adamw-1b-20b",
                         num_threads=a.threads)
        times: dict[str, list[float]] = {"reference": [], "tempbalance": []}
        for _ in range(a.reps):
            for method, fn in (("reference", lambda: reference_pass(model)), ("tempbalance", tb.refresh)):
                start = time.perf_counter()
                fn()
                times[method].append(time.perf_counter() - start)
        ref, ours = (statistics.median(times[k]) for k in ("reference", "tempbalance"))
        rows.append(dict(model=name, matrices=len(tb._specs), units=len(tb.units), reference_s=ref,
                         tempbalance_s=ours, speedup=ref / ours, times=times))
        print(f"{name}: reference {ref:.2f} s, tempbalance {ours:.2f} s ({ref / ours:.1f}x)", flush=True)
    out = dict(rows=rows, threads=a.threads, reps=a.reps, torch=torch.__version__, machine=platform.machine(),
               date=time.strftime("%Y-%m-%d"))
    stem = "llr_cost_smoke" if a.smoke else "llr_cost"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    md = [f"LLR refresh, seconds (median of {a.reps}, {a.threads} threads, float32, torch {torch.__version__}, "
          f"{out['date']})", "", "| model | matrices analysed (units) | reference svdvals pass | TempBalance refresh |"
          " reference / TempBalance |", "|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['matrices']} ({r['units']}) | {r['reference_s']:.2f} | {r['tempbalance_s']:.2f} | "
           f"{r['speedup']:.1f}x |" for r in rows]
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
