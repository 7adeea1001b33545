"""Adaptive server optimizers FedAdagrad, FedYogi and FedAdam: Reddi, Charles, Zaheer, Garrett,
Rush, Konečný, Kumar, McMahan, "Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295,
Algorithm 2.

The paper, with Δ_t the average client change: ``m_t = β1 m_{t−1} + (1 − β1) Δ_t``;
``v_t = v_{t−1} + Δ_t²`` (Adagrad), ``v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²)`` (Yogi) or
``β2 v_{t−1} + (1 − β2) Δ_t²`` (Adam); ``x_{t+1} = x_t + η m_t / (sqrt(v_t) + τ)``, with m_{−1} = 0,
v_{−1} = τ² and no bias correction (as in the paper). Here Δ_t is the model change the wrapped
strategy would apply (``x_new − x_old``: for FedAvg ``strategy.server_lr × mean Δ_i``, so keep
``strategy.server_lr = 1`` for the paper's form); any strategy can be wrapped, e.g. FedAU + Adam
(ours). Config: ``[server_optimizer] name = "adam" | "yogi" | "adagrad"``, ``lr`` = η (default
0.01), ``beta1`` (0.9), ``beta2`` (0.99), ``tau`` (1e-3): the paper's defaults for β1, β2 and the
smallest τ of its grid.
"""

from __future__ import annotations

import torch

from .base import ServerStage

KEYS = ("lr", "beta1", "beta2", "tau")


class ServerAdaptive(ServerStage):
    rule = "adam"

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3):
        if not lr > 0:
            raise ValueError(f"server_optimizer.lr must be > 0, got {lr}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"server_optimizer.beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
        if not tau > 0:
            raise ValueError(f"server_optimizer.tau must be > 0, got {tau}")
        self.name = self.rule
        self.lr, self.beta1, self.beta2, self.tau = float(lr), float(beta1), float(beta2), float(tau)
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def init(self, dim: int) -> None:
        self.m, self.v = torch.zeros(dim), torch.full((dim,), self.tau ** 2)

    def after(self, server_round, old, new, metrics):
        d = new - old
        m = self.beta1 * self.m + (1 - self.beta1) * d
        sq = d * d
        if self.rule == "adagrad":
            v = self.v + sq
        elif self.rule == "yogi":
            v = self.v - (1 - self.beta2) * sq * torch.sign(self.v - sq)
        else:
            v = self.beta2 * self.v + (1 - self.beta2) * sq
        self.m, self.v = m, v  # replaced, never mutated: a rolled-back round keeps the old tensors
        step = self.lr * m / (v.sqrt() + self.tau)
        metrics[f"server/{self.rule}_step_norm"] = float(step.norm())
        return old + step

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        for key in ("m", "v"):
            if state[key].shape != getattr(self, key).shape:
                raise ValueError(f"server {self.rule} state '{key}' has shape {tuple(state[key].shape)}, "
                                 f"expected {tuple(getattr(self, key).shape)}")
        self.m, self.v = state["m"].clone(), state["v"].clone()


class FedAdagrad(ServerAdaptive):
    rule = "adagrad"


class FedYogi(ServerAdaptive):
    rule = "yogi"


class FedAdam(ServerAdaptive):
    rule = "adam"
