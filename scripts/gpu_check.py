#!/usr/bin/env python3
"""The checks of scripts/gpu_check.sh: the CUDA core on a GPU against the CPU core and float64, its failure paths,
its streams and memory, and its speed. With --selftest-cpu the same checks run against the CPU stand-in of the CUDA
module that the tests use (tests/analysis/test_cuda_backend.py: CPU tensors play the device tensors, small shapes), so this
script's own logic is exercised on machines without a GPU (CI).

Writes <out>/gpu_check.md (tables) and <out>/gpu_check.json (every figure); exits 1 when a check fails.
Usage: python scripts/gpu_check.py --out DIR [--selftest-cpu]      (scripts/gpu_check.sh builds first)
       python scripts/gpu_check.py --probe KIND [--selftest-cpu]    (one failure probe; run in a subprocess)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
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
PROBES = ("nan", "overflow", "solver", "oom")


# --- the device: a GPU, or the CPU stand-in ----------------------------------------------------------------------
class Env:
    """Where the checks run. On a GPU: the real `_core_cuda`. In the self-test: the stand-in, installed on CPU
    tensors (`cuda_backend.DEVICE_TYPE = "cpu"`), with the shapes scaled down."""

    def __init__(self, selftest: bool):
        from tempbalance.analysis import cuda_backend

        self.selftest = selftest
        self.cuda_backend = cuda_backend
        self._patch = None
        if selftest:
            sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "analysis")]
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
        if name == "roberta-base":
            return [(96, 96)] * 4 + [(384, 96), (96, 384)] if small else \
                [(768, 768)] * 48 + [(3072, 768)] * 12 + [(768, 3072)] * 12
        if name == "llama7b-block":
            return [(128, 128)] * 4 + [(344, 128)] * 2 + [(128, 344)] if small else \
                [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]
        if name == "odd":
            return [(1, 50), (50, 1), (2, 70), (70, 2), (32, 33), (33, 32), (33, 100), (100, 33), (1, 1)]
        raise KeyError(name)


def weights(env: Env, shapes: list[tuple[int, ...]], dtype=torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the given shapes with a heavy-tailed part (realistic spectra), on the device."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in enumerate(shapes):
        base = torch.randn(shape, generator=g, dtype=torch.float64)
        if len(shape) == 2 and min(shape) > 4:
            r = max(1, min(shape) // 16)  # a low-rank spike on top of the bulk: a heavy tail
            base += 3.0 * torch.randn(shape[0], r, generator=g, dtype=torch.float64) @ \
                torch.randn(r, shape[1], generator=g, dtype=torch.float64) / math.sqrt(r)
        base /= math.sqrt(shape[-1])
        out[f"w{k}"] = base.to(dtype).to(env.device)
    return out


# --- records -------------------------------------------------------------------------------------------------------
class Results:
    def __init__(self):
        self.checks: list[dict[str, Any]] = []
        self.timings: list[dict[str, Any]] = []

    def run(self, name: str, fn: Callable[[], tuple[str, str, dict]]) -> None:
        """fn returns (status, detail, data); status "pass", "fail" or "info" (measured, no pass/fail)."""
        start = time.perf_counter()
        try:
            status, detail, data = fn()
        except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check; the others still run
            status, detail, data = "fail", f"{type(exc).__name__}: {exc}", {"traceback": traceback.format_exc()}
        seconds = time.perf_counter() - start
        self.checks.append(dict(name=name, status=status, detail=detail, seconds=round(seconds, 2), data=data))
        print(f"[gpu_check] {status:4s} {name} ({seconds:.1f} s): {detail}", flush=True)

    @property
    def failed(self) -> list[str]:
        return [c["name"] for c in self.checks if c["status"] == "fail"]


def _verdict(ok: bool) -> str:
    return "pass" if ok else "fail"


# --- accuracy: CUDA core vs CPU core vs float64 --------------------------------------------------------------------
def eigen_errors(env: Env, ws: dict[str, torch.Tensor], analysis_dtype: torch.dtype) -> dict[str, float]:
    """Max |lambda_cuda - lambda_ref| / lambda_max over the matrices, against the CPU core (same precision) and
    against float64 (the Gram formed and solved by torch in float64)."""
    from tempbalance import _native
    from tempbalance.analysis import spectra

    stacks = [spectra.slices(w, dtype=analysis_dtype, keep_device=True) for w in ws.values()]
    got = spectra.gram_eigvals(stacks, backend="native")
    hosts = [np.ascontiguousarray(s.cpu().numpy()) for s in stacks]
    cpus = _native.core.gram_eigvalsh(hosts, [0] * len(hosts), os.cpu_count() or 1)  # one call: all cores
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
        from tempbalance.analysis import spectra

        cb = env.cuda_backend
        g = torch.Generator().manual_seed(4)
        conv = (torch.randn(96, 80, 5, 5, generator=g) / 10).to(env.device)  # 25 Grams of 80 x 80
        stack = spectra.slices(conv, dtype=torch.float32, keep_device=True)
        whole = spectra.gram_eigvals([stack])[0]
        groups_whole = cb.last_pass.get("groups")
        saved = cb.GROUP_BYTES
        cb.GROUP_BYTES = 3 * 80 * 80 * 4  # 3 Grams per cusolverDnXsyevBatched call
        try:
            split = spectra.gram_eigvals([stack])[0]
            groups_split = cb.last_pass.get("groups")
        finally:
            cb.GROUP_BYTES = saved
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


def check_probe(env: Env, kind: str, timeout: int = 180):
    def run():
        cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", kind] + (["--selftest-cpu"] if env.selftest
                                                                                 else [])
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "fail", f"no answer within {timeout} s (a hang)", {}
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            return "fail", f"exit {done.returncode}: {done.stderr.strip()[-600:]}", {}
        got = json.loads(lines[-1])
        return _verdict(got["ok"]), got["detail"], got
    return run


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
        from test_device_lr import no_host_reads

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
    def run():
        from tempbalance import analyze

        ws = weights(env, env.shapes("odd")[4:] + [(200, 300)], seed=6)
        plain = analyze(ws, min_eigs=10)
        if env.device.type == "cuda":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                other = analyze(ws, min_eigs=10)
            torch.cuda.current_stream().wait_stream(side)
        else:
            other = analyze(ws, min_eigs=10)
        a = np.array([r.alpha for r in plain.rows])
        b = np.array([r.alpha for r in other.rows])
        ok = np.array_equal(a, b, equal_nan=True)
        return _verdict(ok), f"alphas on a side stream {'==' if ok else '!='} default stream", {}
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
            with env.host_only():
                want = analyze({n: p.detach().cpu() for n, p in m.named_parameters() if p.ndim == 2}, min_eigs=8,
                               backend="native")
            tb.wait()
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


# --- speed -----------------------------------------------------------------------------------------------------
def time_methods(env: Env, ws: dict[str, torch.Tensor], reps: int, warm_up: bool) -> dict[str, float]:
    """Median seconds of a full spectral pass by each method (CUDA events on a GPU), after a warm-up run of each
    (handles, kernels, allocator caches) when asked."""
    from tempbalance import analyze

    mats = list(ws.values())

    def cuda_pass():
        analyze(ws, min_eigs=0)

    def core_only():
        env.cuda_backend.gram_eigvals([w.unsqueeze(0) for w in mats])

    def svdvals():
        for w in mats:
            torch.linalg.svdvals(w).pow(2)

    def eigvalsh_batched():
        by_shape: dict[tuple, list] = {}
        for w in mats:
            by_shape.setdefault(tuple(w.shape), []).append(w)
        for group in by_shape.values():
            s = torch.stack(group)
            gram = s @ s.mT if s.shape[1] <= s.shape[2] else s.mT @ s
            torch.linalg.eigvalsh(gram)

    methods = {"tempbalance_cuda_pass": cuda_pass, "core_gram_eigvalsh": core_only, "svdvals_per_layer": svdvals,
               "eigvalsh_batched": eigvalsh_batched}
    out = {}
    for name, fn in methods.items():
        if warm_up:
            fn()
        env.sync()
        times = []
        for _ in range(reps):
            if env.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000.0)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def check_timing(env: Env, results: Results, name: str, reps: int, warm_up: bool = True):
    def run():
        ws = weights(env, env.shapes(name), seed=9)
        t = time_methods(env, ws, reps, warm_up)
        base = t["tempbalance_cuda_pass"]
        row = {"set": name, "matrices": len(ws), **{k: v for k, v in t.items()},
               **{f"{k}_ratio": v / base for k, v in t.items()}}
        results.timings.append(row)
        detail = ", ".join(f"{k} {v * 1e3:.1f} ms ({v / base:.2f}x)" for k, v in t.items())
        return "info", detail, row
    return run


# --- report ----------------------------------------------------------------------------------------------------
def write(results: Results, env: Env, out: Path, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"mode": "selftest-cpu" if env.selftest else "gpu", "cuda_status": env.status,
            "device": torch.cuda.get_device_name() if env.device.type == "cuda" else "cpu (stand-in)",
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
            "seconds": round(seconds, 1), "failed": results.failed}
    (out / "gpu_check.json").write_text(json.dumps({"meta": meta, "checks": results.checks,
                                                    "timings": results.timings}, indent=1, default=str))
    lines = [f"# gpu_check ({meta['mode']})", "", f"- device: {meta['device']}; torch {meta['torch']} (CUDA "
             f"{meta['torch_cuda']}); {meta['cuda_status']}", f"- {len(results.checks)} checks, "
             f"{len(results.failed)} failed, {seconds:.0f} s", "", "| check | status | detail |", "|---|---|---|"]
    lines += [f"| {c['name']} | {c['status']} | {c['detail'].replace('|', '/')} |" for c in results.checks]
    if results.timings:
        keys = [k for k in results.timings[0] if k not in ("set", "matrices") and not k.endswith("_ratio")]
        lines += ["", "Seconds per full spectral pass (median; CUDA events on a GPU), and the ratio to the "
                  "tempbalance CUDA pass:", "", "| set | matrices | " + " | ".join(keys) + " |",
                  "|---|---|" + "---|" * len(keys)]
        for r in results.timings:
            lines.append(f"| {r['set']} | {r['matrices']} | " +
                         " | ".join(f"{r[k]:.4f} ({r[k + '_ratio']:.2f}x)" for k in keys) + " |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--selftest-cpu", action="store_true", help="run against the CPU stand-in (no GPU needed)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    ap.add_argument("--probe", choices=PROBES, help="run one failure probe and print its JSON (internal)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.selftest_cpu)))
        return 0
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    start = time.perf_counter()
    env = Env(args.selftest_cpu)
    results = Results()
    results.run("core ready", lambda: (_verdict(env.status.startswith("CUDA core ready")), env.status, {}))
    f32, f64 = torch.float32, torch.float64
    for name in ("roberta-base", "llama7b-block"):
        results.run(f"accuracy {name} fp32", check_accuracy(env, name, env.shapes(name), f32, f32, 10))
    results.run("accuracy roberta-base fp64", check_accuracy(env, "roberta-base", env.shapes("roberta-base")[:6], f64,
                                                             f64, 10))
    results.run("accuracy roberta-base bf16 weights", check_accuracy(env, "roberta-base", env.shapes("roberta-base")[:6],
                                                                     torch.bfloat16, f32, 10))
    results.run("accuracy odd shapes (min side 1, 2, 32, 33)", check_accuracy(env, "odd", env.shapes("odd"), f32, f32))
    results.run("conv and complex stacks", check_stacks(env))
    results.run("stack split across solver calls", check_split(env))
    for kind in PROBES:
        results.run(f"failure probe: {kind}", check_probe(env, kind))
    results.run("work on a side stream", check_side_stream(env))
    results.run("nothing waits for the GPU", check_no_wait(env))
    results.run("lag=1 snapshot handoff", check_lag_race(env))
    results.run("handles of ended threads are destroyed", check_thread_handles(env))
    results.run("fused factors into tensor lrs", check_fused(env))
    # RoBERTa-base first warms every method up; the LLaMA block (per-layer svdvals take seconds there) runs twice
    results.run("timing roberta-base", check_timing(env, results, "roberta-base", args.reps))
    results.run("timing llama7b-block", check_timing(env, results, "llama7b-block", min(args.reps, 2), warm_up=False))
    env.close()
    write(results, env, Path(args.out), time.perf_counter() - start)
    print(f"[gpu_check] {len(results.checks)} checks, failed: {results.failed or 'none'}; wrote {args.out}/gpu_check.md")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
