"""Generated PDE data sets (no package ships PDEBench): 2D Darcy flow and 1D viscous Burgers.

Darcy (steady, time-independent), as in Li et al. (FNO, 2021):
    -div(a(x) grad u(x)) = f   on (0,1)^2,   u = 0 on the boundary,
    a = 12 where mu >= 0, 3 where mu < 0,  mu ~ GRF N(0, (-Laplacian + tau^2 I)^(-alpha)) with Neumann
    (cosine) eigenfunctions, tau = 3, alpha = 2; f = 1. Learn a -> u.
    Discretisation: cell-centred finite volumes on an n x n grid (h = 1/n), the 5-point flux stencil with the
    harmonic mean of the two cell coefficients on interior faces and 2a (half-cell distance) on boundary faces;
    the sparse SPD system is solved with scipy.sparse.linalg.spsolve.

Burgers (time-dependent), periodic on [0,1):
    u_t + (u^2/2)_x = nu u_xx,   nu = 0.01 by default,
    u0 ~ GRF N(0, 625 (-Laplacian + 25 I)^(-2)) (the FNO paper's initial law). Learn u(., 0) -> u(., T), T = 1.
    Solver: Fourier pseudo-spectral in space (2/3 de-aliasing of the nonlinear term), ETDRK4 in time (Cox &
    Matthews 2002, coefficients by the Kassam & Trefethen 2005 contour integral), batched over samples; solved on
    ``n_solve`` points and stored on every ``n_solve // n`` th point.

Every sample is a deterministic function of (generator parameters, seed); :func:`load` caches a data set under
``cache_dir`` in a file whose name carries every parameter, so a rerun reads it back instead of solving again.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

DEFAULT_CACHE = Path(os.environ.get("TEMPBALANCE_CACHE", Path.home() / ".cache" / "tempbalance")) / "sciml"


# --- Darcy ------------------------------------------------------------------------------------------------------
def darcy_matrix(a: np.ndarray) -> sp.csc_matrix:
    """The finite-volume matrix A (scaled by 1/h^2) of -div(a grad u) with u = 0 on the boundary.

    ``a``: (n, n) cell-centre coefficients, index [i, j] = cell at x = (i + 1/2) h, y = (j + 1/2) h.
    Unknowns are ordered row-major (``u.reshape(-1)``).
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"a must be a square (n, n) array with n >= 2, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError("a must be finite and positive everywhere")
    n = a.shape[0]
    h2 = (1.0 / n) ** 2
    idx = np.arange(n * n).reshape(n, n)
    tx = 2 * a[1:, :] * a[:-1, :] / (a[1:, :] + a[:-1, :])  # faces between cells (i, j) and (i+1, j)
    ty = 2 * a[:, 1:] * a[:, :-1] / (a[:, 1:] + a[:, :-1])
    diag = np.zeros((n, n))
    diag[1:, :] += tx
    diag[:-1, :] += tx
    diag[:, 1:] += ty
    diag[:, :-1] += ty
    # boundary faces: u = 0 at the face, half a cell away -> transmissibility 2a
    diag[0, :] += 2 * a[0, :]
    diag[-1, :] += 2 * a[-1, :]
    diag[:, 0] += 2 * a[:, 0]
    diag[:, -1] += 2 * a[:, -1]
    rows = [idx.ravel(), idx[1:, :].ravel(), idx[:-1, :].ravel(), idx[:, 1:].ravel(), idx[:, :-1].ravel()]
    cols = [idx.ravel(), idx[:-1, :].ravel(), idx[1:, :].ravel(), idx[:, :-1].ravel(), idx[:, 1:].ravel()]
    vals = [diag.ravel(), -tx.ravel(), -tx.ravel(), -ty.ravel(), -ty.ravel()]
    return sp.csc_matrix((np.concatenate(vals) / h2, (np.concatenate(rows), np.concatenate(cols))), shape=(n * n,) * 2)


def solve_darcy(a: np.ndarray, f: np.ndarray | float = 1.0) -> np.ndarray:
    """u on the cell centres for coefficient ``a`` (n, n) and source ``f`` (scalar or (n, n))."""
    n = np.asarray(a).shape[0]
    rhs = np.broadcast_to(np.asarray(f, dtype=np.float64), (n, n)).ravel()
    return spla.spsolve(darcy_matrix(a), rhs).reshape(n, n)


