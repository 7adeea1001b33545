"""Sensitivity of a factor C under a participation schema.

``sens(C) = sup_π sup_{‖g_i‖≤1} ‖Σ_{i∈π} C[:, i] g_iᵀ‖_F``. With ``X = CᵀC``,
``1ᵀX_π1 ≤ sens² ≤ Σ_{i,j∈π} |X_ij|``: the left side is reached with equal g_i, the right is
BandMF's bound (Choquette-Choo et al., NeurIPS 2023, arXiv 2306.08153, Eq. 5). Both coincide when
X_π ≥ 0 or X_π is diagonal, so every function here returns the (always valid) upper bound and
whether it is *exact* (matched by an explicit pattern to 1e-12 relative).

Orientation: X = CᵀC with C lower-triangular (or the tree's node × step matrix); columns = steps.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

from .patterns import ParticipationSchema

_RTOL = 1e-12


class Sensitivity(NamedTuple):
    squared: float  # upper bound on sens²
    exact: bool  # a pattern attains it (to 1e-12 relative)

    @property
    def value(self) -> float:
        return float(np.sqrt(self.squared))


def _result(upper: float, lower: float) -> Sensitivity:
    return Sensitivity(float(upper), bool(upper - lower <= _RTOL * max(abs(upper), 1e-300)))


def gram(C: np.ndarray) -> np.ndarray:
    """X = CᵀC [n, n]."""
    return C.T @ C


def pattern_bounds(X: np.ndarray, pattern) -> tuple[float, float]:
    """(lower 1ᵀX_π1, upper Σ|X_π|) for one participation set π."""
    idx = np.asarray(pattern, dtype=np.int64)
    sub = X[np.ix_(idx, idx)]
    return float(sub.sum()), float(np.abs(sub).sum())


def fixed_epoch_squared(X: np.ndarray, k: int, b: int) -> Sensitivity:
    """(k, b) fixed-epoch order: only the b classes {j, j+b, …} are candidates (ME-MF,
    arXiv 2211.06530, §2; jax_privacy ``sensitivity.fixed_epoch_sensitivity``). Steps >= n are
    dropped, so a prefix (n < k·b) is handled too."""
    n = X.shape[0]
    lo = hi = 0.0
    for j in range(min(b, n)):
        low, up = pattern_bounds(X, list(range(j, n, b))[:k])
        lo, hi = max(lo, low), max(hi, up)
    return _result(hi, lo)


def max_separated_sum(x: np.ndarray, k: int, b: int) -> np.ndarray:
    """max Σ_{i∈π} x[..., i] over index sets with |π| ≤ k and gaps ≥ b, for x ≥ 0 [R, n] or [n].

    The O(n·k) dynamic program of BandMF Alg. 3 ("VecSens", arXiv 2306.08153), vectorised over
    rows: ``F_i[j] = max(F_{i+1}[j], x_i + F_{i+b}[j−1])`` with F = best over indices ≥ i, j picks.
    """
    x = np.atleast_2d(x)
    R, n = x.shape
    zero = np.zeros((k + 1, R))
    window: deque = deque([zero] * b, maxlen=b)  # window[0] = F_{i+b}, window[-1] = F_{i+1}
    for i in range(n - 1, -1, -1):
        nxt, far = window[-1], window[0]
        F = nxt.copy()
        F[1:] = np.maximum(nxt[1:], x[:, i][None, :] + far[:-1])
        window.append(F)
    return window[-1][k]


def _argmax_separated(x: np.ndarray, k: int, b: int) -> list[int]:
    """One maximising index set of :func:`max_separated_sum` for a single vector x [n]."""
    n = len(x)
    F = np.zeros((n + b + 1, k + 1))
    for i in range(n - 1, -1, -1):
        F[i] = F[i + 1]
        F[i, 1:] = np.maximum(F[i + 1, 1:], x[i] + F[i + b, :-1])
    out, i, j = [], 0, k
    while i < n and j > 0:
        if F[i, j] > F[i + 1, j]:
            out.append(i)
            i, j = i + b, j - 1
        else:
            i += 1
    return out


def min_separation_squared(X: np.ndarray, k: int, b: int) -> Sensitivity:
    """b-min-separation with at most k participations (BandMF, arXiv 2306.08153).

    If X_ij = 0 whenever |i − j| ≥ b (e.g. C with ≤ b bands), participations are orthogonal and
    ``sens² = max_π Σ_{i∈π} X_ii`` exactly (Alg. 3). Otherwise the valid upper bound of Alg. 4:
    the DP per row on |X|, then the DP on the row maxima; exactness is then checked against the
    DP's own pattern and the Toeplitz worst case {j, j+b, …} (BSR paper, Thm 2).
    """
    n = X.shape[0]
    i, j = np.indices(X.shape)
    far = np.abs(i - j) >= b
    scale = np.abs(np.diag(X)).max()
    diag = np.clip(np.diag(X), 0.0, None)
    if not np.any(np.abs(X[far]) > _RTOL * scale):
        return Sensitivity(float(max_separated_sum(diag, k, b)[0]), True)
    rows = max_separated_sum(np.abs(X), k, b)  # [n]
    upper = float(max_separated_sum(rows, k, b)[0])
    candidates = [_argmax_separated(rows, k, b)] + [list(range(s, n, b))[:k] for s in range(min(b, n))]
    lower = max(pattern_bounds(X, p)[0] for p in candidates if p)
    return _result(upper, lower)


def toeplitz_min_separation_squared(coefs: np.ndarray, n: int, k: int, b: int) -> float:
    """Lower-triangular Toeplitz C with non-negative, non-increasing coefficients under
    b-min-separation (or fixed-epoch, n = k·b): the worst case is k participations b apart
    from step 0, ``sens² = ‖C·(e_0 + e_b + … )‖²`` (Kalinin & Lampert, NeurIPS 2024, BSR,
    arXiv 2405.13763, Thm 2; jax_privacy ``toeplitz.minsep_sensitivity_squared``). O(n·k)."""
    c = np.asarray(coefs, dtype=np.float64)[:n]
    if np.any(c < 0) or np.any(np.diff(c) > 1e-15 * abs(c[0])):
        raise ValueError("the Toeplitz min-separation formula needs non-negative, non-increasing coefficients")
    c = np.concatenate([c, np.zeros(n - len(c))])
    col = np.zeros(n)
    for s in range(0, min(k * b, n), b):
        col[s:] += c[: n - s]
    return float(col @ col)


def sensitivity_squared(X: np.ndarray, schema: ParticipationSchema) -> Sensitivity:
    """Dispatch on the schema; single participation is the max column norm (exact)."""
    n = X.shape[0]
    if n != schema.steps:
        raise ValueError(f"factor has {n} steps but the schema has {schema.steps}")
    return squared_for_pattern(X, schema.kind, schema.participations, schema.separation)


def squared_for_pattern(X: np.ndarray, kind: str, k: int, b: int) -> Sensitivity:
    """Squared sensitivity of Gram X (any number of steps) under k participations, separation b."""
    if k == 1:
        return Sensitivity(float(np.diag(X).max()), True)
    if kind == "fixed-epoch":
        return fixed_epoch_squared(X, k, b)
    return min_separation_squared(X, k, b)


def brute_force_squared(X: np.ndarray, schema: ParticipationSchema) -> Sensitivity:
    """Enumerate every allowed participation set (use for n <= ~12 only)."""
    lo = hi = 0.0
    for p in schema.patterns():
        low, up = pattern_bounds(X, p)
        lo, hi = max(lo, low), max(hi, up)
    return _result(hi, lo)
