#!/usr/bin/env python3
"""The checks of scripts/gpu_check.sh: the CUDA core on a GPU against the CPU core and float64, its failure paths,
its streams and memory, and its speed (the figures of benchmarks/results/gpu_<gpu>.md). With --selftest-cpu the same
checks run against the CPU stand-in of the CUDA module that the tests use (tests/analysis/test_cuda_backend.py: CPU tensors
play the device tensors, small shapes), so this script's own logic is exercised on machines without a GPU (CI).

Writes <out>/gpu_<gpu>.md (the report, in the form committed as benchmarks/results/gpu_h200.md) and
<out>/gpu_<gpu>.json (every figure), rewritten after every check: a run stopped at its time limit keeps what it
measured. Checks run in order of importance; one that would not fit in what is left of --budget is recorded as
skipped. Exits 1 when a check fails.
Usage: python scripts/gpu_check.py --out DIR [--quick] [--selftest-cpu] [--build-info .gpu/build.json]
       python scripts/gpu_check.py --report-only --out DIR --build-info F   (the build stage's rows alone)
       python scripts/gpu_check.py --probe KIND [--selftest-cpu]            (one failure probe; run in a subprocess)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PROBES = ("nan", "overflow", "solver", "solver_alloc", "oom")
LLAMA_BLOCKS = 32  # LLaMA-7B: 32 blocks of 7 matrices (q, k, v, o, gate, up, down)
LABELS = {"roberta-base": "RoBERTa-base", "llama7b-block": "LLaMA-7B, one block", "llama7b": "LLaMA-7B",
          "smollm2-135m": "SmolLM2-135M", "odd": "odd shapes"}


# --- the device: a GPU, or the CPU stand-in ----------------------------------------------------------------------
class Env:
    """Where the checks run. On a GPU: the real `_core_cuda`. In the self-test: the stand-in, installed on CPU
    tensors (`cuda_backend.DEVICE_TYPE = "cpu"`), with the shapes scaled down."""

    def __init__(self, selftest: bool, quick: bool = False):
        from tempbalance import cuda_backend

        self.selftest, self.quick = selftest, quick
        self.cuda_backend = cuda_backend
        self._patch = None
        if selftest:
            sys.path[:0] = [str(ROOT / "tests" / d) for d in ("", "analysis", "training")]
            import pytest
            from test_cuda_backend import FakeDeviceCore, install

            self._patch = pytest.MonkeyPatch()
            self.module = install(self._patch, FakeDeviceCore())
            self.device = torch.device("cpu")
        else:
            if not torch.cuda.is_available():
                raise SystemExit("gpu_check: torch sees no CUDA device (use --selftest-cpu on a machine without one)")
            self.device = torch.device("cuda")
            self.module = cuda_backend._check()
        self.status = cuda_backend.cuda_status()
        # LLaMA-7B's whole pass: all 32 blocks (--quick: 4; the self-test: 4, or 2 quick, of its small blocks)
        self.llama_blocks = (2 if quick else 4) if selftest else (4 if quick else LLAMA_BLOCKS)

    def close(self) -> None:
        if self._patch is not None:
            self._patch.undo()

    @contextlib.contextmanager
    def host_only(self):
        """The plain CPU path for reference runs (in the self-test CPU tensors would otherwise count as device)."""
        saved = self.cuda_backend.DEVICE_TYPE
        self.cuda_backend.DEVICE_TYPE = "none"
        try:
            yield
        finally:
            self.cuda_backend.DEVICE_TYPE = saved

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def shapes(self, name: str) -> list[tuple[int, ...]]:
        small = self.selftest
        if name == "roberta-base":  # 12 layers: q, k, v, o (768 x 768), intermediate, output
            return [(96, 96)] * 4 + [(384, 96), (96, 384)] if small else \
                [(768, 768)] * 48 + [(3072, 768)] * 12 + [(768, 3072)] * 12
        if name == "llama7b-block":  # q, k, v, o, gate, up, down
            return [(128, 128)] * 4 + [(344, 128)] * 2 + [(128, 344)] if small else \
                [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]
        if name == "llama7b":
            return self.shapes("llama7b-block") * self.llama_blocks
        if name == "smollm2-135m":  # 30 layers; 9 query heads, 3 key/value heads of 64; MLP 1536
            block = [(48, 48), (16, 48), (16, 48), (48, 48), (128, 48), (128, 48), (48, 128)] if small else \
                [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
            return block * (4 if small else 30)
        if name == "odd":
            return [(1, 50), (50, 1), (2, 70), (70, 2), (32, 33), (33, 32), (33, 100), (100, 33), (1, 1)]
        raise KeyError(name)

    def label(self, name: str) -> str:
        if name == "llama7b":
            n = self.llama_blocks
            return f"LLaMA-7B, the whole model ({n * 7} matrices)" if n == LLAMA_BLOCKS else \
                f"LLaMA-7B, {n} of {LLAMA_BLOCKS} blocks ({n * 7} matrices{', --quick' if self.quick else ''})"
        return LABELS[name]


def weights(env: Env, shapes: list[tuple[int, ...]], dtype=torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the given shapes with a heavy-tailed part (realistic spectra), generated on the device
    (a whole LLaMA-7B, 27 GB in float32, takes a fraction of a second there)."""
    g = torch.Generator(device=env.device).manual_seed(seed)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    out = {}
    for k, shape in enumerate(shapes):
        base = torch.randn(shape, generator=g, dtype=work, device=env.device)
        if len(shape) == 2 and min(shape) > 4:
            r = max(1, min(shape) // 16)  # a low-rank spike on top of the bulk: a heavy tail
            base += (3.0 / math.sqrt(r)) * (torch.randn(shape[0], r, generator=g, dtype=work, device=env.device) @
                                            torch.randn(r, shape[1], generator=g, dtype=work, device=env.device))
        base /= math.sqrt(shape[-1])
        out[f"w{k}"] = base.to(dtype)
    return out


# --- records -------------------------------------------------------------------------------------------------------
TABLES = ("speed", "stages", "host", "syev", "finetune")


def report_name(device: str) -> str:
    """The report's file stem for a device name: "NVIDIA H200" -> "gpu_h200"; the CPU stand-in -> "gpu_cpu_selftest"."""
    if device.startswith("cpu"):
        return "gpu_cpu_selftest"
    slug = re.sub(r"[^a-z0-9]+", "_", re.sub(r"^nvidia\s+", "", device.strip().lower())).strip("_")
    return f"gpu_{slug or 'unknown'}"


class Results:
    """Every check's row and every table, written to <out>/<name>.md and .json after each check."""

    def __init__(self, out: Path, meta: dict[str, Any], budget: float = math.inf):
        self.out, self.meta = out, meta
        self.checks: list[dict[str, Any]] = []
        self.tables: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
        self.start = time.perf_counter()
        self.deadline = self.start + budget

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def add(self, table: str, row: dict[str, Any]) -> None:
        self.tables[table].append(row)

    def row(self, table: str, key: str) -> dict[str, Any] | None:
        return next((r for r in self.tables[table] if r.get("set") == key), None)

    def record(self, name: str, status: str, detail: str, seconds: float = 0.0, data: dict | None = None) -> None:
        self.checks.append(dict(name=name, status=status, detail=detail, seconds=round(seconds, 2), data=data or {}))
        print(f"[gpu_check] {status:4s} {name} ({seconds:.1f} s): {detail}", flush=True)
        self.write()

    def run(self, name: str, fn: Callable[[], tuple[str, str, dict]], need: float = 0.0) -> None:
        """fn returns (status, detail, data); status "pass", "fail" or "info" (measured, no pass/fail). A check
        that needs more than the budget has left (`need`, seconds) is recorded as "skip"."""
        if need and self.left() < need:
            self.record(name, "skip", f"not run: {max(self.left(), 0):.0f} s of the budget left, it needs ~{need:.0f} s")
            return
        start = time.perf_counter()
        try:
            status, detail, data = fn()
        except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check; the others still run
            status, detail, data = "fail", f"{type(exc).__name__}: {exc}", {"traceback": traceback.format_exc()}
        self.record(name, status, detail, time.perf_counter() - start, data)

    @property
    def failed(self) -> list[str]:
        return [c["name"] for c in self.checks if c["status"] == "fail"]

    def data(self) -> dict[str, Any]:
        meta = dict(self.meta, seconds=round(time.perf_counter() - self.start, 1), failed=self.failed)
        return {"meta": meta, "checks": self.checks, **self.tables}

    def write(self) -> None:
        """Both files, each replaced whole (a run killed mid-write leaves the previous version)."""
        self.out.mkdir(parents=True, exist_ok=True)
        data = self.data()
        stem = report_name(self.meta["device"])
        for suffix, text in ((".json", json.dumps(data, indent=1, default=str)), (".md", render(data))):
            tmp = self.out / f".{stem}{suffix}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / f"{stem}{suffix}")


def build_rows(results: Results, info: dict[str, Any] | None) -> None:
    """The build stage's rows (from .gpu/build.json, written by gpu_check.sh)."""
    if not info:
        return
    results.record("build", "pass", f"{info.get('arch')} by {info.get('nvcc')} ({info.get('nvcc_version', '')}), "
                   f"{info.get('seconds')} s; {info.get('cuda_status', '')}", info.get("seconds", 0), info)
    tests = info.get("tests")
    if tests:
        results.record("CUDA tests (pytest, against the built module)", "pass" if tests["exit"] == 0 else "fail",
                       tests["summary"] or f"exit {tests['exit']}", tests.get("seconds", 0), tests)


def _verdict(ok: bool) -> str:
    return "pass" if ok else "fail"


# --- accuracy: CUDA core vs CPU core vs float64 --------------------------------------------------------------------
def eigen_errors(env: Env, ws: dict[str, torch.Tensor], analysis_dtype: torch.dtype) -> dict[str, float]:
    """Max |lambda_cuda - lambda_ref| / lambda_max over the matrices, against the CPU core (same precision) and
    against float64 (the Gram formed and solved by torch in float64)."""
    from tempbalance import _native, spectra

    stacks = [spectra.slices(w, dtype=analysis_dtype, keep_device=True) for w in ws.values()]
    got = spectra.gram_eigvals(stacks, backend="native")
    hosts = [np.ascontiguousarray(s.cpu().numpy()) for s in stacks]
    cpus = _native.core.gram_eigvalsh(hosts, [0] * len(hosts), torch.get_num_threads())  # one call, all threads
    worst_cpu = worst_f64 = 0.0
    for s, e, cpu in zip(stacks, got, cpus):
        e = e.double().cpu().numpy()
        cpu = np.asarray(cpu, dtype=np.float64)
        s64 = s.to(torch.complex128 if s.is_complex() else torch.float64)
        gram = s64 @ s64.mH if s64.shape[1] <= s64.shape[2] else s64.mH @ s64
        f64 = torch.sort(torch.linalg.eigvalsh(gram).reshape(-1).clamp_min(0)).values.cpu().numpy()
        scale = max(float(f64[-1]), 1e-300)
        worst_cpu = max(worst_cpu, float(np.max(np.abs(e - cpu))) / scale)
        worst_f64 = max(worst_f64, float(np.max(np.abs(e - f64))) / scale)
    return {"vs_cpu_core": worst_cpu, "vs_float64": worst_f64}


def analysis_errors(env: Env, ws: dict[str, torch.Tensor], dtype: torch.dtype, min_eigs: int) -> dict[str, Any]:
    """Alphas and LR factors of the CUDA pass against the CPU core's pass on the same weights."""
    from tempbalance import analyze
    from tempbalance.training import mapping

    got = analyze(ws, dtype=dtype, min_eigs=min_eigs)
    with env.host_only():
        want = analyze({k: v.cpu() for k, v in ws.items()}, dtype=dtype, min_eigs=min_eigs, backend="native")
    statuses_equal = [r.status for r in got.rows] == [r.status for r in want.rows]
    a = np.array([r.alpha for r in got.rows])
    b = np.array([r.alpha for r in want.rows])
    ok = np.isfinite(a) & np.isfinite(b)
    alpha_err = float(np.max(np.abs(a[ok] - b[ok]) / b[ok])) if ok.any() else 0.0
    units = np.arange(len(a))
    fa = mapping.lr_factors(mapping.unit_means(a, units, len(a)))
    fb = mapping.lr_factors(mapping.unit_means(b, units, len(b)))
    return {"backend": got.settings["backend"], "statuses_equal": statuses_equal,
            "alpha_rel_err": alpha_err, "factor_abs_err": float(np.max(np.abs(fa - fb))) if len(fa) else 0.0,
            "statuses": sorted({r.status for r in got.rows})}


def check_accuracy(env: Env, name: str, shapes: list, dtype: torch.dtype, analysis_dtype: torch.dtype,
                   min_eigs: int = 0):
    def run():
        ws = weights(env, shapes, dtype)
        eig = eigen_errors(env, ws, analysis_dtype)
        ana = analysis_errors(env, ws, analysis_dtype, min_eigs)
        single = analysis_dtype == torch.float32
        k = max(min(s[-2], s[-1]) for s in shapes)
        eps = torch.finfo(analysis_dtype).eps
        eig_tol = 4 * k * eps  # backward-stable Gram + solver, relative to lambda_max
        alpha_tol = 2e-3 if single else 1e-8
        factor_tol = 2e-3 if single else 1e-8
        ok = (eig["vs_cpu_core"] <= eig_tol and eig["vs_float64"] <= eig_tol and ana["statuses_equal"]
              and ana["alpha_rel_err"] <= alpha_tol and ana["factor_abs_err"] <= factor_tol
              and ana["backend"] == "cuda")
        detail = (f"eig err vs CPU core {eig['vs_cpu_core']:.1e}, vs float64 {eig['vs_float64']:.1e} (tol "
                  f"{eig_tol:.1e}); alpha rel err {ana['alpha_rel_err']:.1e}, factor err {ana['factor_abs_err']:.1e}; "
                  f"statuses {'equal' if ana['statuses_equal'] else 'DIFFER'} {ana['statuses']}; backend "
                  f"{ana['backend']}")
        return _verdict(ok), detail, dict(eig, **ana, eig_tol=eig_tol)
    return run


def check_stacks(env: Env):
    """Conv and complex (spectral) stacks: pooled slices, against the CPU core and float64."""
    def run():
        g = torch.Generator().manual_seed(3)
        conv = (torch.randn(64, 32, 3, 3, generator=g) / 10).to(env.device)
        spec = (torch.randn(32, 32, 8, 5, generator=g, dtype=torch.complex64) / 10).to(env.device)
        eig = eigen_errors(env, {"conv": conv, "spectral": spec}, torch.float32)
        ana = analysis_errors(env, {"conv": conv, "spectral": spec}, torch.float32, 0)
        tol = 4 * 64 * torch.finfo(torch.float32).eps
        ok = eig["vs_cpu_core"] <= tol and eig["vs_float64"] <= tol and ana["statuses_equal"] and \
            ana["alpha_rel_err"] <= 2e-3
        return _verdict(ok), (f"conv (64,32,3,3) + complex (32,32,8,5): eig err {eig['vs_cpu_core']:.1e} / "
                              f"{eig['vs_float64']:.1e}, alpha rel err {ana['alpha_rel_err']:.1e}"), dict(eig, **ana)
    return run


def check_split(env: Env):
    """A stack split across several solver calls gives what one call gives."""
    def run():
        from tempbalance import spectra

        cb = env.cuda_backend
        g = torch.Generator().manual_seed(4)
        conv = (torch.randn(96, 80, 5, 5, generator=g) / 10).to(env.device)  # 25 Grams of 80 x 80
        stack = spectra.slices(conv, dtype=torch.float32, keep_device=True)
        whole = spectra.gram_eigvals([stack])[0]
        groups_whole = cb.last_pass.get("groups")
        with group_bytes(env, 3 * 80 * 80 * 4):  # 3 Grams per cusolverDnXsyevBatched call
            split = spectra.gram_eigvals([stack])[0]
            groups_split = cb.last_pass.get("groups")
        diff = float((whole - split).abs().max() / whole.abs().max())
        ok = groups_split >= 9 and diff <= 1e-5
        return _verdict(ok), f"{groups_whole} call(s) vs {groups_split} calls; max rel diff {diff:.1e}", \
            {"groups_whole": groups_whole, "groups_split": groups_split, "max_rel_diff": diff}
    return run


# --- failure paths, each in its own process with a timeout ---------------------------------------------------------
def probe(kind: str, selftest: bool) -> dict[str, Any]:
    """One failure probe (run in a subprocess: a hang or a crash must not take the check with it)."""
    env = Env(selftest)
    from tempbalance import analyze

    g = torch.Generator().manual_seed(5)
    good = (torch.randn(60, 80, generator=g) / 9).to(env.device)
    try:
        if kind == "nan":
            bad = good.clone()
            bad[3, 4] = float("nan")
            r = analyze({"bad": bad, "good": good}, min_eigs=10)
            ok = [x.status for x in r.rows] == ["non_finite", "ok"] and "1 NaN" in r["bad"].reason
            return {"ok": ok, "detail": f"{[x.status for x in r.rows]}: {r['bad'].reason}"}
        if kind == "overflow":  # a float32 Gram that would overflow is rescaled (power of two) on the device
            big = (torch.full((40, 96), 1e19) + torch.randn(40, 96, generator=g) * 1e18).to(env.device)
            r = analyze({"big": big, "good": good}, min_eigs=10)
            r64 = analyze({"big": big.double().cpu()}, min_eigs=10, backend="torch")
            ok = [x.status for x in r.rows] == ["ok", "ok"] and r64.rows[0].status == "ok" and \
                abs(r["big"].alpha - r64.rows[0].alpha) <= 1e-4 * r64.rows[0].alpha
            return {"ok": ok, "detail": f"float32 {[x.status for x in r.rows]} ({r['big'].reason}); float64 "
                                        f"{r64.rows[0].status}"}
        if kind == "solver":
            conv = (torch.randn(70, 64, 3, 3, generator=g) / 9).to(env.device)
            env.module._arm_fault("solver_info", 4)  # the 5th Gram solved: a slice of the conv
            r = analyze({"conv": conv, "good": good}, min_eigs=10)
            again = analyze({"conv": conv}, min_eigs=10)
            ok = r["conv"].status == "non_finite" and "did not converge" in r["conv"].reason and \
                r["good"].status == "ok" and again.rows[0].status == "ok"
            return {"ok": ok, "detail": f"{[x.status for x in r.rows]} ({r['conv'].reason}); next pass "
                                        f"{again.rows[0].status}"}
        if kind == "solver_alloc":  # cuSOLVER's own allocation fails once: redone with smaller groups, on the GPU
            conv = (torch.randn(70, 64, 3, 3, generator=g) / 9).to(env.device)
            clean = analyze({"conv": conv, "good": good}, min_eigs=10)
            env.module._arm_fault("solver_alloc", 0)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                r = analyze({"conv": conv, "good": good}, min_eigs=10)
            retries = env.cuda_backend.last_pass.get("retries")
            fell_back = [str(c.message) for c in caught if "CPU path" in str(c.message)]
            a, b = np.array([x.alpha for x in r.rows]), np.array([x.alpha for x in clean.rows])
            err = float(np.max(np.abs(a - b) / b))
            ok = [x.status for x in r.rows] == ["ok", "ok"] and (retries or 0) >= 1 and not fell_back and \
                r.settings["backend"] == "cuda" and err <= 1e-4
            return {"ok": ok, "detail": f"{[x.status for x in r.rows]}, {retries} retry(ies) with smaller groups, "
                                        f"backend {r.settings['backend']}, alphas vs a clean pass {err:.1e}; CPU "
                                        f"fallback {bool(fell_back)}"}
        if kind == "oom":
            w = (torch.randn(2048, 2048, generator=g) / 45).to(env.device)
            analyze({"warm": good}, min_eigs=10)  # handles and kernels exist before memory runs out
            hog = []
            if env.device.type == "cuda":
                torch.cuda.synchronize()
                free, _ = torch.cuda.mem_get_info()
                hog.append(torch.empty(max(0, free - (48 << 20)), dtype=torch.uint8, device=env.device))
            else:
                env.module.memory = 2048 * 2048 * 4 // 2  # below one Gram
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                r = analyze({"w": w}, min_eigs=10)
            fell_back = any("CPU path" in str(c.message) for c in caught)
            row = r.rows[0]
            ok = not fell_back and (row.status == "ok" or
                                    (row.status == "error" and "not enough free GPU memory" in row.reason))
            groups = env.cuda_backend.last_pass.get("group_bytes") if row.status == "ok" else None
            return {"ok": ok, "detail": f"{row.status}: {row.reason or f'solved with groups of {groups} bytes'}; "
                                        f"CPU fallback {fell_back}"}
        raise ValueError(f"unknown probe {kind!r}")
    finally:
        env.close()


def _probe_command(env: Env, kind: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--probe", kind] + (["--selftest-cpu"] if env.selftest
                                                                              else [])


def _probe_result(done: subprocess.CompletedProcess | None, timeout: int) -> tuple[str, str, dict]:
    if done is None:
        return "fail", f"no answer within {timeout} s (a hang)", {}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return "fail", f"exit {done.returncode}: {done.stderr.strip()[-600:]}", {}
    got = json.loads(lines[-1])
    return _verdict(got["ok"]), got["detail"], got


def run_probes(env: Env, results: Results, timeout: int = 180) -> None:
    """The failure probes, each in its own process with a timeout (a hang or a crash must not take the checks with
    it): NaN, overflow and solver side by side, then out-of-memory alone (it fills the GPU)."""
    def start(kind: str) -> tuple[subprocess.Popen, float]:
        return subprocess.Popen(_probe_command(env, kind), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True), time.perf_counter()

    def finish(kind: str, proc: subprocess.Popen, began: float) -> None:
        try:
            out, err = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - began)))
            done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            done = None
        status, detail, data = _probe_result(done, timeout)
        results.record(f"failure probe: {kind}", status, detail, time.perf_counter() - began, data)

    together = [k for k in PROBES if k != "oom"]
    running = {kind: start(kind) for kind in together}
    for kind in together:
        finish(kind, *running[kind])
    finish("oom", *start("oom"))