def grf_cosine(n: int, count: int, rng: np.random.Generator, tau: float = 3.0, alpha: float = 2.0) -> np.ndarray:
    """``count`` samples of N(0, (-Laplacian + tau^2)^(-alpha)) on the cell centres of the unit square, expanded in
    the Neumann eigenfunctions cos(pi k1 x) cos(pi k2 y), k < n (the FNO paper's Darcy coefficient law)."""
    x = (np.arange(n) + 0.5) / n
    k = np.arange(n)
    phi = np.cos(np.pi * np.outer(x, k))  # (n points, n modes)
    lam = (np.pi ** 2 * (k[:, None] ** 2 + k[None, :] ** 2) + tau ** 2) ** (-alpha / 2.0)  # sqrt of eigenvalues
    lam[0, 0] = 0.0  # zero-mean field, as in the reference generator
    xi = rng.standard_normal((count, n, n))
    return np.einsum("ik,bkl,jl->bij", phi, xi * lam, phi, optimize=True)


# --- Burgers ----------------------------------------------------------------------------------------------------
def grf_periodic(n: int, count: int, rng: np.random.Generator, sigma: float = 25.0, tau: float = 5.0,
                 alpha: float = 2.0) -> np.ndarray:
    """``count`` samples of N(0, sigma^2 (-Laplacian + tau^2)^(-alpha)) on n points of the periodic [0,1), mean
    zero (sigma = 25 -> covariance 625 (-Laplacian + 25)^(-2), the FNO paper's Burgers initial law)."""
    m = n // 2
    k = np.arange(1, m)
    sd = sigma * (4 * np.pi ** 2 * k ** 2 + tau ** 2) ** (-alpha / 2.0)
    coef = np.zeros((count, m + 1), dtype=np.complex128)
    coef[:, 1:m] = sd * (rng.standard_normal((count, m - 1)) + 1j * rng.standard_normal((count, m - 1)))
    # u = sum_k sqrt(2) sd_k (xi_k cos 2 pi k x + eta_k sin 2 pi k x) (orthonormal eigenfunctions); irfft puts 2/n
    # on every mode pair, hence the factor n / sqrt(2)
    return np.fft.irfft(coef * (n / np.sqrt(2)), n=n)


class BurgersETDRK4:
    """Batched pseudo-spectral ETDRK4 integrator of u_t + (u^2/2)_x = nu u_xx on periodic [0, length)."""

    def __init__(self, n: int, nu: float, dt: float, length: float = 1.0, contour_points: int = 64):
        if n < 8 or n % 2:
            raise ValueError(f"n must be even and >= 8, got {n}")
        if nu <= 0 or dt <= 0:
            raise ValueError(f"nu and dt must be positive, got nu={nu}, dt={dt}")
        self.n, self.nu, self.dt = n, nu, dt
        self.k = 2 * np.pi / length * np.arange(n // 2 + 1)
        self.dealias = np.arange(n // 2 + 1) <= n // 3  # the 2/3 rule
        lin = -nu * self.k ** 2
        self.E, self.E2 = np.exp(dt * lin), np.exp(dt * lin / 2)
        r = np.exp(1j * np.pi * (np.arange(1, contour_points + 1) - 0.5) / contour_points)
        lr = dt * lin[:, None] + r[None, :]
        self.Q = dt * np.real(np.mean((np.exp(lr / 2) - 1) / lr, axis=1))
        self.f1 = dt * np.real(np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr ** 2)) / lr ** 3, axis=1))
        self.f2 = dt * np.real(np.mean((2 + lr + np.exp(lr) * (lr - 2)) / lr ** 3, axis=1))
        self.f3 = dt * np.real(np.mean((-4 - 3 * lr - lr ** 2 + np.exp(lr) * (4 - lr)) / lr ** 3, axis=1))

    def _nonlinear(self, v: np.ndarray) -> np.ndarray:
        u = np.fft.irfft(v * self.dealias, n=self.n)
        return -0.5j * self.k * np.fft.rfft(u * u) * self.dealias

    def solve(self, u0: np.ndarray, t_end: float) -> np.ndarray:
        """u(., t_end) for initial values ``u0`` (batch, n); t_end is rounded to a whole number of steps."""
        v = np.fft.rfft(np.asarray(u0, dtype=np.float64), axis=-1)
        for _ in range(int(round(t_end / self.dt))):
            nv = self._nonlinear(v)
            a = self.E2 * v + self.Q * nv
            na = self._nonlinear(a)
            b = self.E2 * v + self.Q * na
            nb = self._nonlinear(b)
            c = self.E2 * a + self.Q * (2 * nb - nv)
            nc = self._nonlinear(c)
            v = self.E * v + nv * self.f1 + 2 * (na + nb) * self.f2 + nc * self.f3
        return np.fft.irfft(v, n=self.n)


