"""Where the two-stage tridiagonal reduction beats the one-stage one: the evidence for ``spectra.TWO_STAGE_MIN_DIM``.

    python benchmarks/solver_crossover.py           # square float32 weights 768 ... 4096 wide, 2 threads (~1 min)
    python benchmarks/solver_crossover.py --smoke   # tiny sizes, for CI

For every width, the same batch of random square weights goes through the native core's Gram + eigenvalues with
``solver="evd"`` (?syevd) and ``solver="2stage"`` (?syevd_2stage), alternately, best of ``--reps``; reported per
matrix and as the ratio 2stage/evd (below 1: two-stage is faster). The package switches at the width given by
``tempbalance.spectra.TWO_STAGE_MIN_DIM``, which the table should bracket.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tempbalance import _backend
from tempbalance.analysis import spectra

sys.path.insert(0, str(Path(__file__).resolve().parent))
from esd_cost import write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FULL = [(768, 8), (1024, 6), (1536, 4), (2048, 3), (2560, 2), (3072, 2), (4096, 1)]  # (width, matrices)
SMOKE = [(32, 3), (64, 2)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    core = _backend.resolve("native")
    if core is None:
        raise SystemExit("the native core is not built (pip install -e . builds it)")
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    rows = []
    for width, count in SMOKE if a.smoke else FULL:
        mats = [rng.standard_normal((1, width, width)).astype(np.float32) for _ in range(count)]
        best = {"evd": float("inf"), "2stage": float("inf")}
        for _ in range(a.reps):
            for solver in best:
                start = time.perf_counter()
                core.gram_eigvalsh(mats, [0] * count, a.threads, solver)
                best[solver] = min(best[solver], (time.perf_counter() - start) / count)
        rows.append(dict(width=width, matrices=count, evd_seconds=best["evd"], two_stage_seconds=best["2stage"],
                         ratio=best["2stage"] / best["evd"]))
        print(f"  {width}: evd {best['evd']:.4f} s, 2stage {best['2stage']:.4f} s per matrix", flush=True)
    out = dict(benchmark="solver_crossover", mode="smoke" if a.smoke else "full", threads=a.threads, reps=a.reps,
               dtype="float32", two_stage_min_dim=spectra.TWO_STAGE_MIN_DIM, rows=rows,
               total_seconds=time.perf_counter() - t0)
    lines = ["| Gram width | matrices | evd s / matrix | 2stage s / matrix | 2stage / evd | package uses |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        uses = "2stage" if r["width"] >= spectra.TWO_STAGE_MIN_DIM else "evd"
        lines.append(f"| {r['width']} | {r['matrices']} | {r['evd_seconds']:.4f} | {r['two_stage_seconds']:.4f} | "
                     f"{r['ratio']:.2f} | {uses} |")
    write_results(a.out or RESULTS / ("solver_crossover_smoke.json" if a.smoke else "solver_crossover.json"), out,
                  "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