# --- streams and synchronisation ----------------------------------------------------------------------------------
@contextlib.contextmanager
def no_sync(env: Env):
    """On a GPU: torch's sync-debug mode set to error (torch-level waits raise). In the self-test: any host read
    of a tensor raises (what a wait would be on a GPU)."""
    if env.device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    else:
        from test_fused_gpu import no_host_reads

        with no_host_reads():
            yield


def sleep_cycles(env: Env, seconds: float) -> int:
    """GPU clock cycles of torch.cuda._sleep that take about `seconds` (calibrated)."""
    if env.device.type != "cuda":
        return 0
    torch.cuda._sleep(1000)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(50_000_000)
    end.record()
    end.synchronize()
    per_cycle = start.elapsed_time(end) / 1000.0 / 50_000_000
    return int(seconds / per_cycle)


def host_seconds_behind_busy_gpu(env: Env, fn: Callable[[], Any], busy: float = 0.4) -> float:
    """Host seconds `fn` takes while the stream is busy for `busy` seconds: well below `busy` when nothing in it
    waits for the GPU."""
    cycles = sleep_cycles(env, busy)
    env.sync()
    if cycles:
        torch.cuda._sleep(cycles)
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    env.sync()
    return took


def check_side_stream(env: Env):
    """A pass started under `torch.cuda.stream(side)` runs on `side`: with `side` held busy, the default stream
    stays idle while the pass is pending, and the alphas equal a pass on the default stream."""
    def run():
        from tempbalance import analysis, analyze
        from tempbalance.adapters import specs_from_named_weights

        ws = weights(env, env.shapes("odd")[4:] + [(200, 300)], seed=6)
        plain = analyze(ws, min_eigs=10)
        specs, _ = specs_from_named_weights(list(ws.items()))
        default_idle = side_busy = True
        if env.device.type == "cuda":
            cycles = sleep_cycles(env, 0.3)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            torch.cuda.synchronize()
            with torch.cuda.stream(side):
                torch.cuda._sleep(cycles)  # the pass queues behind 0.3 s of work on `side`
                pending = analysis.start_pass(specs, min_eigs=10)
                default_idle = torch.cuda.default_stream().query()  # nothing of the pass went there
                side_busy = not side.query()
                other = pending.report()
            torch.cuda.current_stream().wait_stream(side)
        else:
            other = analysis.start_pass(specs, min_eigs=10).report()
        a = np.array([r.alpha for r in plain.rows])
        b = np.array([r.alpha for r in other.rows])
        same = np.array_equal(a, b, equal_nan=True)
        ok = same and default_idle and side_busy
        return _verdict(ok), (f"pass enqueued on a side stream behind 0.3 s of work: default stream idle "
                              f"{default_idle}, side stream busy {side_busy}; alphas {'==' if same else '!='} a pass "
                              f"on the default stream"), {"default_idle": default_idle, "side_busy": side_busy}
    return run


