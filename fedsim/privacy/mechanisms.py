"""Build a factorization ``A = B·C`` by mechanism name (the planner's registry).

| name | C | paper |
|---|---|---|
| identity | I (DP-SGD / DP-FedAvg, no correlation) | Abadi et al., arXiv 1607.00133, Alg. 1 |
| tree | binary-tree node matrix, restarted every epoch (DP-FTRL) | Kairouz et al., arXiv 2103.00039, Alg. 1, §4 |
| tree-honaker | the same tree with Honaker's online estimator | Honaker 2015; arXiv 2103.00039, App. D |
| sqrt-toeplitz | Toeplitz square root of tri(n) | Fichtenberger et al., arXiv 2202.11205, §3 |
| optimal | dense optimum of the (multi-epoch) orthogonal formulation | Choquette-Choo et al., arXiv 2211.06530, Eq. 4 |
| banded | the same with X restricted to 2·bands−1 diagonals (BandMF) | Choquette-Choo et al., arXiv 2306.08153, Eq. 6 |
| blt | buffered linear Toeplitz | Dvijotham et al., arXiv 2404.16706, §5; McMahan et al., arXiv 2408.08868 |

The tree restarts every b steps when clients take part more than once (fixed-epoch (k, b) or
b-min-separation: at most one participation per tree, so the k trees' sensitivities add up), the
setting Kairouz et al. ran; a single tree over n steps otherwise.

Under b-min-separation with k > 1, ``optimal`` needs X_ij = 0 for |i − j| ≥ b (the only
orthogonal formulation), which is BandMF with b bands: the two coincide by construction.
"""

from __future__ import annotations

import numpy as np

from .blt import blt_coefs, optimize_blt
from .dense import optimize_gram, pattern_mask
from .factorization import C_from_gram, Factorization, normalize_columns
from .patterns import ParticipationSchema
from .toeplitz import sqrt_coefs, toeplitz_matrix
from .tree import tree_matrix
from .workloads import prefix_sum

MECHANISMS = ("identity", "tree", "tree-honaker", "sqrt-toeplitz", "optimal", "banded", "blt")


def bandwidth(C: np.ndarray) -> int:
    """Number of non-zero diagonals of a lower-triangular C (1 = diagonal)."""
    i, j = np.nonzero(C)
    return int((i - j).max()) + 1


def _structure_of(C: np.ndarray) -> dict:
    bands = bandwidth(C)
    return {"kind": "banded", "bands": bands} if bands < len(C) else {"kind": "dense"}


def _optimized(A: np.ndarray, schema: ParticipationSchema, bands: int | None, **solver) -> tuple:
    n, k, b = schema.steps, schema.participations, schema.separation
    mask, groups = pattern_mask(n, schema.kind, k, b, bands)
    X, info = optimize_gram(A.T @ A, mask, groups, **solver)
    C = normalize_columns(C_from_gram(X))
    if bands is not None:  # exact zeros outside the band (Cholesky keeps them; make it explicit)
        i, j = np.indices(C.shape)
        C = np.where(i - j < bands, C, 0.0)
    return C, info


def plan_factorization(mechanism: str, schema: ParticipationSchema, *, A: np.ndarray | None = None,
                       bands: int | None = None, buffers: int = 4, max_iter: int | None = None,
                       threads: int | None = 1) -> Factorization:
    """Compute C for ``mechanism`` (see MECHANISMS) for workload A (default prefix sums).

    ``bands`` (banded only; default = the schema's separation b, which makes participations
    orthogonal); ``buffers`` (blt only); ``max_iter`` caps the optimisers; ``threads`` is the
    torch thread count used by the optimisers.
    """
    n = schema.steps
    A = prefix_sum(n) if A is None else np.asarray(A, dtype=np.float64)
    if A.shape != (n, n):
        raise ValueError(f"workload must be [{n}, {n}], got {list(A.shape)}")
    solver = {"threads": threads, **({"max_iter": max_iter} if max_iter else {})}
    if mechanism == "identity":
        return Factorization(mechanism, np.eye(n), A, schema, {"kind": "banded", "bands": 1})
    if mechanism in ("tree", "tree-honaker"):
        epoch = schema.separation if schema.participations > 1 else n
        structure = {"kind": "tree", "epoch": int(epoch),
                     "estimator": "honaker" if mechanism == "tree-honaker" else "streaming"}
        return Factorization(mechanism, tree_matrix(n, epoch), A, schema, structure)
    if mechanism == "sqrt-toeplitz":
        c = sqrt_coefs(n)
        return Factorization(mechanism, toeplitz_matrix(c), A, schema, {"kind": "toeplitz", "coefs": c})
    if mechanism == "optimal":
        C, info = _optimized(A, schema, None, **solver)
        return Factorization(mechanism, C, A, schema, _structure_of(C), info)
    if mechanism == "banded":
        bands = schema.separation if bands is None else bands
        if not 1 <= bands <= n:
            raise ValueError(f"bands must be in [1, steps={n}], got {bands}")
        C, info = _optimized(A, schema, bands, **solver)
        return Factorization(mechanism, C, A, schema, {"kind": "banded", "bands": int(bands)}, info)
    if mechanism == "blt":
        theta, omega, info = optimize_blt(A, schema, buffers, **solver)
        C = toeplitz_matrix(blt_coefs(theta, omega, n))
        return Factorization(mechanism, C, A, schema, {"kind": "blt", "theta": theta, "omega": omega}, info)
    raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
