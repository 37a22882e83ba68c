"""benchmarks/distributed.py runs end to end in --smoke mode and writes well-formed results (no timing assertions)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_distributed_smoke(tmp_path):
    out = tmp_path / "distributed.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(BENCH / "distributed.py"), "--smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.with_suffix(".md").read_text().startswith("|")
    res = json.loads(out.read_text())
    assert res["mode"] == "smoke"
    rows = {(r["parallel"], r["ranks"]): r for r in res["results"]}
    assert set(rows) == {("single", 1), ("ddp", 2), ("fsdp2", 2)}
    n = rows["single", 1]["n_matrices"]
    for r in rows.values():
        assert r["n_matrices"] == n and math.isfinite(r["seconds"]) and r["seconds"] > 0
        assert math.isfinite(r["cpu_seconds"]) and r["cpu_seconds"] > 0
    ddp, fsdp = rows["ddp", 2], rows["fsdp2", 2]
    assert ddp["methods"] == {"local": n} and ddp["bytes_sent"] == 0  # DDP: every rank has the weights
    assert sum(ddp["analysed_per_rank"]) == n and min(ddp["analysed_per_rank"]) > 0
    assert set(fsdp["methods"]) <= {"gather", "gram"} and sum(fsdp["methods"].values()) == n
    assert fsdp["bytes_sent"] > 0 and sum(fsdp["analysed_per_rank"]) == n
    assert 1.0 <= fsdp["imbalance"] < 1.5