def check_no_wait(env: Env):
    """The pass up to its metrics table raises nothing under the sync-debug mode, and how long the host spends in
    it while the GPU is busy (does anything - cuSOLVER's host-side calls included - wait?)."""
    def run():
        from tempbalance import analysis
        from tempbalance.adapters import specs_from_named_weights

        ws = weights(env, env.shapes("roberta-base")[:8], seed=7)
        specs, _ = specs_from_named_weights(list(ws.items()))
        analysis.start_pass(specs).report()  # warm-up: handles, allocator, kernels
        with no_sync(env):
            pending = analysis.start_pass(specs)
        pending.report()
        stacks = [w.unsqueeze(0).contiguous() for w in ws.values()]
        env.cuda_backend.gram_eigvals(stacks)
        busy = 0.4
        t_eig = host_seconds_behind_busy_gpu(env, lambda: env.cuda_backend.gram_eigvals(stacks), busy)
        t_pass = host_seconds_behind_busy_gpu(env, lambda: analysis.start_pass(specs), busy)
        waits = env.device.type == "cuda" and max(t_eig, t_pass) > busy / 2
        detail = (f"no torch-level sync in start_pass; host time behind a {busy:.1f} s busy stream: gram_eigvals "
                  f"{t_eig * 1e3:.1f} ms, whole pass {t_pass * 1e3:.1f} ms -> "
                  f"{'something WAITS for the GPU' if waits else 'nothing waits'}; cuSOLVER host workspace "
                  f"{env.cuda_backend.last_pass.get('solver_host_bytes')} B")
        return "info" if env.device.type == "cuda" else "pass", detail, \
            {"host_s_gram_eigvals": t_eig, "host_s_pass": t_pass, "busy_s": busy, "waits": waits,
             "last_pass": dict(env.cuda_backend.last_pass)}
    return run


