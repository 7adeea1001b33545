"""Reducers: combine a cohort's updates ``[K, D]`` into one server direction ``[D]``.

Both reducers are linear in the updates, permutation invariant, and ``weighted_mean`` is invariant to
a common rescaling of the weights. A client with weight 0 contributes nothing.
"""

from __future__ import annotations

import torch


def check_updates(updates: torch.Tensor, weights: torch.Tensor) -> None:
    """Reject malformed cohorts before they can touch the global model."""
    if updates.ndim != 2:
        raise ValueError(f"updates must be [K, D], got shape {tuple(updates.shape)}")
    if weights.shape != (updates.shape[0],):
        raise ValueError(f"weights must be [K]={updates.shape[0]}, got shape {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights must be finite and non-negative")
    if not torch.isfinite(updates).all():
        bad = (~torch.isfinite(updates)).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"non-finite values in the updates of cohort rows {bad}")


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i u_i / sum_i w_i`` (FedAvg, McMahan et al. 2017, arXiv 1602.05629, Alg. 1).

    updates  # [K, D]; weights  # [K]. An empty cohort or all-zero weights give a zero direction.
    """
    check_updates(updates, weights)
    total = weights.sum()
    if updates.shape[0] == 0 or total == 0:
        return torch.zeros(updates.shape[1], dtype=updates.dtype)
    return (weights.to(updates.dtype) / total.to(updates.dtype)) @ updates


def weighted_sum(updates: torch.Tensor, weights: torch.Tensor, divisor: float,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    """``(sum_i w_i u_i [+ noise]) / divisor`` with a divisor fixed by the algorithm (FedAU divides by
    N); ``noise`` [D] is user-level DP noise on the weighted sum."""
    check_updates(updates, weights)
    if divisor <= 0:
        raise ValueError(f"divisor must be positive, got {divisor}")
    if updates.shape[0] == 0:
        total = torch.zeros(updates.shape[1], dtype=updates.dtype)
    else:
        total = weights.to(updates.dtype) @ updates
    return total / divisor if noise is None else (total + noise.to(total.dtype)) / divisor
