"""Server momentum (FedAvgM): Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification", arXiv 1909.06335, §3 ("FedAvgM").

The paper: ``v <- beta v + Delta_t``; ``w <- w - v`` with ``Delta_t`` the (server-rate scaled)
average of the clients' weight changes, written there as old minus new. Here the stage sees the
model change the wrapped strategy would apply, ``d = x_new - x_old`` (for FedAvg
``eta_g * mean_i Delta_i``), and applies ``v <- beta v + d``; ``x <- x_old + v``. With ``beta = 0`` it
is the identity. It wraps any strategy, so FedAU, EF21 or FedBuff get server momentum too (ours).
Config: ``[server_optimizer] name = "momentum"``, ``momentum = beta`` (default 0.9).
"""

from __future__ import annotations

import torch

from .base import ServerStage


class ServerMomentum(ServerStage):
    name = "momentum"

    def __init__(self, momentum: float = 0.9):
        if not 0 <= momentum < 1:
            raise ValueError(f"server_optimizer.momentum must be in [0, 1), got {momentum}")
        self.beta = float(momentum)
        self.velocity: torch.Tensor | None = None

    def init(self, dim: int) -> None:
        self.velocity = torch.zeros(dim)

    def after(self, server_round, old, new, metrics):
        v = self.beta * self.velocity + (new - old)
        self.velocity = v  # replaced, never mutated: a rolled-back round keeps the old tensor
        metrics["server/momentum_norm"] = float(v.norm())
        return old + v

    def state_dict(self) -> dict:
        return {"velocity": self.velocity}

    def load_state_dict(self, state: dict) -> None:
        v = state["velocity"]
        if v.shape != self.velocity.shape:
            raise ValueError(f"server momentum has shape {tuple(v.shape)}, expected {tuple(self.velocity.shape)}")
        self.velocity = v.clone()