def check_thread_handles(env: Env, threads: int = 6):
    """Threads that each run a pass and end: their cuBLAS/cuSOLVER handles are destroyed with them (device memory
    does not grow by a handle's worth per thread)."""
    def run():
        import threading

        stacks = [w.unsqueeze(0).contiguous() for w in weights(env, [(300, 400), (200, 200)], seed=10).values()]
        env.cuda_backend.gram_eigvals(stacks)  # the main thread's handles exist before the measurement

        def free_bytes() -> int:
            if env.device.type != "cuda":
                return 0
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            return torch.cuda.mem_get_info()[0]

        before = free_bytes()
        for _ in range(threads):
            t = threading.Thread(target=lambda: env.cuda_backend.gram_eigvals(stacks))
            t.start()
            t.join()
        grown = (before - free_bytes()) / threads
        for _ in range(50):  # join() returns before the thread's C++ cleanup (its thread_local handles) has run
            if grown < 4 * 2**20:
                break
            time.sleep(0.1)
            grown = (before - free_bytes()) / threads
        ok = grown < 4 * 2**20
        return _verdict(ok), (f"{threads} threads ran a pass and ended: device memory grew {grown / 2**20:.2f} MiB "
                              f"per thread (a cuBLAS + cuSOLVER handle pair holds several MiB)"), {"grown_per_thread": grown}
    return run


def _model(env: Env, width: int) -> torch.nn.Module:
    torch.manual_seed(8)
    return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 2 * width),
                               torch.nn.ReLU(), torch.nn.Linear(2 * width, width)).to(env.device)


def check_lag_race(env: Env):
    """lag=1 with the weights changed right before the snapshot, behind a busy training stream: the background
    pass must see the snapshot's values (without the event it read the copies before they were written)."""
    def run():
        from tempbalance import TempBalance, analyze

        width = 64 if env.selftest else 1024
        m = _model(env, width)
        tb = TempBalance(m, torch.optim.SGD(m.parameters(), lr=0.1), unit="layer", min_eigs=8, interval=1, lag=1)
        train = torch.cuda.Stream() if env.device.type == "cuda" else None
        if train is not None:
            train.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(train) if train is not None else contextlib.nullcontext():
            cycles = sleep_cycles(env, 0.5)
            if cycles:
                torch.cuda._sleep(cycles)  # the copies below queue behind half a second of work
            with torch.no_grad():
                for p in m.parameters():
                    p.mul_(3.0).add_(0.05)  # the spectra change a lot
            tb.step()  # snapshot + background pass
            tb.wait()  # (the reference below switches the CUDA core off process-wide: not while the pass runs)
            with env.host_only():
                want = analyze({n: p.detach().cpu() for n, p in m.named_parameters() if p.ndim == 2}, min_eigs=8,
                               backend="native")
            tb.step()  # applied
        got = tb.history[-1]
        a = np.array([got["alphas"][k] for k in sorted(got["alphas"])])
        b = np.array([r.alpha for r in sorted(want.rows, key=lambda r: r.name.replace(".weight", ""))])
        err = float(np.max(np.abs(a - b) / b))
        ok = got["started_step"] == 1 and err <= 2e-3
        tb.close()
        return _verdict(ok), f"background alphas vs the snapshot's: max rel err {err:.1e}", {"alpha_rel_err": err}
    return run


