"""Staleness weights and the server rules of asynchronous aggregation (pure functions).

Staleness ``tau = t - s`` is counted in server model versions: an answer computed on the model of
version (round) ``s`` and aggregated in round ``t``. Sign convention: ``delta = y - x_s``, the client's
model after local training minus the model it started from.

* Staleness functions (FedAsync, Xie, Koyejo, Gupta 2019, arXiv 1903.03934, the s(t - tau) choices
  of its experiments): ``constant`` s = 1; ``polynomial`` s = (tau + 1)^(-a);
  ``hinge`` s = 1 if tau <= b else 1 / (a (tau - b) + 1); ``exponential`` s = exp(-a tau)
  (Wang & Gao's "weighted" baseline 2^(-tau/20) is exponential with a = ln 2 / 20).
* ``direct`` -- aggregate stale updates as if fresh: ``x + eta * mean_i delta_i`` (the "unweighted"
  baseline of Wang & Gao, arXiv 2309.13536).
* ``weighted`` -- ``x + eta * mean_i s(tau_i) delta_i`` (the "weighted" baseline: each stale update is
  scaled down, the mean still counts it as one update).
* ``fedasync_mix`` -- FedAsync's server rule (Alg. 1): ``x <- (1 - alpha_t) x + alpha_t y``
  with ``alpha_t = alpha * s(tau)``, applied once per answer in arrival order.
* ``fedbuff_add`` / ``fedbuff_flush`` -- FedBuff (Nguyen et al., AISTATS 2022, arXiv 2106.06639,
  Alg. 1): ``buf += s(tau) delta``; after ``K`` answers ``x <- x + eta * buf / K``; answers staler
  than ``max_staleness`` are dropped.
"""

from __future__ import annotations

import math

import torch

from .weighting import check_updates

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge", "exponential")


def staleness_weight(kind: str, tau: torch.Tensor, *, a: float = 0.5, b: float = 4.0) -> torch.Tensor:
    """``s(tau)`` in (0, 1] for integer staleness ``tau >= 0`` (any shape); float64."""
    if kind not in STALENESS_FUNCTIONS:
        raise ValueError(f"staleness function must be one of {STALENESS_FUNCTIONS}, got '{kind}'")
    if not (math.isfinite(a) and a >= 0 and math.isfinite(b) and b >= 0):
        raise ValueError(f"staleness parameters need a >= 0 and b >= 0, got a={a}, b={b}")
    tau = torch.as_tensor(tau, dtype=torch.float64)
    if (tau < 0).any():
        raise ValueError(f"staleness must be >= 0, got {tau.min().item()}")
    if kind == "constant":
        return torch.ones_like(tau)
    if kind == "polynomial":
        return (tau + 1.0) ** (-a)
    if kind == "hinge":
        return torch.where(tau <= b, torch.ones_like(tau), 1.0 / (a * (tau - b) + 1.0))
    return torch.exp(-a * tau)


def direct(params: torch.Tensor, deltas: torch.Tensor, server_lr: float) -> torch.Tensor:
    """``x + eta * mean_i delta_i``; no answers leave ``x`` unchanged.  deltas  # [K, D]"""
    return weighted(params, deltas, torch.ones(deltas.shape[0], dtype=torch.float64), server_lr)


def weighted(params: torch.Tensor, deltas: torch.Tensor, weights: torch.Tensor, server_lr: float) -> torch.Tensor:
    """``x + eta * (1/K) sum_i w_i delta_i``.  deltas  # [K, D]; weights  # [K]"""
    check_updates(deltas, weights)
    if deltas.shape[0] == 0:
        return params.clone()
    return params + server_lr * (weights.to(deltas.dtype) @ deltas) / deltas.shape[0]


def fedasync_mix(params: torch.Tensor, models: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Apply ``x <- (1 - alpha_k) x + alpha_k y_k`` for k = 1..K in order.  models  # [K, D]; alphas  # [K]"""
    check_updates(models, alphas)
    if (alphas > 1).any():
        raise ValueError(f"FedAsync mixing weights must be in [0, 1], got max {alphas.max().item()}")
    x = params.clone()
    for y, alpha in zip(models, alphas.tolist()):
        x = (1.0 - alpha) * x + alpha * y
    return x


def fedbuff_add(buffer: torch.Tensor, count: int, delta: torch.Tensor, weight: float) -> tuple[torch.Tensor, int]:
    """One answer into the buffer: ``(buf + weight * delta, count + 1)`` (a new tensor)."""
    if delta.shape != buffer.shape:
        raise ValueError(f"update has shape {tuple(delta.shape)}, the buffer {tuple(buffer.shape)}")
    return buffer + weight * delta.to(buffer.dtype), count + 1


def fedbuff_flush(params: torch.Tensor, buffer: torch.Tensor, count: int, server_lr: float) -> torch.Tensor:
    """``x + eta * buf / K`` with ``K = count`` answers in the buffer."""
    if count < 1:
        raise ValueError("cannot flush an empty FedBuff buffer")
    return params + server_lr * buffer.to(params.dtype) / count
