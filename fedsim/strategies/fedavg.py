"""FedAvg with two-sided learning rates.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017, arXiv 1602.05629, Algorithm 1, written with a server rate as in Reddi et al.,
"Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295, Algorithm 1 (FedOpt with SGD):
``x <- x + eta_g * sum_i w_i Delta_i / sum_i w_i`` with ``w_i = n_i`` (sample count) or 1.

``weighting = "fixed"``: ``x <- x + eta_g * sum_i Delta_i / K`` with K the participation model's
expected cohort size, McMahan et al., ICLR 2018, arXiv 1710.06963, the fixed-denominator estimator
of Algorithm 1 (the DP-FedAvg server rule: the scale does not reveal how many answered). It is the
weighting the user-level DP stage needs, and what ``dp-fedavg`` / ``dp-mf`` run.
"""

from __future__ import annotations

import torch

from ..core.weighting import weighted_mean
from .base import Cohort, FedsimStrategy

WEIGHTINGS = ("num-examples", "uniform", "fixed")


class FedAvgStrategy(FedsimStrategy):
    name = "fedavg"
    noisy_sum = True  # with weighting = "fixed" (checked where the DP stage is configured)

    def __init__(self, participation, *, weighting: str = "num-examples", **kw):
        super().__init__(participation, **kw)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"fedavg weighting must be one of {WEIGHTINGS}, got '{weighting}'")
        self.weighting = weighting
        self.cohort_size = float(participation.expected_rate().sum())  # K of the fixed denominator

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        if self.weighting == "fixed":
            total = cohort.updates.sum(0) if noise is None else cohort.updates.sum(0) + noise
            return params + self.server_lr * (total / self.cohort_size), state, {}
        if noise is not None:
            raise ValueError(f"user-level DP needs strategy.weighting = 'fixed' (got '{self.weighting}'): "
                             "a denominator that counts the answers or their examples is not private")
        w = cohort.num_examples if self.weighting == "num-examples" else torch.ones_like(cohort.num_examples)
        direction = weighted_mean(cohort.updates, w)
        return params + self.server_lr * direction, state, {}