def check_fused(env: Env):
    """Tensor lrs (fused Adam on a GPU): a refresh writes base x factor into them on the device with no
    synchronisation, equal to what the host path gives; also how many waits a whole tb.step() has."""
    def run():
        from tempbalance import TempBalance

        width = 64 if env.selftest else 512
        m = _model(env, width)
        lr = torch.tensor(1e-3, device=env.device)
        opt = torch.optim.Adam(m.parameters(), lr=lr, fused=env.device.type == "cuda", foreach=False)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + 0.1 * t))
        tb = TempBalance(m, opt, base_scheduler=sched, unit="layer", min_eigs=8, interval=2)
        x = torch.randn(16, width, device=env.device)
        for _ in range(3):
            m(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            tb.step()
        # the refresh region alone (what TempBalance.step runs for a due refresh), under the no-sync guard, then
        # behind a busy GPU; each is committed (_settle, which waits) before the next
        with no_sync(env):
            tb._refresh_now(fused=True)
            tb._apply()
        deferred = tb._refresher.fused.pending is not None
        tb._settle()
        busy = 0.4
        took = host_seconds_behind_busy_gpu(env, lambda: (tb._refresh_now(fused=True), tb._apply()), busy)
        lrs = [float(g["lr"]) for g in opt.param_groups]  # what the device wrote (waits, does not commit)
        factors = tb.factors  # commits: the host writes base x factor from the floats
        want = [float(g["lr"]) for g in opt.param_groups]
        assert want == [float(torch.tensor(b * (factors.get(u, 1.0) if u is not None else 1.0), dtype=torch.float32))
                        for b, u in zip(tb.get_base_lr(), tb.group_units)]
        syncs = 0
        if env.device.type == "cuda":
            m(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tb.step()  # step 4: a refresh step, bookkeeping included
                tb.step()  # the next step settles it
            torch.cuda.set_sync_debug_mode(0)
            syncs = sum(1 for c in caught if "synchroniz" in str(c.message).lower())
        ok = deferred and lrs == want
        detail = (f"refresh region: no sync, deferred commit {deferred}, host {took * 1e3:.1f} ms behind a {busy:.1f} "
                  f"s busy stream; lr tensors {'==' if lrs == want else '!='} base x factor; torch-level waits in "
                  f"two full tb.step() calls (refresh + settle): {syncs}")
        return _verdict(ok), detail, {"host_s": took, "syncs_two_steps": syncs, "lrs": lrs, "want": want}
    return run


def check_tb_factors(env: Env):
    """A TempBalance refresh of a model on the GPU gives the factors (and lrs) the same model gets on the CPU."""
    def run():
        from tempbalance import TempBalance

        width = 64 if env.selftest else 1024
        m = _model(env, width)
        m_cpu = copy.deepcopy(m).cpu()
        options = dict(unit="layer", min_eigs=8, interval=1)
        opt, opt_cpu = torch.optim.SGD(m.parameters(), lr=0.1), torch.optim.SGD(m_cpu.parameters(), lr=0.1)
        tb = TempBalance(m, opt, **options)  # the pass at construction
        with env.host_only():
            tb_cpu = TempBalance(m_cpu, opt_cpu, **options)
        got, want = tb.factors, tb_cpu.factors
        diff = max((abs(got[k] - want[k]) for k in want), default=math.inf) if got.keys() == want.keys() else math.inf
        lrs, lrs_cpu = ([float(g["lr"]) for g in o.param_groups] for o in (opt, opt_cpu))
        lr_diff = max(abs(a / b - 1.0) for a, b in zip(lrs, lrs_cpu)) if len(lrs) == len(lrs_cpu) else math.inf
        backend, backend_cpu = tb.last_report.settings["backend"], tb_cpu.last_report.settings["backend"]
        ok = diff <= 2e-3 and lr_diff <= 2e-3 and backend == "cuda" and backend_cpu != "cuda"
        return _verdict(ok), (f"{len(want)} units: max |factor(GPU) - factor(CPU)| {diff:.1e}, lrs' max relative "
                              f"difference {lr_diff:.1e} (tol 2e-3); backends {backend} / {backend_cpu}"), \
            {"max_factor_diff": diff, "max_lr_rel_diff": lr_diff, "factors": got, "factors_cpu": want}
    return run


# --- speed ---------------------------------------------------------------------------------------------------------
def run_once(env: Env, fn: Callable[[], Any]) -> float:
    """Seconds of one call: CUDA events on a GPU (the caller's stream), the host clock in the self-test."""
    if env.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_time(env: Env, fn: Callable[[], Any], reps: int, slow: float = 2.0) -> tuple[float, int]:
    """(median seconds, runs) of up to `reps` runs; a run slower than `slow` seconds is the last (seconds-long
    runs have no warm-up effects left to average out, and the budget is minutes)."""
    env.sync()
    times: list[float] = []
    for _ in range(max(1, reps)):
        times.append(run_once(env, fn))
        if times[-1] > slow:
            break
    return statistics.median(times), len(times)


def svdvals_per_layer(mats: list[torch.Tensor]) -> None:
    """The reference way: torch.linalg.svdvals of each matrix in turn."""
    for w in mats:
        torch.linalg.svdvals(w)


def eigvalsh_batched(mats: list[torch.Tensor]) -> None:
    """torch's best batched way: matrices of one shape stacked, their Grams by one batched matmul, one eigvalsh."""
    by_shape: dict[tuple, list] = {}
    for w in mats:
        by_shape.setdefault(tuple(w.shape), []).append(w)
    for group in by_shape.values():
        s = torch.stack(group)
        torch.linalg.eigvalsh(s @ s.mT if s.shape[1] <= s.shape[2] else s.mT @ s)


def one_per_shape(mats: list[torch.Tensor]) -> list[torch.Tensor]:
    """A warm-up set: one matrix of each shape (handles, kernels, workspaces) at a fraction of a full run's cost."""
    return list({(tuple(w.shape), w.dtype): w for w in mats}.values())


def core_eigvals(env: Env, mats: list[torch.Tensor]) -> None:
    """The CUDA core's eigenvalues alone (Grams, screen, cuSOLVER, copy-out), without the Hill pass and report."""
    env.cuda_backend.gram_eigvals([w.unsqueeze(0) for w in mats])


@contextlib.contextmanager
def scratch_tracker(env: Env):
    """The largest scratch (Grams + eigenvalues + flags) and cuSOLVER workspace any gram_eigvals call of the block
    took (`cuda_backend.last_pass` keeps only the last call's)."""
    cb = env.cuda_backend
    original, seen = cb.gram_eigvals, {"scratch_bytes": 0, "solver_bytes": 0, "calls": 0}

    def tracked(*args, **kwargs):
        out = original(*args, **kwargs)
        seen["calls"] += 1
        for key in ("scratch_bytes", "solver_bytes"):
            seen[key] = max(seen[key], int(cb.last_pass.get(key, 0)))
        return out

    cb.gram_eigvals = tracked
    try:
        yield seen
    finally:
        cb.gram_eigvals = original


def peak_memory(env: Env, fn: Callable[[], Any]) -> dict[str, Any]:
    """Peak GPU memory of one pass above what was allocated before it (torch's allocator: the core's scratch comes
    from it), and the core's own largest scratch and cuSOLVER workspace."""
    base = 0
    if env.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with scratch_tracker(env) as seen:
        fn()
    peak = None
    if env.device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return {"peak_extra_bytes": peak, **seen}


def alpha_error_vs_f64(env: Env, ws: dict[str, torch.Tensor], report) -> float:
    """Max relative error of the pass's alphas against alphas from float64 eigenvalues (torch's Gram and eigvalsh
    in float64 on the same weights, on the device), with the same Hill options (min_eigs=0, the same zero_rtol)."""
    from tempbalance.analysis import hill

    eigs, rtol = [], []
    for w in ws.values():
        s = w.detach().to(torch.float64)
        gram = s @ s.mT if s.shape[0] <= s.shape[1] else s.mT @ s
        eigs.append(torch.linalg.eigvalsh(gram).clamp_min(0).cpu().numpy())
        analysis = torch.float64 if w.dtype == torch.float64 else torch.float32
        rtol.append(hill.default_zero_rtol(min(w.shape), analysis))
    with env.host_only():
        rows = hill.hill_metrics(eigs, zero_rtol=rtol, min_eigs=0, assume_sorted=True)
    got = np.array([report[name].alpha for name in ws])
    want = np.array([r["alpha"] for r in rows])
    ok = np.isfinite(got) & np.isfinite(want)
    if not ok.any():
        return math.nan
    return float(np.max(np.abs(got[ok] - want[ok]) / want[ok]))


# Which stage a CUDA kernel belongs to. The core enqueues, per solve group: the Gram GEMMs (cuBLAS), the screen
# kernel(s), cuSOLVER (workspace memset, then its kernels), the copy-out kernel; then one Hill kernel per pass.
STAGES = ("grams", "screen_copy", "solve", "hill", "torch_ops")


def classify_kernels(kernels: list[tuple[float, float, str]]) -> dict[str, float]:
    """Seconds of GPU time per stage from (start, seconds, name) of every kernel/memset/memcpy of one pass on one
    stream. Everything between a screen kernel and the next copy-out kernel is the solver's; GEMMs outside that are
    the Grams; our Hill kernels are the Hill pass; the rest is torch's own work (slicing, casts, sorting, copies)."""
    out = dict.fromkeys(STAGES, 0.0)
    in_solve = False
    for _, seconds, name in sorted(kernels):
        if "screen_kernel" in name or "blank_kernel" in name:
            stage, in_solve = "screen_copy", True
        elif "finish_kernel" in name:
            stage, in_solve = "screen_copy", False
        elif any(k in name for k in ("hill_kernel", "unit_lr_kernel", "unit_factors_kernel")):
            stage = "hill"
        elif in_solve:
            stage = "solve"
        elif "gemm" in name.lower() or "xmma" in name.lower() or "cutlass" in name.lower():
            stage = "grams"
        else:
            stage = "torch_ops"
        out[stage] += seconds
    return out


def profile_stages(env: Env, fn: Callable[[], Any]) -> dict[str, Any]:
    """GPU time per stage of one call of `fn` (torch's profiler, which records every kernel of the process, the
    core's and cuSOLVER's included)."""
    if env.device.type != "cuda":
        return {"note": "no CUDA kernels (CPU stand-in)"}
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        kernels = [(e.time_range.start, e.time_range.elapsed_us() / 1e6, e.name) for e in prof.events()
                   if e.device_type == DeviceType.CUDA]
    except Exception as exc:  # noqa: BLE001 - no profiler on this machine: the other figures still count
        return {"error": f"{type(exc).__name__}: {exc}"}
    stages = classify_kernels(kernels)
    return {**stages, "gpu_busy": sum(stages.values()), "kernels": len(kernels)}


def check_speed(env: Env, results: Results, key: str, reps: int, dtype=torch.float32, stages: bool = True,
                host: bool = False):
    """One row of the speed table: per-layer svdvals, batched eigvalsh on torch Grams, the CUDA core's pass
    (`analyze`, eigenvalues to alphas; and its eigenvalues alone), after a warm-up; plus the alphas' error against
    float64, the pass's peak extra memory, its GPU time per stage and (host=True) how long it blocks the host."""
    def run():
        from tempbalance import analyze

        ws = weights(env, env.shapes(key), dtype, seed=9)
        mats = list(ws.values())
        warm = one_per_shape(mats)
        svdvals_per_layer([w[:64, :64] for w in warm])  # handles and kernels (a large svdvals takes seconds)
        eigvalsh_batched(warm)
        reports = []
        memory = peak_memory(env, lambda: reports.append(analyze(ws, min_eigs=0)))  # also the warm-up
        core_eigvals(env, mats)
        t_svd, n_svd = median_time(env, lambda: svdvals_per_layer(mats), reps)
        t_eig, n_eig = median_time(env, lambda: eigvalsh_batched(mats), reps)
        t_core, n_core = median_time(env, lambda: analyze(ws, min_eigs=0), max(reps, 3))
        t_core_eigs, _ = median_time(env, lambda: core_eigvals(env, mats), max(reps, 3))
        label = env.label(key) + (", fp64" if dtype == torch.float64 else "")
        row = dict(set=key + ("-fp64" if dtype == torch.float64 else ""), label=label, matrices=len(mats),
                   dtype=str(dtype).replace("torch.", ""), svdvals_s=t_svd, eigvalsh_s=t_eig, core_s=t_core,
                   core_eigs_s=t_core_eigs, runs=dict(svdvals=n_svd, eigvalsh=n_eig, core=n_core),
                   svdvals_how="measured", eigvalsh_how="measured",
                   alpha_err_f64=alpha_error_vs_f64(env, ws, reports[0]), backend=reports[0].settings["backend"],
                   **memory)
        results.add("speed", row)
        if stages:
            results.add("stages", dict(set=row["set"], label=label, pass_s=t_core, **profile_stages(
                env, lambda: analyze(ws, min_eigs=0))))
        if host:
            results.add("host", dict(set=row["set"], label=label, **host_blocking(env, ws, reps)))
        detail = (f"{len(mats)} matrices: svdvals {t_svd * 1e3:.1f} ms, eigvalsh {t_eig * 1e3:.1f} ms, CUDA core "
                  f"{t_core * 1e3:.1f} ms ({t_svd / t_core:.1f}x, {t_eig / t_core:.1f}x), eigenvalues alone "
                  f"{t_core_eigs * 1e3:.1f} ms; alpha err vs float64 {row['alpha_err_f64']:.1e}; backend "
                  f"{row['backend']}")
        return "info", detail, row
    return run


def check_llama_full(env: Env, results: Results, reps: int, measure_s: float = 20.0):
    """LLaMA-7B's whole pass (224 matrices, ~27 GB in float32 on the device). The CUDA core is measured; batched
    eigvalsh and per-layer svdvals are measured when one block's time x 32 is at most `measure_s` seconds (and fits
    the budget), else extrapolated from the block row (32 identical blocks) and labelled so."""
    def run():
        from tempbalance import analyze

        key, blocks = "llama7b", env.llama_blocks
        ws = weights(env, env.shapes(key), torch.float32, seed=11)
        mats = list(ws.values())
        block = results.row("speed", "llama7b-block")
        analyze(dict(list(ws.items())[:14]), min_eigs=0)  # warm-up: the allocator holds a chunk's scratch
        reports = []
        memory = peak_memory(env, lambda: reports.append(analyze(ws, min_eigs=0)))
        t_core, n_core = median_time(env, lambda: analyze(ws, min_eigs=0), reps)
        row = dict(set=key, label=env.label(key), matrices=len(mats), dtype="float32", core_s=t_core,
                   runs=dict(core=n_core), backend=reports[0].settings["backend"],
                   alpha_err_f64=alpha_error_vs_f64(env, dict(list(ws.items())[:7]), reports[0]),
                   alpha_err_note="block 0's 7 matrices", **memory)
        for name, fn in (("eigvalsh", lambda: eigvalsh_batched(mats)), ("svdvals", lambda: svdvals_per_layer(mats))):
            predicted = blocks * block[f"{name}_s"] if block else math.nan
            if block and predicted <= measure_s and predicted * 2 < results.left():
                row[f"{name}_s"], row["runs"][name] = median_time(env, fn, 1)
                row[f"{name}_how"] = "measured"
            else:
                row[f"{name}_s"] = predicted
                row[f"{name}_how"] = f"extrapolated: {blocks} x one block" if block else "not measured"
        results.add("speed", row)
        detail = (f"{row['matrices']} matrices: CUDA core {t_core:.3f} s; eigvalsh {row['eigvalsh_s']:.3f} s "
                  f"({row['eigvalsh_how']}), svdvals {row['svdvals_s']:.3f} s ({row['svdvals_how']}); alpha err vs "
                  f"float64 {row['alpha_err_f64']:.1e} (block 0); peak extra memory "
                  f"{(row['peak_extra_bytes'] or 0) / 2**30:.2f} GiB")
        return "info", detail, row
    return run


def host_blocking(env: Env, ws: dict[str, torch.Tensor], reps: int) -> dict[str, float]:
    """How long analyze() holds the host (it returns the finished report, so all of it), split into start_pass
    (enqueues, waits for nothing) and report() (waits for the GPU once, then builds the rows)."""
    from tempbalance import analysis, analyze
    from tempbalance.adapters import specs_from_named_weights

    specs, _ = specs_from_named_weights(list(ws.items()))
    walls, enqueue, finish = [], [], []
    for _ in range(max(reps, 3)):
        env.sync()
        t0 = time.perf_counter()
        analyze(ws, min_eigs=0)
        walls.append(time.perf_counter() - t0)
        env.sync()
        t0 = time.perf_counter()
        pending = analysis.start_pass(specs, min_eigs=0)
        t1 = time.perf_counter()
        pending.report()
        enqueue.append(t1 - t0)
        finish.append(time.perf_counter() - t1)
    return {"analyze_host_s": statistics.median(walls), "start_pass_host_s": statistics.median(enqueue),
            "report_host_s": statistics.median(finish)}


@contextlib.contextmanager
def group_bytes(env: Env, nbytes: int):
    """cuda_backend.GROUP_BYTES for a while. Below one Gram's bytes, the core's plan (csrc/cuda/plan.h,
    plan_groups) solves every Gram alone with cusolverDnXsyevd: the per-matrix path, forced."""
    saved = env.cuda_backend.GROUP_BYTES
    env.cuda_backend.GROUP_BYTES = nbytes
    try:
        yield
    finally:
        env.cuda_backend.GROUP_BYTES = saved


def syev_sizes(env: Env) -> list[tuple[int, int]]:
    """(Gram size n, Grams) for the batched-vs-per-matrix table: torch's eigvalsh switches from its batched Jacobi
    solver (syevjBatched) to a per-matrix loop above n = 32; RoBERTa's Grams are 768, LLaMA-7B's 4096."""
    if env.selftest:
        return [(16, 32), (33, 16), (64, 8)]
    if env.quick:
        return [(32, 256), (128, 256), (768, 72), (4096, 8)]
    return [(16, 256), (32, 256), (33, 256), (64, 256), (128, 256), (256, 128), (512, 64), (768, 72), (1024, 32),
            (2048, 16), (4096, 8)]


def check_syev_by_size(env: Env, results: Results, reps: int):
    """cusolverDnXsyevBatched (the core's default) against per-matrix cusolverDnXsyevd (forced) and torch's eigvalsh
    on the same Grams, by Gram size; the two core paths must agree."""
    def run():
        cb = env.cuda_backend
        g = torch.Generator(device=env.device).manual_seed(12)
        worst, lines = 0.0, []
        for n, count in syev_sizes(env):
            if results.left() < 10:
                lines.append(f"n={n}: out of budget")
                break
            stack = torch.randn(count, n, n, generator=g, device=env.device) / math.sqrt(n)
            grams = stack @ stack.mT
            batched = cb.gram_eigvals([stack])[0]
            batched_groups = int(cb.last_pass.get("batched_groups", -1))
            with group_bytes(env, 1):
                single = cb.gram_eigvals([stack])[0]
                single_groups = (int(cb.last_pass.get("groups", -1)), int(cb.last_pass.get("batched_groups", -1)))
                t_single, _ = median_time(env, lambda: cb.gram_eigvals([stack]), reps)
            torch.linalg.eigvalsh(grams)
            t_batched, _ = median_time(env, lambda: cb.gram_eigvals([stack]), reps)
            t_torch, _ = median_time(env, lambda: torch.linalg.eigvalsh(grams), reps)
            diff = float(((batched - single).abs().max() / batched.abs().max()).cpu())
            worst = max(worst, diff)
            results.add("syev", dict(n=n, grams=count, batched_s=t_batched, per_matrix_s=t_single, torch_s=t_torch,
                                     batched_groups=batched_groups, per_matrix_groups=single_groups[0],
                                     per_matrix_batched_groups=single_groups[1], max_rel_diff=diff))
            lines.append(f"n={n}: {t_single / t_batched:.2f}x")
        rows = results.tables["syev"]
        forced = all(r["per_matrix_batched_groups"] == 0 and r["per_matrix_groups"] == r["grams"] for r in rows)
        ok = worst <= 1e-4 and (forced or env.selftest)
        return _verdict(ok), (f"per-matrix Xsyevd / XsyevBatched time: {', '.join(lines)}; results agree to "
                              f"{worst:.1e}; Xsyevd forced for every Gram: {forced}"), {"max_rel_diff": worst}
    return run


def check_finetune(env: Env, results: Results, steps: int, warm: int = 10):
    """The ESD's overhead in training: a RoBERTa-base-sized masked LM (random init from RobertaConfig), batch
    32 x 128 tokens, AdamW (fused), bf16 autocast; `steps` timed steps without TempBalance, with a refresh every 10
    steps, and the same with lag=1 (background pass); the baseline runs first and last."""
    def run():
        from transformers import RobertaConfig, RobertaForMaskedLM

        from tempbalance import TempBalance

        cuda = env.device.type == "cuda"
        cfg = RobertaConfig() if cuda else RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                         num_attention_heads=4, intermediate_size=64,
                                                         max_position_embeddings=40)
        batch, seq = (32, 128) if cuda else (4, 16)
        interval = 10 if cuda else 3
        extra = {} if cuda else {"min_eigs": 8}  # the stand-in's model is 32 wide
        torch.manual_seed(13)
        model = RobertaForMaskedLM(cfg).to(env.device)
        init = copy.deepcopy(model.state_dict())
        g = torch.Generator(device=env.device).manual_seed(13)
        ids = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g, device=env.device)
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

        def arm(options: dict | None) -> dict[str, Any]:
            model.load_state_dict(init)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
            tb = TempBalance(model, opt, **options, **extra) if options is not None else None
            refreshes = spectral = 0.0
            for i in range(warm + steps):
                if i == warm:
                    if tb is not None:
                        refreshes, spectral = len(tb.history), tb.spectral_seconds
                    env.sync()
                    t0 = time.perf_counter()
                with autocast():
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if tb is not None:
                    tb.step()
            env.sync()
            seconds = time.perf_counter() - t0
            out = {"s_per_step": seconds / steps, "loss": float(loss.detach())}
            if tb is not None:
                out.update(refreshes=len(tb.history) - refreshes, spectral_s=tb.spectral_seconds - spectral)
                tb.close()
            return out

        arms = [("no TempBalance", None), (f"refresh every {interval} steps", dict(interval=interval)),
                (f"refresh every {interval} steps, lag=1", dict(interval=interval, lag=1)),
                ("no TempBalance (again)", None)]
        got = {name: arm(options) for name, options in arms}
        base = statistics.mean(got[name]["s_per_step"] for name, o in arms if o is None)
        for name, options in arms:
            row = dict(run=name, steps=steps, batch=f"{batch} x {seq}", precision="bf16 autocast" if cuda else "fp32",
                       **got[name])
            row["overhead_pct"] = 100.0 * (row["s_per_step"] / base - 1.0) if options is not None else None
            results.add("finetune", row)
        with_tb = [r for r in results.tables["finetune"] if r["overhead_pct"] is not None]
        detail = f"baseline {base * 1e3:.1f} ms/step; " + "; ".join(
            f"{r['run']}: {r['overhead_pct']:+.1f}% ({r['refreshes']} refreshes)" for r in with_tb)
        return "info", detail, {"base_s_per_step": base}
    return run


