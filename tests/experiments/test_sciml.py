"""SciML experiment: the PDE generators against independent checks (manufactured solution, Cole-Hopf, the GRF
laws' closed-form variances), nRMSE and the paired statistics by hand, a fair-pairing check, and the --smoke run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.sciml import metrics, pde_data  # noqa: E402

pytest.importorskip("neuralop")
pytest.importorskip("monai")


# --- Darcy ---------------------------------------------------------------------------------------------------------
def _manufactured(n: int) -> float:
    """Max error of the FV solution for u = sin(pi x) sin(pi y), a = 1 + sin(2 pi x) sin(pi y) / 2 (f from the
    closed form of -div(a grad u))."""
    x = (np.arange(n) + 0.5) / n
    X, Y = np.meshgrid(x, x, indexing="ij")
    pi = np.pi
    a = 1 + 0.5 * np.sin(2 * pi * X) * np.sin(pi * Y)
    ax, ay = pi * np.cos(2 * pi * X) * np.sin(pi * Y), 0.5 * pi * np.sin(2 * pi * X) * np.cos(pi * Y)
    u = np.sin(pi * X) * np.sin(pi * Y)
    ux, uy = pi * np.cos(pi * X) * np.sin(pi * Y), pi * np.sin(pi * X) * np.cos(pi * Y)
    f = -(ax * ux + ay * uy) + 2 * pi ** 2 * a * u
    return float(np.abs(pde_data.solve_darcy(a, f) - u).max())


def test_darcy_manufactured_solution_converges_second_order():
    e16, e32, e64 = (_manufactured(n) for n in (16, 32, 64))
    assert e64 < 1e-3
    assert 3.6 < e16 / e32 < 4.4 and 3.6 < e32 / e64 < 4.4


def _flux_residual(a: np.ndarray, u: np.ndarray, f: float) -> np.ndarray:
    """Per-cell flux balance written out cell by cell (an independent loop, not the vectorised assembly)."""
    n = a.shape[0]
    h = 1.0 / n
    res = np.zeros_like(u)
    for i in range(n):
        for j in range(n):
            out = 0.0
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                k, m = i + di, j + dj
                if 0 <= k < n and 0 <= m < n:
                    out += 2 * a[i, j] * a[k, m] / (a[i, j] + a[k, m]) * (u[i, j] - u[k, m])
                else:
                    out += 2 * a[i, j] * u[i, j]  # u = 0 on the face, half a cell away
            res[i, j] = out / h ** 2 - f
    return res


def test_darcy_sample_satisfies_flux_balance_symmetry_and_max_principle():
    a, u = pde_data.generate_darcy(pde_data.DarcyConfig(n=16, count=3, seed=5))
    assert set(np.unique(a)) == {3.0, 12.0}
    for ai, ui in zip(a.astype(np.float64), u.astype(np.float64)):
        uu = pde_data.solve_darcy(ai, 1.0)
        np.testing.assert_allclose(uu, ui, rtol=1e-5, atol=1e-9)  # float32 storage
        assert np.abs(_flux_residual(ai, uu, 1.0)).max() < 1e-8
        assert (uu > 0).all()  # f > 0 with u = 0 on the boundary
    sym = a[0] + a[0].T  # a coefficient symmetric under x <-> y gives a symmetric solution
    us = pde_data.solve_darcy(sym, 1.0)
    np.testing.assert_allclose(us, us.T, atol=1e-12)


def test_darcy_rejects_bad_coefficients():
    with pytest.raises(ValueError, match="positive"):
        pde_data.solve_darcy(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="square"):
        pde_data.solve_darcy(np.ones((4, 5)))


def test_cosine_grf_has_the_stated_variance():
    n, count = 8, 4000
    mu = pde_data.grf_cosine(n, count, np.random.default_rng(0), tau=3.0, alpha=2.0)
    x = (np.arange(n) + 0.5) / n
    k = np.arange(n)
    var = np.zeros((n, n))  # sum over modes of lambda_k phi_k(x)^2, the mean mode excluded
    for k1 in k:
        for k2 in k:
            if k1 == k2 == 0:
                continue
            lam = (np.pi ** 2 * (k1 ** 2 + k2 ** 2) + 9.0) ** -2.0
            var += lam * np.outer(np.cos(np.pi * k1 * x), np.cos(np.pi * k2 * x)) ** 2
    np.testing.assert_allclose(mu.var(axis=0), var, rtol=0.12)
    assert abs(mu.mean()) < 0.1 * math.sqrt(var.mean())


# --- Burgers -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nu,t", [(0.01, 0.5), (0.05, 0.3)])
def test_burgers_matches_cole_hopf(nu, t):
    n = 256
    x = np.arange(n) / n
    u0, exact = pde_data.burgers_cole_hopf(1.0, nu, t, x)
    u = pde_data.BurgersETDRK4(n, nu, 1e-3).solve(u0[None], t)[0]
    assert np.abs(u - exact).max() < 1e-6 * np.abs(exact).max() + 1e-9
    assert np.abs(exact).max() < 0.9  # the solution did evolve (decayed from amplitude 1)


def test_burgers_conserves_the_mean_and_dissipates_energy():
    u0 = pde_data.grf_periodic(128, 4, np.random.default_rng(3)) + 0.3
    s = pde_data.BurgersETDRK4(128, 0.02, 1e-3)
    u1 = s.solve(u0, 0.2)
    u2 = s.solve(u1, 0.2)
    np.testing.assert_allclose(u2.mean(axis=1), u0.mean(axis=1), atol=1e-12)
    e0, e1, e2 = ((v - v.mean(axis=1, keepdims=True)) ** 2 for v in (u0, u1, u2))
    assert (e2.sum(1) < e1.sum(1)).all() and (e1.sum(1) < e0.sum(1)).all()


def test_periodic_grf_has_the_stated_variance():
    n = 64
    g = pde_data.grf_periodic(n, 6000, np.random.default_rng(1), sigma=25.0, tau=5.0)
    k = np.arange(1, n // 2)
    var = 2 * np.sum(625.0 / (4 * np.pi ** 2 * k ** 2 + 25.0) ** 2)  # sum of lambda_k (cos^2 + sin^2) * 2
    assert g.var() == pytest.approx(var, rel=0.05)
    assert abs(g.mean(axis=1)).max() < 1e-12  # mean-zero draws


def test_burgers_stored_grid_is_the_solve_grid_subsampled():
    cfg = pde_data.BurgersConfig(n=32, n_solve=128, count=3, dt=2e-3, t_end=0.1)
    u0, ut = pde_data.generate_burgers(cfg)
    full0 = pde_data.grf_periodic(128, 3, np.random.default_rng(cfg.seed))
    np.testing.assert_allclose(u0, full0[:, ::4], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ut, pde_data.BurgersETDRK4(128, cfg.nu, cfg.dt).solve(full0, 0.1)[:, ::4], atol=1e-6)


def test_cache_file_is_named_by_parameters_and_reused(tmp_path, monkeypatch):
    cfg = pde_data.DarcyConfig(n=16, count=2, seed=9)
    x, y = pde_data.load(cfg, tmp_path)
    path = tmp_path / f"{cfg.tag()}.npz"
    assert path.exists() and "n16" in path.name and "seed9" in path.name and "N2" in path.name
    monkeypatch.setattr(pde_data, "generate_darcy", lambda c: (_ for _ in ()).throw(AssertionError("regenerated")))
    x2, y2 = pde_data.load(cfg, tmp_path)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert pde_data.DarcyConfig(n=16, count=2, seed=10).tag() != cfg.tag()


# --- metrics -------------------------------------------------------------------------------------------------------
def test_nrmse_by_hand():
    t = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])  # norms 5 and 1
    p = t.clone()
    p[0, 0, 0] += 0.5  # error 0.5 / 5 = 0.1
    p[1, 0, 1] -= 0.3  # error 0.3 / 1 = 0.3
    assert metrics.nrmse(p, t) == pytest.approx(0.2)
    assert metrics.nrmse(t, t) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        metrics.nrmse(t[:1], t)
    with pytest.raises(ValueError, match="zero"):
        metrics.nrmse(t, torch.zeros_like(t))


def test_paired_tests_by_hand():
    b, t = [0.10, 0.20, 0.30, 0.40], [0.09, 0.19, 0.31, 0.30]
    r = metrics.paired_tests(b, t)
    assert r["reduction_pct"] == pytest.approx(100 * (1.0 - 0.89) / 1.0)
    assert r["tb_better"] == 3 and r["n_pairs"] == 4
    d = np.array(t) - np.array(b)
    tstat = d.mean() / (d.std(ddof=1) / 2)
    assert r["t_p"] == pytest.approx(2 * stats.t.sf(abs(tstat), 3))
    assert math.isnan(metrics.paired_tests([0.1], [0.1])["t_p"])
    assert metrics.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


# --- the experiment ------------------------------------------------------------------------------------------------
def _tiny_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 1, 32, 32, generator=g)  # the UNet needs >= 32 (4 halvings)
    y = x.roll(1, dims=-1) * 0.5 + 0.1
    return dict(name="darcy", dim=2, pool=(x[:12], y[:12]), val=(x[12:16], y[12:16]), test=(x[16:], y[16:]))


@pytest.mark.parametrize("kind", ["fno", "unet"])
def test_tb_with_zero_strength_reproduces_the_baseline_exactly(kind):
    """Both arms see the same subset, initial weights and batch order: TB with s = 0 (all factors 1) must give the
    baseline's numbers bit for bit, so any difference in the real runs comes from the factors alone."""
    from experiments.sciml import run

    args = run.parse_args(["--smoke", "--tb-s", "0", "--out", "/nonexistent-not-written"])
    task = _tiny_task()
    base = run.train_one(task, kind, 8, "baseline", 1, 2e-3, args)
    tb = run.train_one(task, kind, 8, "tb", 1, 2e-3, args)
    assert tb["n_refresh"] >= 2 and tb["factor_min"] == tb["factor_max"] == 1.0
    assert tb["test_nrmse"] == base["test_nrmse"] and tb["val_nrmse"] == base["val_nrmse"]
    args = run.parse_args(["--smoke", "--out", "/nonexistent-not-written"])
    tb = run.train_one(task, kind, 8, "tb", 1, 2e-3, args)
    assert tb["factor_max"] > 1.0 > tb["factor_min"]  # with s = 1 TempBalance does move the learning rates
    assert tb["test_nrmse"] != base["test_nrmse"]


