"""AFA-CD and AFA-CS as Flower strategies (Yang et al., ICML 2022, arXiv 2108.09875, Alg. 1 and 2).

Clients answer with the average of their local gradients (``update-kind = mean-gradient``); the
pure rules are in ``fedsim.core.afa``. In fedsim's round loop AFA-CD stops waiting once ``m``
answers have arrived (counted in answers, not distinct workers; answers arriving at the same
virtual instant are all taken), so slower answers land in later rounds, computed on the model they
were sent. With ``strategy.round_time > 0`` a round instead takes whatever arrives within a fixed
window of that many (virtual) seconds, as the other asynchronous strategies do (ours; the paper
waits for m answers). A client with a job in flight is not sent another. AFA-CS keeps the latest answer of every
worker (zero slots at the start) and averages over all N. Under plain ``Strategy.start`` every
round waits for all answers, i.e. no staleness.
"""

from __future__ import annotations

import torch

from ..core import afa
from ..runtime import protocol as P
from .base import Cohort, FedsimStrategy


class AFACDStrategy(FedsimStrategy):
    name = "afa-cd"
    update_kind = P.UPDATE_MEAN_GRADIENT
    asynchronous = True

    def __init__(self, participation, *, m: int = 10, round_time: float = 0.0, **kw):
        super().__init__(participation, **kw)
        self.set_round_wait(m, round_time)

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        grad = afa.cd_aggregate(cohort.updates)
        return (afa.server_step(params, grad, self.server_lr, self.local_lr), state,
                {"afa/grad_norm": float(grad.norm())})


class AFACSStrategy(AFACDStrategy):
    name = "afa-cs"

    def init_state(self, dim: int) -> dict:
        return {"memory": afa.cs_init(self.num_clients, dim),
                "reported": torch.zeros(self.num_clients, dtype=torch.bool)}

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        grad, memory = afa.cs_aggregate(state["memory"], cohort.clients, cohort.updates)
        reported = state["reported"].clone()
        reported[cohort.clients] = True
        return (afa.server_step(params, grad, self.server_lr, self.local_lr), {"memory": memory, "reported": reported},
                {"afa/grad_norm": float(grad.norm()), "afa/reported_workers": int(reported.sum())})

    def check_state(self, state: dict) -> dict:
        expected = (self.num_clients, self.spec.dim)
        if tuple(state["memory"].shape) != expected:
            raise ValueError(f"AFA-CS memory has shape {tuple(state['memory'].shape)}, expected {expected}")
        return {"memory": state["memory"].clone(), "reported": state["reported"].clone()}
