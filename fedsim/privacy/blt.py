"""Buffered linear Toeplitz (BLT) factors (Dvijotham, McMahan, Pillutla, Steinke, Thakurta,
"Efficient and near-optimal noise generation for streaming DP", FOCS 2024, arXiv 2404.16706, §5;
multi-participation: McMahan, Xu, Zhang, EMNLP Industry 2024, arXiv 2408.08868, §3).

C is lower-triangular Toeplitz with ``c_0 = 1`` and ``c_t = Σ_j ω_j·θ_j^(t−1)`` (t ≥ 1) for m
buffers (decays θ, output scales ω); its inverse is streamed with m buffers (see noise.py).
We optimise (θ, ω) for ``loss = sens² · mean error`` with L-BFGS-B on torch float64 autograd,
restricted to θ ∈ (0, 1), ω > 0, Σω < 1: the coefficients are then non-negative and
non-increasing, so the Toeplitz min-separation sensitivity (BSR Thm 2) is exact. With one
participation this is within ~0.1% of the best Toeplitz loss (n = 64, 256); with several,
signed ω could do better (the best non-increasing Toeplitz factor is ~8–11% lower in loss at
n = 64–256, k = 4–8), which this parameterization cannot reach.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .dense import torch_threads
from .patterns import ParticipationSchema
from .workloads import is_prefix_sum


def blt_coefs(theta, omega, n: int) -> np.ndarray:
    """Toeplitz coefficients c [n] of a BLT."""
    theta, omega = np.asarray(theta, dtype=np.float64), np.asarray(omega, dtype=np.float64)
    t = np.arange(n - 1)
    return np.concatenate([[1.0], (omega[:, None] * theta[:, None] ** t[None, :]).sum(axis=0)])


def blt_sensitivity_squared(theta, omega, n: int) -> float:
    """Single participation, closed form (arXiv 2404.16706, Lemma 5.3):
    ``1 + Σ_{j,k} ω_j ω_k (1 − (θ_jθ_k)^(n−1)) / (1 − θ_jθ_k)`` = Σ_{t<n} c_t²."""
    theta, omega = np.asarray(theta, dtype=np.float64), np.asarray(omega, dtype=np.float64)
    p = theta[:, None] * theta[None, :]
    return float(1.0 + (omega[:, None] * omega[None, :] * (1 - p ** (n - 1)) / (1 - p)).sum())


def _unpack(x: torch.Tensor, m: int):
    theta = torch.exp(-torch.exp(x[:m]))  # x[:m] = −log(time scale); no saturation near 0 or 1
    omega = torch.softmax(torch.cat([x[m:], x.new_zeros(1)]), 0)[:m]  # ω > 0, Σω < 1
    return theta, omega


def _loss_fn(A: np.ndarray, schema: ParticipationSchema, m: int):
    n = schema.steps
    prefix = is_prefix_sum(A)
    A_t = torch.as_tensor(A)
    i, j = np.indices((n, n))
    lag = torch.as_tensor(np.clip(i - j, 0, None))
    lower = torch.as_tensor((i >= j).astype(np.float64))
    e0 = torch.zeros(n, 1, dtype=torch.float64)
    e0[0] = 1.0
    u = torch.zeros(n, dtype=torch.float64)  # worst pattern of a non-increasing Toeplitz C
    u[0: min(schema.participations * schema.separation, n): schema.separation] = 1.0
    powers = torch.arange(n - 1, dtype=torch.float64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        theta, omega = _unpack(x, m)
        c = torch.cat([x.new_ones(1), (omega[:, None] * theta[:, None] ** powers[None, :]).sum(0)])
        C = c[lag] * lower
        if prefix:  # B = tri·C⁻¹ is Toeplitz: only C⁻¹'s first column is needed (O(n²))
            d = torch.linalg.solve_triangular(C, e0, upper=False)[:, 0]
            mean_err = torch.cumsum(torch.cumsum(d, 0) ** 2, 0).mean()
        else:
            W = torch.linalg.solve_triangular(C, torch.eye(n, dtype=torch.float64), upper=False)
            mean_err = ((A_t @ W) ** 2).sum() / n
        sens2 = (c * c).sum() if schema.participations == 1 else ((C @ u) ** 2).sum()
        return sens2 * mean_err

    return loss


def optimize_blt(A: np.ndarray, schema: ParticipationSchema, buffers: int = 4, max_iter: int = 1000,
                 threads: int | None = 1):
    """Optimise an m-buffer BLT for workload A under ``schema``.

    Returns (theta [m], omega [m], info: method, iterations, objective, grad_norm, converged,
    seconds). Decays start log-spaced over time scales 1..n.
    """
    if buffers < 1:
        raise ValueError(f"buffers must be >= 1, got {buffers}")
    start = time.perf_counter()
    n, m = schema.steps, buffers
    loss = _loss_fn(A, schema, m)
    tau = np.geomspace(1.0, max(float(n), 2.0), m)
    x0 = np.concatenate([-np.log(tau), np.full(m, -np.log(m))])  # θ_j = exp(−1/τ_j), Σω = 1/2

    def fun(x):
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        val = loss(xt)
        (g,) = torch.autograd.grad(val, xt)
        return val.item(), g.numpy().astype(np.float64)

    with torch_threads(threads):
        from scipy.optimize import minimize  # scipy loads on first use (start-up time)

        res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-10})
        theta, omega = (v.detach().numpy() for v in _unpack(torch.tensor(res.x), m))
    info = {"method": "L-BFGS-B (scipy, torch autograd)", "iterations": int(res.nit),
            "objective": float(res.fun), "grad_norm": float(np.linalg.norm(res.jac)),
            "converged": bool(res.success), "stop": str(res.message),
            "seconds": round(time.perf_counter() - start, 4)}
    return theta, omega, info