def test_smoke_run_writes_every_output(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "sciml" / "run.py"), "--smoke", "--out",
                           str(tmp_path / "out"), "--cache", str(tmp_path / "cache")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    for f in ("results.json", "runs.csv", "summary.csv", "results.md", "nrmse_vs_ratio.png", "alpha_std.png"):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / "results.json").read_text())
    assert {(r["task"], r["model"]) for r in res["summary"]} == {(t, m) for t in ("darcy", "burgers")
                                                                 for m in ("fno", "unet")}
    for r in res["summary"]:
        assert 0 < r["baseline_mean"] < 5 and 0 < r["tb_mean"] < 5 and r["n_pairs"] == 2
    tb_runs = [r for r in res["runs"] if r["arm"] == "tb"]
    assert tb_runs and all(r["n_refresh"] >= 2 for r in tb_runs)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(d["cache_file"] for d in res["data"].values())
    assert (out / "results.md").read_text().startswith("| PDE | model |")


def test_search_all_trains_every_seed_at_every_lr_and_reports_every_grid_point():
    """--search all: the chosen LR has the lowest mean validation nRMSE over the seeds (per arm), and the grid
    table compares the arms at every LR on the same seeds."""
    from experiments.sciml import run

    args = run.parse_args(["--smoke", "--search", "all", "--seeds", "2", "--out", "/nonexistent-not-written"])
    args.lr_fno = [1e-3, 4e-3]
    task = _tiny_task()
    records = []
    for arm in run.ARMS:
        cell = run.run_cell(task, "fno", 0.5, arm, args, log=lambda msg: None)
        assert sorted((r["lr"], r["seed"]) for r in cell) == [(lr, s) for lr in args.lr_fno for s in (0, 1)]
        val = {lr: np.mean([r["val_nrmse"] for r in cell if r["lr"] == lr]) for lr in args.lr_fno}
        assert {r["lr"] for r in cell if r["chosen"]} == {min(val, key=val.get)}
        records += cell
    grid = run.grid_summary(records)
    assert [(g["lr"], g["n_pairs"]) for g in grid] == [(1e-3, 2), (4e-3, 2)]
    for g in grid:
        b = [r["test_nrmse"] for r in sorted(records, key=lambda r: r["seed"]) if (r["arm"], r["lr"]) == ("baseline", g["lr"])]
        t = [r["test_nrmse"] for r in sorted(records, key=lambda r: r["seed"]) if (r["arm"], r["lr"]) == ("tb", g["lr"])]
        assert g["baseline_mean"] == pytest.approx(np.mean(b)) and g["reduction_pct"] == pytest.approx(
            100 * (np.mean(b) - np.mean(t)) / np.mean(b))
        assert g["t_p"] == pytest.approx(stats.ttest_rel(t, b).pvalue)
    rows, _ = run.summarize(records)
    assert rows[0]["n_pairs"] == 2 and "Every grid point" in run.markdown(rows, [], args, grid)