def burgers_cole_hopf(u0_potential_amp: float, nu: float, t: float, x: np.ndarray, n_fine: int = 4096) -> tuple:
    """Closed-form check (Cole-Hopf): for u0 = A sin(2 pi x), phi0 = exp(A cos(2 pi x) / (4 pi nu)) solves the heat
    equation phi_t = nu phi_xx exactly in Fourier space, and u = -2 nu phi_x / phi. Returns (u0(x), u(x, t))."""
    xf = np.arange(n_fine) / n_fine
    phi0 = np.exp(u0_potential_amp * np.cos(2 * np.pi * xf) / (4 * np.pi * nu))
    k = 2 * np.pi * np.fft.rfftfreq(n_fine, d=1.0 / n_fine)
    c = np.fft.rfft(phi0) * np.exp(-nu * k ** 2 * t)
    # evaluate the Fourier series of phi and phi_x at arbitrary x (exact trigonometric interpolation)
    m = np.arange(len(k))
    w = np.where((m == 0) | (m == n_fine // 2), 1.0, 2.0) / n_fine
    e = np.exp(1j * np.outer(x, k))
    phi = np.real(e @ (w * c))
    phi_x = np.real(e @ (w * 1j * k * c))
    return u0_potential_amp * np.sin(2 * np.pi * x), -2 * nu * phi_x / phi


# --- data sets + cache ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DarcyConfig:
    n: int = 32
    count: int = 600
    seed: int = 0
    tau: float = 3.0
    alpha: float = 2.0
    a_pos: float = 12.0
    a_neg: float = 3.0
    f: float = 1.0

    def tag(self) -> str:
        return (f"darcy_n{self.n}_N{self.count}_seed{self.seed}_tau{self.tau:g}_alpha{self.alpha:g}"
                f"_a{self.a_pos:g}-{self.a_neg:g}_f{self.f:g}")


@dataclass(frozen=True)
class BurgersConfig:
    n: int = 128
    n_solve: int = 512
    count: int = 600
    seed: int = 0
    nu: float = 0.01
    t_end: float = 1.0
    dt: float = 5e-4
    sigma: float = 25.0
    tau: float = 5.0

    def tag(self) -> str:
        return (f"burgers_n{self.n}_solve{self.n_solve}_N{self.count}_seed{self.seed}_nu{self.nu:g}_T{self.t_end:g}"
                f"_dt{self.dt:g}_sigma{self.sigma:g}_tau{self.tau:g}")


def generate_darcy(cfg: DarcyConfig) -> tuple[np.ndarray, np.ndarray]:
    """(a, u) float32 arrays of shape (count, n, n)."""
    rng = np.random.default_rng(cfg.seed)
    mu = grf_cosine(cfg.n, cfg.count, rng, cfg.tau, cfg.alpha)
    a = np.where(mu >= 0, cfg.a_pos, cfg.a_neg)
    u = np.stack([solve_darcy(ai, cfg.f) for ai in a])
    return a.astype(np.float32), u.astype(np.float32)


def generate_burgers(cfg: BurgersConfig, chunk: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(u0, uT) float32 arrays of shape (count, n)."""
    if cfg.n_solve % cfg.n:
        raise ValueError(f"n_solve ({cfg.n_solve}) must be a multiple of n ({cfg.n})")
    rng = np.random.default_rng(cfg.seed)
    u0 = grf_periodic(cfg.n_solve, cfg.count, rng, cfg.sigma, cfg.tau)
    solver = BurgersETDRK4(cfg.n_solve, cfg.nu, cfg.dt)
    ut = np.concatenate([solver.solve(u0[i:i + chunk], cfg.t_end) for i in range(0, cfg.count, chunk)])
    step = cfg.n_solve // cfg.n
    return u0[:, ::step].astype(np.float32), ut[:, ::step].astype(np.float32)


def load(cfg: DarcyConfig | BurgersConfig, cache_dir: Path | str | None = DEFAULT_CACHE) -> tuple[np.ndarray, np.ndarray]:
    """The data set of ``cfg``: read from ``cache_dir/<tag>.npz`` when present, else generated and saved there
    (``cache_dir=None``: never cached)."""
    gen = generate_darcy if isinstance(cfg, DarcyConfig) else generate_burgers
    if cache_dir is None:
        return gen(cfg)
    path = Path(cache_dir) / f"{cfg.tag()}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["x"], z["y"]
    x, y = gen(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, x=x, y=y, config=json.dumps(asdict(cfg)),
             checksum=hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest())
    os.replace(tmp, path)
    return x, y
