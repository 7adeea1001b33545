"""Logistic regression with the nonconvex regulariser of the EF21 experiments, split over n clients.

The logistic-regression experiments of EF21 (Richtarik, Sokolov, Fatkhullin, arXiv 2106.05203) and
its follow-ups (arXiv 2110.03294, 2402.10774) minimise f(x) = (1/n) sum_i f_i(x) with

    f_i(x) = (1/N_i) sum_j log(1 + exp(-y_j a_j^T x)) + lam sum_k x_k^2 / (1 + x_k^2),

and client i owning a contiguous block of rows. The global objective is the *unweighted* client mean,
as in the official code. Everything is float64 and vectorised over clients: one sparse ``A @ x`` and
one sparse product with the block-diagonal ``blockdiag(A_1, ..., A_n)^T`` give all n local
gradients. The LIBSVM matrices are 4-44% non-zero, and the CSR products were faster than dense BLAS
on all four files (1.2x on phishing, 3x on mushrooms, 7-15x on a9a and w8a, measured); the results
agree with the dense formulas to round-off.

Smoothness: the logistic Hessian is bounded by A_i^T A_i / (4 N_i)
and the regulariser's second derivative lies in [-0.5, 2] (max 2 at 0), so
L_i = lambda_max(A_i^T A_i / (4 N_i)) + 2 lam; L is the same formula on the whole data set (as the
official code computes it); L_QM = sqrt(mean L_i^2) and L_AM = mean L_i.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

LAMBDA = 0.1  # regularisation strength of the EF21 experiments


@dataclass(frozen=True)
class Smoothness:
    L: float               # noqa: N815 — the papers' names
    L_i: tuple[float, ...]  # noqa: N815
    L_QM: float            # noqa: N815
    L_AM: float            # noqa: N815


@dataclass(frozen=True, eq=False)
class LogregProblem:
    """Rows ``a [N, d]``, labels ``y [N]`` in {-1, +1}, client row boundaries ``offsets [n + 1]``."""

    a: np.ndarray
    y: np.ndarray
    offsets: np.ndarray
    lam: float = LAMBDA
    sizes: np.ndarray = field(init=False, repr=False)       # rows per client [n]
    row_client: np.ndarray = field(init=False, repr=False)  # owning client of each row [N]
    _mean_weights: np.ndarray = field(init=False, repr=False)  # 1 / N_i of each row's client [N]
    _csr: sp.csr_matrix = field(init=False, repr=False)        # A [N, d]
    _blocks_t: sp.csr_matrix = field(init=False, repr=False)   # blockdiag(A_1..A_n)^T [n d, N]

    def __post_init__(self) -> None:
        if self.a.ndim != 2 or self.y.shape != (self.a.shape[0],):
            raise ValueError(f"a must be [N, d] and y [N], got {self.a.shape} and {self.y.shape}")
        off = np.asarray(self.offsets)
        if off[0] != 0 or off[-1] != len(self.y) or np.any(np.diff(off) <= 0):
            raise ValueError(f"offsets must rise strictly from 0 to N={len(self.y)}, got {off.tolist()}")
        sizes = np.diff(off)
        row_client = np.repeat(np.arange(len(sizes)), sizes)
        object.__setattr__(self, "sizes", sizes)  # frozen dataclass: derived fields set once here
        object.__setattr__(self, "row_client", row_client)
        object.__setattr__(self, "_mean_weights", 1.0 / sizes[row_client])
        csr = sp.csr_matrix(self.a)
        cols = csr.indices + np.repeat(row_client, np.diff(csr.indptr)) * self.d  # a_j into block client(j)
        blocks = sp.csr_matrix((csr.data, cols, csr.indptr), shape=(len(self.y), len(sizes) * self.d))
        object.__setattr__(self, "_csr", csr)
        object.__setattr__(self, "_blocks_t", blocks.T.tocsr())

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    @property
    def d(self) -> int:
        return self.a.shape[1]

    # -- values and gradients -------------------------------------------------------------------

    def client_losses(self, x: np.ndarray) -> np.ndarray:
        """f_i(x) for every client ``[n]``."""
        z = self.y * (self._csr @ x)
        data = np.bincount(self.row_client, weights=np.logaddexp(0.0, -z), minlength=self.n) / self.sizes
        return data + self.lam * float(np.sum(x * x / (1.0 + x * x)))

    def loss(self, x: np.ndarray) -> float:
        return float(self.client_losses(x).mean())

    def scores(self, x: np.ndarray) -> np.ndarray:
        """d/dz of log(1 + exp(-z)) at z = y a^T x, times y: ``-y expit(-y a^T x)`` ``[N]``."""
        return -self.y * expit(-self.y * (self._csr @ x))

    def client_grads(self, x: np.ndarray, row_weights: np.ndarray | None = None,
                     scores: np.ndarray | None = None) -> np.ndarray:
        """Local gradients ``[n, d]``. ``row_weights [N]`` replaces the 1/N_i average (a minibatch
        gradient gives 1/tau_i to the sampled rows and 0 elsewhere); ``scores`` reuses ``scores(x)``."""
        s = self.scores(x) if scores is None else scores
        w = self._mean_weights if row_weights is None else row_weights
        reg = self.lam * 2.0 * x / (1.0 + x * x) ** 2
        return self.segment_sums(s * w) + reg

    def grad(self, x: np.ndarray) -> np.ndarray:
        """Gradient of the unweighted client mean f."""
        return self.client_grads(x).mean(0)

    def segment_sums(self, r: np.ndarray) -> np.ndarray:
        """``[n, d]`` with row i = sum over client i's rows j of r_j a_j."""
        return (self._blocks_t @ r).reshape(self.n, self.d)

    # -- constants --------------------------------------------------------------------------------

    def smoothness(self) -> Smoothness:
        return self._smoothness

    @functools.cached_property
    def _smoothness(self) -> Smoothness:  # computed once per problem (eigvalsh of d x d matrices)
        l_i = tuple(_logistic_bound(self.a[lo:hi]) + 2.0 * self.lam
                    for lo, hi in zip(self.offsets[:-1], self.offsets[1:]))
        arr = np.asarray(l_i)
        return Smoothness(L=_logistic_bound(self.a) + 2.0 * self.lam, L_i=l_i,
                          L_QM=math.sqrt(float(np.mean(arr ** 2))), L_AM=float(np.mean(arr)))


def _logistic_bound(a: np.ndarray) -> float:
    """lambda_max(A^T A / (4 N)) with a symmetric eigensolver on the d x d matrix."""
    return float(np.linalg.eigvalsh(a.T @ a / (4.0 * a.shape[0]))[-1])
