"""FedAU as a Flower strategy: participation-interval weights, divided by N.

Wang & Ji, ICLR 2024, arXiv 2306.03401, Algorithm 1; the pure rule is ``fedsim.core.fedau``.
Participation in round t means "an answer arrived this round"; the strategy never sees the
clients' true participation probabilities, only who answered.
"""

from __future__ import annotations

import torch

from ..core import fedau
from .base import Cohort, FedsimStrategy


class FedAUStrategy(FedsimStrategy):
    name = "fedau"

    def __init__(self, participation, *, cutoff: int = 100_000, **kw):
        super().__init__(participation, **kw)
        if cutoff < 1:
            raise ValueError(f"strategy.cutoff (FedAU's K) must be >= 1, got {cutoff}")
        self.cutoff = cutoff
        self.fedau = fedau.init(self.num_clients)

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort):
        direction, self.fedau, metrics = fedau.step(self.fedau, cohort.clients, cohort.updates, self.cutoff)
        return params + self.server_lr * direction, metrics

    def noisy_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, noise: torch.Tensor):
        direction, self.fedau, metrics = fedau.step(self.fedau, cohort.clients, cohort.updates, self.cutoff,
                                                    noise=noise)
        return params + self.server_lr * direction, metrics

    def weight_bound(self) -> float:
        return float(self.cutoff)  # omega_n is a mean of intervals of at most K rounds

    def algorithm_state(self) -> dict:
        return self.fedau.as_dict()

    def load_algorithm_state(self, state: dict) -> None:
        self.fedau = fedau.FedAUState.from_dict(state)
