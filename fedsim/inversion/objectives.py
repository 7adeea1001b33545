"""Gradient-matching losses and image priors shared by the optimisation attacks.

* :func:`l2_distance` -- DLG's objective (Zhu et al. 2019, arXiv 1906.08935, eq. 4): squared
  Euclidean distance between the dummy and the observed gradient.
* :func:`cosine_distance` -- Inverting Gradients' objective (Geiping et al., NeurIPS 2020,
  arXiv 2003.14053, eq. 4): ``1 - <g, o> / (||g|| ||o||)`` over all parameters at once.
* :func:`total_variation` -- the anisotropic TV prior of IG (eq. 4), mean absolute difference of
  neighbouring pixels.

Both distances take the support ``mask`` of a sparse observation (Top-k, pruning) and then match
only the coordinates that were sent -- the adaptive attacker.
"""

from __future__ import annotations

import torch

__all__ = ["cosine_distance", "l2_distance", "total_variation"]


def _masked(g: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor | None):
    return (g, obs) if mask is None else (g[mask], obs[mask])


def l2_distance(g: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    g, obs = _masked(g, obs, mask)
    return ((g - obs) ** 2).sum()


def cosine_distance(g: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    g, obs = _masked(g, obs, mask)
    return 1.0 - (g * obs).sum() / (g.norm() * obs.norm() + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertical and horizontal neighbours of ``x [n, C, H, W]``."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy
