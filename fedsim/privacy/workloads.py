"""Workload matrices A: the linear map from the stream of summed clipped gradients G [n, D] to
the stream of models (rows = steps). All lower-triangular, float64.

Prefix sums are SGD/FedAvg with server learning rate 1 (Denisov et al., NeurIPS 2022,
arXiv 2202.08312, §2); momentum and learning-rate factors give ``A = tri(n) · diag(η) · M_β``
(Choquette-Choo et al., ICML 2023, arXiv 2211.06530, §5 "momentum and learning-rate cooldown";
``momentum_sgd_matrix`` in google-research/federated).
"""

from __future__ import annotations

import numpy as np

LR_DECAYS = ("none", "linear", "cosine", "cooldown")


def prefix_sum(n: int) -> np.ndarray:
    """``tri(n)``: ones on and below the diagonal. Returns [n, n]."""
    return np.tril(np.ones((n, n)))


def momentum_matrix(n: int, beta: float) -> np.ndarray:
    """``M_β[i, j] = β^(i-j)`` for i >= j: the momentum buffer ``m_t = β m_{t-1} + g_t``."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {beta}")
    i = np.arange(n)
    expo = i[:, None] - i[None, :]
    return np.where(expo >= 0, beta ** np.maximum(expo, 0), 0.0)


def lr_schedule(n: int, decay: str = "none", final: float = 0.05, cooldown: float = 0.25) -> np.ndarray:
    """Per-step learning-rate factors η [n] with η_0 = 1.

    ``linear``/``cosine`` decay to ``final`` over the whole run; ``cooldown`` keeps 1 and then
    decays linearly to ``final`` over the last ``cooldown`` fraction of steps (ME-MF's
    StackOverflow runs use a cooldown).
    """
    if decay not in LR_DECAYS:
        raise ValueError(f"lr decay must be one of {LR_DECAYS}, got {decay!r}")
    if not 0.0 < final <= 1.0:
        raise ValueError(f"final lr factor must be in (0, 1], got {final}")
    s = np.arange(n) / max(n - 1, 1)  # progress in [0, 1]
    if decay == "none":
        return np.ones(n)
    if decay == "linear":
        return 1.0 - (1.0 - final) * s
    if decay == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + np.cos(np.pi * s))
    if not 0.0 < cooldown <= 1.0:
        raise ValueError(f"cooldown fraction must be in (0, 1], got {cooldown}")
    start = 1.0 - cooldown
    return np.where(s <= start, 1.0, 1.0 - (1.0 - final) * (s - start) / cooldown)


def workload(n: int, momentum: float = 0.0, lr: np.ndarray | None = None) -> np.ndarray:
    """``A = tri(n) · diag(η) · M_β`` (prefix sums when momentum = 0 and η = 1). Returns [n, n]."""
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {n}")
    A = prefix_sum(n)
    if lr is not None:
        lr = np.asarray(lr, dtype=np.float64)
        if lr.shape != (n,) or np.any(lr <= 0):
            raise ValueError(f"lr factors must be {n} positive numbers")
        A = A * lr[None, :]
    if momentum:
        A = A @ momentum_matrix(n, momentum)
    return A


def is_prefix_sum(A: np.ndarray) -> bool:
    return bool(np.array_equal(A, prefix_sum(A.shape[0])))