# --- the report ----------------------------------------------------------------------------------------------------
def _ms(seconds: Any) -> str:
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        return "n/a"
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _mib(nbytes: Any) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f} MiB"


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 24's targets against the speed rows: >= 10x per-layer svdvals and >= 2x batched eigvalsh for
    RoBERTa-base and LLaMA-7B (the whole model), RoBERTa-base <= 50 ms; a miss names the slowest stage."""
    speed = {r["set"]: r for r in data.get("speed", [])}
    stages = {r["set"]: r for r in data.get("stages", [])}
    out = []
    for key, stage_key in (("roberta-base", "roberta-base"), ("llama7b", "llama7b-block")):
        r = speed.get(key)
        if r is None:
            continue
        goals = [("vs per-layer svdvals", r["svdvals_s"] / r["core_s"], 10.0, r.get("svdvals_how", "")),
                 ("vs batched eigvalsh", r["eigvalsh_s"] / r["core_s"], 2.0, r.get("eigvalsh_how", ""))]
        for what, ratio, goal, how in goals:
            out.append(dict(set=r["label"], target=f"{what} >= {goal:g}x", value=f"{ratio:.1f}x", met=ratio >= goal,
                            note="" if how == "measured" else how))
        if key == "roberta-base":
            out.append(dict(set=r["label"], target="CUDA core pass <= 50 ms", value=_ms(r["core_s"]),
                            met=r["core_s"] <= 0.050, note=""))
        s = stages.get(stage_key)
        if s and "gpu_busy" in s:
            slowest = max(STAGES, key=lambda k: s.get(k, 0.0))
            for t in out:
                if t["set"] == r["label"] and not t["met"]:
                    t["note"] = (t["note"] + "; " if t["note"] else "") + \
                        f"slowest stage: {slowest} ({s[slowest] / max(s['gpu_busy'], 1e-12):.0%} of GPU time)"
    return out


def render(data: dict[str, Any]) -> str:
    """The Markdown report from the JSON's content (whatever part of it exists: a run may have been stopped)."""
    meta = data["meta"]
    lines = [f"# tempbalance's CUDA core on {meta['device']}", ""]
    lines += [f"- {meta['device']}, driver {meta.get('driver') or 'n/a'}; torch {meta['torch']} (CUDA "
              f"{meta['torch_cuda']}), Python {meta['python']}; {meta['cuda_status']}",
              f"- run {meta['date']}, sources {meta.get('source') or 'n/a'}, {meta['mode']}"
              f"{', --quick' if meta.get('quick') else ''}: {len(data['checks'])} checks, "
              f"{len(meta['failed'])} failed{' (' + ', '.join(meta['failed']) + ')' if meta['failed'] else ''}, "
              f"{meta['seconds']:.0f} s",
              "- made by `bash scripts/gpu_check.sh --stage build` then `--stage checks` (scripts/gpu_check.py); "
              "times are medians of CUDA-event timings after a warm-up, on random weights of each model's shapes "
              "with a heavy-tailed part; fp32 unless noted"]
    if meta["mode"] != "gpu":
        lines += ["- **self-test on the CPU stand-in of the CUDA core: small shapes, host clocks; the figures below "
                  "check the script, they say nothing about a GPU**"]
    speed = data.get("speed", [])
    if speed:
        lines += ["", "## One spectral pass", "",
                  "| weights | matrices | per-layer `svdvals` (the reference way) | batched `eigvalsh` on torch Grams "
                  "| CUDA core (`analyze`: eigenvalues to alphas) | of which eigenvalues | vs svdvals | vs eigvalsh "
                  "| alpha max error vs float64 | peak extra GPU memory |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in speed:
            svd = _ms(r.get("svdvals_s")) + ("" if r.get("svdvals_how") == "measured" else f" ({r.get('svdvals_how')})")
            eig = _ms(r.get("eigvalsh_s")) + ("" if r.get("eigvalsh_how") == "measured"
                                              else f" ({r.get('eigvalsh_how')})")
            err = f"{r['alpha_err_f64']:.1e}" + (f" ({r['alpha_err_note']})" if r.get("alpha_err_note") else "")
            lines.append(f"| {r['label']} | {r['matrices']} | {svd} | {eig} | {_ms(r['core_s'])} | "
                         f"{_ms(r.get('core_eigs_s'))} | {r['svdvals_s'] / r['core_s']:.1f}x | "
                         f"{r['eigvalsh_s'] / r['core_s']:.1f}x | {err} | {_mib(r.get('peak_extra_bytes'))} |")
        lines += ["", "Peak extra GPU memory: torch's allocator's peak during one pass above what was allocated "
                  "before it (the core's scratch comes from that allocator). The core's own largest request per "
                  "solver call: " + "; ".join(f"{r['label']}: Grams + eigenvalues {_mib(r.get('scratch_bytes'))}, "
                                              f"cuSOLVER workspace {_mib(r.get('solver_bytes'))}" for r in speed) + "."]
    goals = targets(data)
    if goals:
        lines += ["", "### Targets", "", "| weights | target | measured | met | note |", "|---|---|---|---|---|"]
        lines += [f"| {t['set']} | {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} | {t['note']} |"
                  for t in goals]
    stages = [r for r in data.get("stages", []) if "gpu_busy" in r]
    if stages:
        lines += ["", "## Where a pass's time goes", "",
                  "GPU time per stage of one `analyze()` (torch's profiler: every kernel of the process, cuSOLVER's "
                  "included), against the pass's time on the stream (CUDA events):", "",
                  "| weights | Grams (cuBLAS GEMM) | eigenvalues (cuSOLVER) | screen + copy-out | Hill kernel | torch ops "
                  "(slices, casts, sort, copies) | GPU busy | pass | kernels |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {_ms(r['grams'])} | {_ms(r['solve'])} | {_ms(r['screen_copy'])} | "
                  f"{_ms(r['hill'])} | {_ms(r['torch_ops'])} | {_ms(r['gpu_busy'])} | {_ms(r['pass_s'])} | "
                  f"{r['kernels']} |" for r in stages]
    for r in data.get("stages", []):
        if "error" in r:
            lines += ["", f"(No stage times for {r['label']}: the profiler failed: {r['error']})"]
    for r in data.get("host", []):
        lines += ["", f"**Host:** `analyze()` on {r['label']} holds the host {_ms(r['analyze_host_s'])} (it returns "
                  f"the finished report): `start_pass` enqueues everything in {_ms(r['start_pass_host_s'])} without "
                  f"waiting, then `report()` waits for the GPU once and builds the rows in {_ms(r['report_host_s'])}."]
    syev = data.get("syev", [])
    if syev:
        lines += ["", "## `XsyevBatched` against per-matrix `Xsyevd`, by Gram size", "",
                  "torch's `eigvalsh` solves a batch with its batched Jacobi solver (`syevjBatched`) up to n = 32 and "
                  "loops over the matrices (`syevd`) above. The CUDA core solves every Gram size with "
                  "`cusolverDnXsyevBatched` (groups of at most 1 GiB and n·n·batch < 2³¹); per-matrix `Xsyevd` is "
                  "its fallback, forced here (`GROUP_BYTES` below one Gram). Core times include its Gram GEMM.", "",
                  "| n | Grams | `XsyevBatched` | per-matrix `Xsyevd` | batched speed-up | torch `eigvalsh` (on Grams) "
                  "| batched vs torch |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['n']} | {r['grams']} | {_ms(r['batched_s'])} | {_ms(r['per_matrix_s'])} | "
                  f"{r['per_matrix_s'] / r['batched_s']:.2f}x | {_ms(r['torch_s'])} | "
                  f"{r['torch_s'] / r['batched_s']:.2f}x |" for r in syev]
        wins = [str(r["n"]) for r in syev if r["per_matrix_s"] > r["batched_s"]]
        losses = [str(r["n"]) for r in syev if r["per_matrix_s"] <= r["batched_s"]]
        lines += ["", f"Faster with the batched call: n = {', '.join(wins) or 'none'}; with per-matrix `Xsyevd`: "
                  f"n = {', '.join(losses) or 'none'}."]
    tune = data.get("finetune", [])
    if tune:
        lines += ["", "## The ESD's overhead in fine-tuning", "",
                  f"A RoBERTa-base-sized masked LM (random init), batch {tune[0]['batch']} tokens, fused AdamW, "
                  f"{tune[0]['precision']}, {tune[0]['steps']} timed steps after a warm-up:", "",
                  "| run | time per step | overhead | refreshes in the timed steps | spectral time (TempBalance's own "
                  "count) |", "|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {_ms(r['s_per_step'])} | "
                  f"{'—' if r['overhead_pct'] is None else format(r['overhead_pct'], '+.1f') + ' %'} | "
                  f"{r.get('refreshes', '—')} | {_ms(r.get('spectral_s')) if 'spectral_s' in r else '—'} |"
                  for r in tune]
    lines += ["", "## Checks", "", "| check | status | s | detail |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['status']} | {c['seconds']:.1f} | {c['detail'].replace('|', '/')} |"
              for c in data["checks"]]
    return "\n".join(lines) + "\n"


def environment(selftest: bool, build: dict | None, quick: bool) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not selftest
    driver = None
    if cuda:
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    from tempbalance import cuda_backend

    return {"mode": "selftest-cpu" if selftest else "gpu", "quick": quick,
            "device": torch.cuda.get_device_name() if cuda else "cpu (stand-in)", "driver": driver,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
            "cuda_status": (build or {}).get("cuda_status") if selftest else cuda_backend.cuda_status(),
            "source": (build or {}).get("source"), "arch": (build or {}).get("arch"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--selftest-cpu", action="store_true", help="run against the CPU stand-in (no GPU needed)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    ap.add_argument("--probe", choices=PROBES, help="run one failure probe and print its JSON (internal)")
    ap.add_argument("--quick", action="store_true", help="one repetition, fewer LLaMA matrices and Gram sizes")
    ap.add_argument("--reps", type=int, default=None, help="timed runs per figure (default 5; --quick 1)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for all checks; a check that would not fit is skipped (default 270; --quick 160)")
    ap.add_argument("--build-info", help="gpu_check.sh's .gpu/build.json: the build stage's rows")
    ap.add_argument("--report-only", action="store_true", help="write the report with the build stage's rows only")
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.selftest_cpu)))
        return 0
    build = json.loads(Path(args.build_info).read_text()) if args.build_info and Path(args.build_info).exists() \
        else None
    meta = environment(args.selftest_cpu, build, args.quick)
    if args.report_only:
        results = Results(Path(args.out), meta)
        build_rows(results, build)
        return 1 if results.failed else 0
    if not args.selftest_cpu:  # the GPU machine's 16 cores; the self-test keeps OMP_NUM_THREADS (shared machines)
        torch.set_num_threads(min(8, os.cpu_count() or 1))
    reps = args.reps or (1 if args.quick else 5)
    budget = args.budget or (math.inf if args.selftest_cpu else 160.0 if args.quick else 270.0)
    env = Env(args.selftest_cpu, args.quick)
    results = Results(Path(args.out), dict(meta, cuda_status=env.status), budget)
    build_rows(results, build)
    results.run("core ready", lambda: (_verdict(env.status.startswith("CUDA core ready")), env.status, {}))
    f32, f64 = torch.float32, torch.float64
    llama_block = env.shapes("llama7b-block")
    results.run("accuracy roberta-base fp32", check_accuracy(env, "roberta-base", env.shapes("roberta-base"), f32, f32,
                                                             10))
    results.run("accuracy llama7b-block fp32", check_accuracy(
        env, "llama7b-block", llama_block[3:6] if args.quick else llama_block, f32, f32, 10), need=60)
    results.run("accuracy roberta-base fp64", check_accuracy(env, "roberta-base", env.shapes("roberta-base")[:6], f64,
                                                             f64, 10))
    results.run("accuracy roberta-base bf16 weights", check_accuracy(env, "roberta-base", env.shapes("roberta-base")[:6],
                                                                     torch.bfloat16, f32, 10))
    results.run("accuracy odd shapes (min side 1, 2, 32, 33)", check_accuracy(env, "odd", env.shapes("odd"), f32, f32))
    results.run("conv and complex stacks", check_stacks(env))
    results.run("stack split across solver calls", check_split(env))
    run_probes(env, results)
    results.run("work on the caller's stream", check_side_stream(env))
    results.run("nothing waits for the GPU", check_no_wait(env))
    results.run("lag=1 snapshot handoff", check_lag_race(env))
    results.run("handles of ended threads are destroyed", check_thread_handles(env))
    results.run("TempBalance refresh: GPU factors == CPU factors", check_tb_factors(env))
    results.run("fused factors into tensor lrs", check_fused(env))
    # speed, the table first; RoBERTa-base warms every method up
    results.run("speed roberta-base", check_speed(env, results, "roberta-base", reps, host=True), need=25)
    results.run("speed llama7b-block", check_speed(env, results, "llama7b-block", min(reps, 2)), need=60)
    results.run("speed llama7b (whole model)", check_llama_full(env, results, min(reps, 2)), need=45)
    results.run("speed smollm2-135m", check_speed(env, results, "smollm2-135m", min(reps, 3)), need=15)
    results.run("speed roberta-base fp64", check_speed(env, results, "roberta-base", min(reps, 2), f64, stages=False),
                need=15)
    results.run("XsyevBatched vs per-matrix Xsyevd by Gram size", check_syev_by_size(env, results, min(reps, 3)),
                need=25)
    steps = (4 if args.quick else 8) if args.selftest_cpu else 30 if args.quick else 60
    results.run("fine-tuning overhead", check_finetune(env, results, steps, 3 if args.selftest_cpu else 10), need=40)
    env.close()
    results.write()
    print(f"[gpu_check] {len(results.checks)} checks, failed: {results.failed or 'none'}; wrote "
          f"{args.out}/{report_name(meta['device'])}.md")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
