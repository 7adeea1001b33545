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
    """AFA-CS with its memory kept compactly (``fedsim.core.afa.cs_update``): a float64 running sum
    plus the latest answer of each worker that ever answered, not a dense [N, D] table (at 10,000
    clients of the benchmark CNN the dense table was 3.9 GB, copied every round)."""

    name = "afa-cs"

    def init_state(self, dim: int) -> dict:
        return {"sum": torch.zeros(dim, dtype=torch.float64), "last": {}}

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        grad, total, last = afa.cs_update(state["sum"], state["last"], self.num_clients, cohort.clients,
                                          cohort.updates)
        return (afa.server_step(params, grad, self.server_lr, self.local_lr), {"sum": total, "last": last},
                {"afa/grad_norm": float(grad.norm()), "afa/reported_workers": len(last)})

    def check_state(self, state: dict) -> dict:
        if "memory" in state:  # a checkpoint of the dense store: the same state, compacted
            memory, reported = state["memory"], state["reported"]
            state = {"sum": memory.double().sum(0),
                     "last": {int(c): memory[c].clone() for c in torch.nonzero(reported).flatten()}}
        if state["sum"].shape != (self.spec.dim,) or any(not 0 <= c < self.num_clients or v.shape != (self.spec.dim,)
                                                         for c, v in state["last"].items()):
            raise ValueError(f"AFA-CS memory does not match {self.num_clients} clients of dimension {self.spec.dim}")
        return {"sum": state["sum"].clone(), "last": {int(c): v.clone() for c, v in state["last"].items()}}
