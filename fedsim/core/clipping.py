"""Per-client L2 clipping, the first stage of user-level DP aggregation.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018, arXiv 1710.06963, Algorithm 1, ``ClipFn``):
each client's update is scaled to L2 norm at most S, so one user changes the sum by at most S.
"""

from __future__ import annotations

import torch


def clip_vector(update: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """One vector ``[D]`` clipped as :func:`clip_rows` clips a row (differentiable)."""
    return clip_rows(update[None], clip_norm)[0][0]


def clip_rows(updates: torch.Tensor, clip_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``updates`` [K, D] -> (rows scaled by min(1, S / ||row||) [K, D], the original norms [K])."""
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    norms = updates.double().norm(dim=1)
    scale = torch.clamp(clip_norm / torch.clamp(norms, min=1e-30), max=1.0)
    return updates * scale.to(updates.dtype)[:, None], norms
