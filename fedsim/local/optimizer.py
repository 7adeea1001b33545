"""The client's local optimizer: SGD with momentum, Nesterov, weight decay and FedProx's proximal
term, and the per-round learning-rate schedule the server applies to ``client.lr``.

One local step, with p the client's parameters, p0 the global model it started from, g the
minibatch gradient, as ``torch.optim.SGD`` orders it (weight decay into the gradient, then the
momentum buffer, buffer = the first gradient at step 1):

    d = g + weight_decay·p + prox_mu·(p − p0)          (FedProx: Li et al., arXiv 1812.06127, Eq. 2)
    buf = momentum·buf + d                               (buffer reset every round: local momentum)
    p ← p − lr·(d + momentum·buf if nesterov else buf)   (buf = d when momentum = 0)

The schedules (per round t = 1..T of the run, the same lr for every local step of a round):
``constant``; ``exponential``: lr·decay^(t−1); ``cosine``: lr·(1 + cos(π(t−1)/T))/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..runtime import protocol as P

LR_SCHEDULES = ("constant", "exponential", "cosine")
_KEYS = {"momentum": P.MOMENTUM, "nesterov": P.NESTEROV, "weight_decay": P.WEIGHT_DECAY, "prox_mu": P.PROX_MU}


@dataclass(frozen=True)
class ClientOptimizer:
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    prox_mu: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"client.momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("client.nesterov needs client.momentum > 0")
        if not self.weight_decay >= 0:
            raise ValueError(f"client.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.prox_mu >= 0:
            raise ValueError(f"the proximal weight mu must be >= 0, got {self.prox_mu}")

    @property
    def plain(self) -> bool:
        """Plain SGD: the trainers keep their original arithmetic (bit for bit)."""
        return self == ClientOptimizer()

    def config(self) -> dict:
        """The TRAIN-message keys of the settings that differ from plain SGD."""
        return {_KEYS[f.name]: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != f.default}

    @classmethod
    def from_config(cls, cfg) -> "ClientOptimizer":
        """From a TRAIN message's config record (absent keys: plain SGD)."""
        return cls(momentum=float(cfg.get(P.MOMENTUM, 0.0)), nesterov=bool(cfg.get(P.NESTEROV, False)),
                   weight_decay=float(cfg.get(P.WEIGHT_DECAY, 0.0)), prox_mu=float(cfg.get(P.PROX_MU, 0.0)))


def lr_at(lr: float, schedule: str, decay: float, server_round: int, rounds: int) -> float:
    """The local learning rate of round ``server_round`` (1-based) of ``rounds``."""
    if schedule == "constant":
        return lr
    if schedule == "exponential":
        return lr * decay ** (server_round - 1)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / max(rounds, 1)))
    raise ValueError(f"client.lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
