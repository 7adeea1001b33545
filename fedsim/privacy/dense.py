"""Optimal dense (and banded) factors: minimise ``tr(AᵀA·X⁻¹)`` over Gram matrices ``X = CᵀC``.

Multi-epoch "orthogonal" formulation (Choquette-Choo, McMahan, Rush, Thakurta, ICML 2023,
arXiv 2211.06530, §4, Eq. 4 with the dual of Thm 3 replaced by a primal solve, as in jax_privacy
``dense.optimize``): entries of X that can meet in one participation pattern are fixed at 0
(i ≡ j mod b for fixed-epoch; |i − j| ≥ b for b-min-separation), so the sensitivity is exact, and
each pattern's diagonal sum is fixed at 1. BandMF (Choquette-Choo et al., NeurIPS 2023,
arXiv 2306.08153, §3, Eq. 6) adds the mask |i − j| < bands. The objective is convex on the
positive-definite cone; we run projected L-BFGS (Nocedal & Wright, Alg. 7.4) on the affine
subspace with an Armijo backtracking line search that keeps X positive definite. Cost per
iteration O(n³) (one Cholesky, one inverse, two products): n = 256 solves in seconds.

``fixed_point`` is the single-participation iteration of Denisov, McMahan, Rush, Smith,
Thakurta (NeurIPS 2022, arXiv 2202.08312, Thm 3.2 / Alg. 1), kept as an independent check.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np
import torch


def _objective(M: torch.Tensor, X: torch.Tensor):
    """(f = tr(M X⁻¹), X⁻¹); (inf, None) if X is not positive definite."""
    L, info = torch.linalg.cholesky_ex(X)
    if int(info) != 0:
        return math.inf, None
    Xinv = torch.cholesky_inverse(L)
    return float(torch.vdot(M.reshape(-1), Xinv.reshape(-1))), Xinv


def _gradient(M: torch.Tensor, Xinv: torch.Tensor) -> torch.Tensor:
    """∇ tr(M X⁻¹) = −X⁻¹ M X⁻¹ (symmetrised)."""
    G = Xinv @ M @ Xinv
    return -0.5 * (G + G.T)


def _projector(mask: np.ndarray, groups: np.ndarray):
    """Orthogonal projection onto {masked symmetric S with Σ_{i∈g} S_ii = 0 for every group g}."""
    _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    mask_t = torch.as_tensor(mask, dtype=torch.float64)
    inv_t, counts_t = torch.as_tensor(inv), torch.as_tensor(counts, dtype=torch.float64)

    def project(G: torch.Tensor) -> torch.Tensor:
        G = G * mask_t
        d = torch.diagonal(G)
        means = torch.zeros(len(counts_t), dtype=G.dtype).index_add_(0, inv_t, d) / counts_t
        d -= means[inv_t]  # a view: edits G's diagonal in place
        return G

    return project


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.vdot(a.reshape(-1), b.reshape(-1)))


@contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op threads (None: leave as is). Small dense linear algebra
    runs fastest single-threaded, and multi-threaded BLAS thrashes on a loaded machine."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def optimize_gram(M: np.ndarray, mask: np.ndarray, groups: np.ndarray, *, max_iter: int = 5000,
                  gtol: float = 1e-6, memory: int = 10, X0: np.ndarray | None = None,
                  threads: int | None = 1):
    """Minimise ``tr(M X⁻¹)`` s.t. X ≻ 0, X = X ⊙ mask, Σ_{i∈g} X_ii = 1 per group.

    Runs in torch float64 on the CPU with ``threads`` intra-op threads. Stops when the relative
    projected gradient ``‖∇‖_F·‖X‖_F / f`` is below ``gtol`` (1e-6 puts f within ~1e-13 of the
    optimum at n = 256), when f stalls at machine precision, or after ``max_iter``.
    Returns (X [n, n] numpy, info: method, iterations, objective, grad_norm, rel_grad,
    converged, stop, seconds).
    """
    with torch_threads(threads):
        return _lbfgs(M, mask, groups, max_iter, gtol, memory, X0)


def _lbfgs(M, mask, groups, max_iter, gtol, memory, X0):
    start = time.perf_counter()
    project = _projector(mask, groups)
    M_t = torch.as_tensor(M, dtype=torch.float64)
    if X0 is None:
        _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
        X0 = np.diag(1.0 / counts[inv])
    X = torch.as_tensor(X0, dtype=torch.float64).clone()
    f, Xinv = _objective(M_t, X)
    if Xinv is None:
        raise ValueError("initial X is not positive definite")
    g = project(_gradient(M_t, Xinv))
    hist: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    stalled, it, reason, rel = 0, 0, "max_iter", math.inf
    for it in range(1, max_iter + 1):
        gnorm, xnorm = float(torch.linalg.norm(g)), float(torch.linalg.norm(X))
        rel = gnorm * xnorm / f
        if rel <= gtol:
            reason = "gradient"
            break
        q, alphas = g.clone(), []  # two-loop recursion; every iterate stays feasible
        for s, y, rho in reversed(hist):
            a = rho * _dot(s, q)
            q.add_(y, alpha=-a)
            alphas.append(a)
        q.mul_(_dot(hist[-1][0], hist[-1][1]) / _dot(hist[-1][1], hist[-1][1]) if hist
               else 0.1 * xnorm / gnorm)  # first step: a small move relative to X
        for (s, y, rho), a in zip(hist, reversed(alphas)):
            q.add_(s, alpha=a - rho * _dot(y, q))
        p = -project(q)
        slope = _dot(g, p)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            hist.clear()
            p, slope = g * (-0.1 * xnorm / gnorm), -0.1 * xnorm * gnorm
        step = 1.0
        for _ in range(60):  # Armijo backtracking inside the positive-definite cone
            X_new = X + step * p
            f_new, Xinv = _objective(M_t, X_new)
            if Xinv is not None and f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            reason = "line search"  # no further decrease representable in float64
            break
        g_new = project(_gradient(M_t, Xinv))
        s, y = X_new - X, g_new - g
        sy = _dot(s, y)
        if sy > 1e-16 * float(torch.linalg.norm(s) * torch.linalg.norm(y)):
            hist = (hist + [(s, y, 1.0 / sy)])[-memory:]
        stalled = stalled + 1 if f - f_new <= 1e-15 * abs(f) else 0
        X, f, g = X_new, f_new, g_new
        if stalled >= 10:
            reason = "stalled"
            break
    X = 0.5 * (X + X.T)
    info = {"method": "projected L-BFGS", "iterations": it, "objective": f,
            "grad_norm": float(torch.linalg.norm(g)), "rel_grad": rel,
            "converged": reason != "max_iter", "stop": reason,
            "seconds": round(time.perf_counter() - start, 4)}
    return X.numpy(), info


def pattern_mask(n: int, kind: str, k: int, b: int, bands: int | None = None):
    """(mask [n, n] bool, groups [n]) of the orthogonal formulation for a schema.

    Single participation (k = 1): no zeros, diag X = 1. Fixed-epoch: X_ij = 0 for i ≡ j (mod b),
    i ≠ j; groups = residue classes (each class's diagonal sums to 1). Min-separation: equal
    column norms and X_ij = 0 for |i − j| ≥ b, or, if ``bands`` is given, for |i − j| ≥ bands
    (bands > b is then not orthogonal and its sensitivity only an upper bound).
    """
    i, j = np.indices((n, n))
    mask = np.ones((n, n), dtype=bool)
    groups = np.arange(n)
    if k > 1 and kind == "fixed-epoch":
        mask &= ((i - j) % b != 0) | (i == j)
        groups = np.arange(n) % b
    elif k > 1 and bands is None:
        mask &= np.abs(i - j) < b
    if bands is not None:
        mask &= np.abs(i - j) < bands
    return mask, groups


def fixed_point(A: np.ndarray, max_iter: int = 100000, tol: float = 1e-12):
    """Single-participation optimum of Denisov et al. (arXiv 2202.08312, Alg. 1): iterate
    ``v ← diag((D^½ AᵀA D^½)^½)`` with D = diag(v); X = D^−½ (D^½ AᵀA D^½)^½ D^−½ has diag 1.
    Converges linearly (≈ 140 iterations at n = 16; slow for n in the hundreds)."""
    from scipy.linalg import eigh  # scipy loads on first use (start-up time)

    M = A.T @ A
    v = np.ones(len(M))
    for it in range(1, max_iter + 1):
        r = np.sqrt(v)
        w, Q = eigh(r[:, None] * M * r[None, :])
        S = (Q * np.sqrt(np.clip(w, 0, None))) @ Q.T
        v_new = np.diag(S).copy()
        if np.max(np.abs(v_new - v)) <= tol:
            v = v_new
            break
        v = v_new
    r = np.sqrt(v)
    w, Q = eigh(r[:, None] * M * r[None, :])
    S = (Q * np.sqrt(np.clip(w, 0, None))) @ Q.T
    X = S / r[:, None] / r[None, :]
    return 0.5 * (X + X.T), {"method": "fixed point", "iterations": it}
