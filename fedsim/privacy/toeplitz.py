"""Lower-triangular Toeplitz factors: C[i, j] = c_{i−j}.

Square-root factorization (Fichtenberger, Henzinger, Upadhyay, ICML 2023, arXiv 2202.11205,
§3): ``c_0 = 1, c_k = c_{k−1}·(2k−1)/(2k)`` = the coefficients of (1 − x)^{−1/2}, so
``C·C = tri(n)`` and, for prefix sums, ``B = C``. Closed forms (single participation):
``sens² = Σ_{k<n} c_k²``, ``error_t = Σ_{k≤t} c_k²``, ``max error = sens²``.
"""

from __future__ import annotations

import numpy as np

from .patterns import ParticipationSchema
from .sensitivity import toeplitz_min_separation_squared


def sqrt_coefs(n: int) -> np.ndarray:
    """The first n square-root Toeplitz coefficients [n]: 1, 0.5, 0.375, 0.3125, …"""
    k = np.arange(1, n)
    return np.concatenate([[1.0], np.cumprod((2 * k - 1) / (2 * k))])


def toeplitz_matrix(coefs: np.ndarray, n: int | None = None) -> np.ndarray:
    """Lower-triangular Toeplitz [n, n] with first column ``coefs`` (zero-padded to n)."""
    c = np.asarray(coefs, dtype=np.float64)
    n = len(c) if n is None else n
    c = np.concatenate([c[:n], np.zeros(max(0, n - len(c)))])
    i, j = np.indices((n, n))
    return np.where(i >= j, c[np.clip(i - j, 0, None)], 0.0)


def is_nonincreasing_nonnegative(coefs: np.ndarray) -> bool:
    c = np.asarray(coefs, dtype=np.float64)
    return bool(np.all(c >= 0) and np.all(np.diff(c) <= 1e-15 * abs(c[0])))


def toeplitz_sensitivity_squared(coefs: np.ndarray, schema: ParticipationSchema) -> float | None:
    """Exact sens² for a Toeplitz factor, or None if no closed form applies.

    Single participation: the first column is the longest, ``Σ_{t<n} c_t²``. Several
    participations (min-separation, or fixed-epoch with n = k·b): the BSR theorem
    (:func:`fedsim.privacy.sensitivity.toeplitz_min_separation_squared`), which needs
    non-negative, non-increasing coefficients.
    """
    c = np.asarray(coefs, dtype=np.float64)[: schema.steps]
    if schema.participations == 1:
        return float(c @ c)
    if not is_nonincreasing_nonnegative(c):
        return None
    return toeplitz_min_separation_squared(c, schema.steps, schema.participations, schema.separation)
