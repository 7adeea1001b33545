"""Per-client participation probabilities p_n (environment side; aggregators never see them).

``label_linked_probs`` follows FedAU (Wang & Ji, arXiv 2306.03401; ``IBM/fedau`` commit 6e9cce9,
``util/util.py::data_participation_each_node``): one global multiplier ``m ~ Dirichlet(alpha·1_C)``
over the classes, ``p_n = (q_n·m)·(p_mean·C)`` with ``q_n`` client n's label histogram, floored at
``p_min``. Unlike the reference we also clip at 1:
for C = 100 the factor p_mean·C = 10 can push p_n above 1.

``heterogeneous_probs`` is a label-independent alternative (Beta-distributed p_n) for runs without
label histograms. With label-independent p_n, FedAU-style reweighting has little to correct.
"""

from __future__ import annotations

import numpy as np

__all__ = ["label_linked_probs", "heterogeneous_probs"]

# Fixed stream tags: the same seed drives several independent streams (probs, timing, sampling).
_TAG_LABEL_LINKED = 0x5EED_0001
_TAG_HETEROGENEOUS = 0x5EED_0002


def _check_prob_params(p_mean: float, p_min: float) -> None:
    if not 0.0 < p_mean <= 1.0:
        raise ValueError(f"p_mean must be in (0, 1], got {p_mean}")
    if not 0.0 < p_min <= 1.0:
        raise ValueError(f"p_min must be in (0, 1], got {p_min}")


def label_linked_probs(
    label_hist: np.ndarray,
    *,
    seed: int,
    alpha: float = 0.1,
    p_mean: float = 0.1,
    p_min: float = 0.02,
) -> np.ndarray:
    """FedAU's label-correlated probabilities: ``clip((q_n·m)·p_mean·C, p_min, 1)``, float64 [N].

    ``label_hist`` is [N, C] (fractions; rows of counts are normalised; all-zero rows get p_min). One global
    ``m ~ Dirichlet(alpha·1_C)`` is drawn from ``default_rng([seed, tag])``, so clients holding
    "popular" labels participate far more often. E[mean p] = p_mean before the floor/clip; for
    C = 10, N = 250, Dirichlet(0.1) data, about a third of the clients sit at the floor.
    """
    q = np.asarray(label_hist, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] < 1 or q.shape[1] < 1:
        raise ValueError(f"label_hist must be a non-empty [N, C] array, got shape {q.shape}")
    if not np.all(np.isfinite(q)) or np.any(q < 0):
        raise ValueError("label_hist must be finite and non-negative")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    _check_prob_params(p_mean, p_min)
    totals = q.sum(axis=1, keepdims=True)
    q = q / np.where(totals > 0, totals, 1.0)  # a client without data gets q = 0, hence p = p_min
    num_classes = q.shape[1]
    rng = np.random.default_rng([seed, _TAG_LABEL_LINKED])
    m = rng.dirichlet(np.full(num_classes, float(alpha)))
    p = (q @ m) * (p_mean * num_classes)
    return np.clip(p, p_min, 1.0)


def heterogeneous_probs(
    num_clients: int,
    *,
    seed: int,
    p_mean: float = 0.1,
    p_min: float = 0.02,
    spread: float = 1.0,
) -> np.ndarray:
    """Label-independent probabilities: Beta with mean ``p_mean`` and coefficient of variation
    ``spread`` (std/mean), clipped to [p_min, 1]; float64 [N].

    ``spread = 0`` gives every client ``p_mean`` (then floored at p_min). The Beta needs
    ``spread² < (1 − p_mean)/p_mean``. The floor raises the realised mean slightly above p_mean.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    _check_prob_params(p_mean, p_min)
    if not spread >= 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    rng = np.random.default_rng([seed, _TAG_HETEROGENEOUS])
    if spread == 0 or p_mean == 1.0:
        p = np.full(num_clients, float(p_mean))
    else:
        concentration = (1.0 - p_mean) / (p_mean * spread**2) - 1.0  # a + b of the Beta
        if concentration <= 0:
            limit = np.sqrt((1.0 - p_mean) / p_mean)
            raise ValueError(f"spread must be < {limit:.4g} for p_mean={p_mean}, got {spread}")
        p = rng.beta(p_mean * concentration, (1.0 - p_mean) * concentration, size=num_clients)
    return np.clip(p, p_min, 1.0)
