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
    noisy_sum = True

    def __init__(self, participation, *, cutoff: int = 100_000, **kw):
        super().__init__(participation, **kw)
        if cutoff < 1:
            raise ValueError(f"strategy.cutoff (FedAU's K) must be >= 1, got {cutoff}")
        self.cutoff = cutoff

    def init_state(self, dim: int) -> dict:
        return fedau.init(self.num_clients).as_dict()  # plain tensors: since, interval_sum, interval_count

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        direction, intervals, metrics = fedau.step(fedau.FedAUState.from_dict(state), cohort.clients,
                                                   cohort.updates, self.cutoff, noise=noise)
        return params + self.server_lr * direction, intervals.as_dict(), metrics

    def weight_bound(self, server_round: int) -> float:
        # omega_n is a mean of recorded intervals, each at most K (the cutoff) and at most the rounds
        # run so far: a public bound that needs no client's data
        return float(min(self.cutoff, server_round))

    def check_state(self, state: dict) -> dict:
        if state["since"].shape != (self.num_clients,):
            raise ValueError(f"FedAU state is for {state['since'].numel()} clients, this run has {self.num_clients}")
        return fedau.FedAUState.from_dict(state).as_dict()
