"""scripts/gpu_check.py's own logic that needs no device: the stage of each profiled kernel, the report's name and
text from partial results (a run stopped at its time limit), the targets, and the budget and repetition rules.
(The checks themselves run against the CPU stand-in in `gpu_check.sh --selftest-cpu` and `--rehearse`, in CI.)"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

_SPEC = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parents[1] / "scripts" /
                                               "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gpu_check)

META = {"device": "NVIDIA H200", "driver": "580.1", "torch": "2.11.0", "torch_cuda": "13.0", "python": "3.12.3",
        "cuda_status": "CUDA core ready", "date": "today", "mode": "gpu", "quick": False, "source": "abc"}


def test_kernels_are_assigned_to_the_stage_the_core_enqueued_them_in():
    # two solve groups (GEMM, screen, memset + solver kernels, copy-out), torch's sort, the Hill kernel; given out of
    # order (the profiler's list is not sorted by start)
    kernels = [
        (0, 1.0, "sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32"),
        (1, 0.1, "void tb::cuda::(anonymous namespace)::screen_kernel<float>(float const*, long, long)"),
        (2, 0.2, "Memset (Device)"),
        (3, 4.0, "void syevj_batch_kernel<float>(int, float*)"),
        (4, 0.5, "void cusolver::gemm_kernel<float>()"),  # a GEMM inside cuSOLVER is the solver's
        (5, 0.1, "void tb::cuda::(anonymous namespace)::finish_kernel<float>(float const*, float*, long, long)"),
        (8, 0.3, "void at::native::bitonicSortKVInPlace<float>()"),
        (6, 2.0, "cutlass3x_sm90_simt_sgemm_f32_f32_f32_f32_f32_128x128x8"),
        (7, 0.05, "void tb::cuda::(anonymous namespace)::blank_kernel<float>()"),
        (7.5, 3.0, "void stedc_kernel<float>()"),
        (7.9, 0.1, "void tb::cuda::(anonymous namespace)::finish_kernel<float>()"),
        (9, 0.4, "void tb::cuda::(anonymous namespace)::hill_kernel(double const*)"),
    ]
    got = gpu_check.classify_kernels(sorted(kernels, key=lambda k: -k[0]))
    assert got == pytest.approx({"grams": 3.0, "screen_copy": 0.35, "solve": 7.7, "hill": 0.4, "torch_ops": 0.3})


@pytest.mark.parametrize("device, stem", [("NVIDIA H200", "gpu_h200"), ("NVIDIA H100 80GB HBM3", "gpu_h100_80gb_hbm3"),
                                          ("cpu (stand-in)", "gpu_cpu_selftest")])
def test_report_name_follows_the_device(device, stem):
    assert gpu_check.report_name(device) == stem


def _speed(key, label, svd, eig, core, how="measured"):
    return dict(set=key, label=label, matrices=7, svdvals_s=svd, eigvalsh_s=eig, core_s=core, core_eigs_s=core / 2,
                svdvals_how=how, eigvalsh_how=how, alpha_err_f64=1e-6, peak_extra_bytes=2**20, scratch_bytes=2**20,
                solver_bytes=0)


def test_targets_say_which_are_missed_and_the_slowest_stage():
    stages = dict(grams=0.001, solve=0.03, screen_copy=0.0, hill=0.0, torch_ops=0.001, gpu_busy=0.032)
    data = {"speed": [_speed("roberta-base", "RoBERTa-base", 1.0, 0.06, 0.04),
                      _speed("llama7b", "LLaMA-7B", 300.0, 20.0, 2.0, "extrapolated: 32 x one block")],
            "stages": [dict(set="roberta-base", **stages)]}
    got = {(t["set"], t["target"]): t for t in gpu_check.targets(data)}
    assert got[("RoBERTa-base", "vs per-layer svdvals >= 10x")]["met"]
    missed = got[("RoBERTa-base", "vs batched eigvalsh >= 2x")]
    assert not missed["met"] and missed["value"] == "1.5x" and "slowest stage: solve (94% of GPU time)" in missed["note"]
    assert got[("RoBERTa-base", "CUDA core pass <= 50 ms")]["met"]
    assert got[("LLaMA-7B", "vs per-layer svdvals >= 10x")]["note"] == "extrapolated: 32 x one block"
    assert len(got) == 5


def test_report_renders_whatever_part_of_the_run_exists(tmp_path):
    results = gpu_check.Results(tmp_path, dict(META))
    results.record("core ready", "pass", "ready | batched")
    md = (tmp_path / "gpu_h200.md").read_text()  # written at once, after the first row
    assert "## Checks" in md and "ready / batched" in md and "## One spectral pass" not in md
    results.add("speed", _speed("llama7b", "LLaMA-7B", 300.0, 20.0, 2.0, "extrapolated: 32 x one block"))
    results.add("syev", dict(n=768, grams=72, batched_s=0.01, per_matrix_s=0.03, torch_s=0.04))
    results.record("speed llama7b", "info", "done")
    md = (tmp_path / "gpu_h200.md").read_text()
    assert "| LLaMA-7B | 7 | 300.0 s (extrapolated: 32 x one block) |" in md
    assert "| 768 | 72 | 10.0 ms | 30.0 ms | 3.00x | 40.0 ms | 4.00x |" in md
    assert "Faster with the batched call: n = 768; with per-matrix `Xsyevd`: n = none." in md
    data = json.loads((tmp_path / "gpu_h200.json").read_text())
    assert [c["name"] for c in data["checks"]] == ["core ready", "speed llama7b"] and len(data["speed"]) == 1


def test_a_check_that_does_not_fit_the_budget_is_skipped_and_a_crash_is_a_failure(tmp_path):
    results = gpu_check.Results(tmp_path, dict(META), budget=5.0)
    ran = []
    results.run("heavy", lambda: ran.append(1) or ("pass", "", {}), need=60)
    results.run("crashes", lambda: 1 / 0)
    results.run("light", lambda: ("pass", "ok", {}), need=1)
    assert ran == []
    assert [(c["name"], c["status"]) for c in results.checks] == [("heavy", "skip"), ("crashes", "fail"),
                                                                  ("light", "pass")]
    assert "ZeroDivisionError" in results.checks[1]["detail"] and results.failed == ["crashes"]


class _CpuEnv:
    device = torch.device("cpu")

    def sync(self):
        pass


@pytest.mark.parametrize("slow, runs", [(math.inf, 4), (-1.0, 1)])
def test_repetitions_stop_after_a_slow_run(slow, runs):
    calls = []
    _, n = gpu_check.median_time(_CpuEnv(), lambda: calls.append(1), 4, slow=slow)
    assert n == runs == len(calls)


def test_build_rows_come_from_the_build_stage_record(tmp_path):
    results = gpu_check.Results(tmp_path, dict(META))
    gpu_check.build_rows(results, {"arch": "90-real", "nvcc": "/usr/local/cuda/bin/nvcc", "seconds": 80,
                                   "tests": {"exit": 1, "summary": "1 failed, 40 passed", "seconds": 30}})
    assert [(c["name"], c["status"]) for c in results.checks] == [
        ("build", "pass"), ("CUDA tests (pytest, against the built module)", "fail")]
    assert results.checks[1]["detail"] == "1 failed, 40 passed"
