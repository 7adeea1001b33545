"""SCAFFOLD: stochastic controlled averaging.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML 2020, arXiv 1910.06378, Algorithm 1 with option II:

- client i starts from y_i = x and runs K_i local steps  y_i <- y_i - eta_l (g_i(y_i) - c_i + c);
- it updates its control variate  c_i+ = c_i - c + (x - y_i) / (K_i eta_l)   (option II)
  and keeps it (``fedsim.local.handler``: a per-client store like EF21's g_i, checkpointed with the
  client side and mirrored into a Flower node's Context);
- the server takes  x <- x + eta_g (1/|S|) sum_i (y_i - x)  and  c <- c + (1/N) sum_i (c_i+ - c_i).

What is the paper's and what is ours:
- the rules above are the paper's, with c and every c_i starting at 0 (the paper's Algorithm 1
  initialisation) and uniform averaging over the sampled clients;
- the client does not send Delta c_i: under option II it equals -c - Delta y_i / (K_i eta_l), a
  function of what the server already has (the update, the steps the client reports, the round's
  learning rate and c), so the server computes it and the uplink carries one vector, not two
  (the paper counts 2D floats per answer; the downlink here still carries x and c);
- with local momentum or weight decay (``client.momentum``; the paper uses plain SGD) the correction
  is added to the optimizer's direction after the momentum buffer, so c_i, estimated by option II as
  the client's mean step direction (x - y_i) / (K_i eta_l), is in the units of what it corrects.

With full participation, one local step and c = c_i = 0 at the start, SCAFFOLD's global model is
FedAvg's with uniform weights in every round (the corrections average to zero; tested). Client-side
compression, clipping and example-level DP would break the relation between what the client sends
and its c_i; they are refused.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from ..runtime import protocol as P
from .base import Cohort, FedsimStrategy


class ScaffoldStrategy(FedsimStrategy):
    name = "scaffold"
    full_weights = False  # a standard ClientApp ignores the control variate: its answers would corrupt c
    client_state = True   # each client's c_i

    def __init__(self, participation, **kw):
        super().__init__(participation, **kw)
        if self.compression.get("name", "identity") != "identity" or self.client_clip > 0 or self.example_dp:
            raise ValueError("SCAFFOLD's control variates need the clients' exact updates: no compression, "
                             "client.clip_norm or example-level DP")

    def init_state(self, dim: int) -> dict:
        return {"c": torch.zeros(dim, dtype=torch.float64)}  # the server control variate, float64 [D]

    def check_state(self, state: dict) -> dict:
        if state["c"].shape != (self.spec.dim,):
            raise ValueError("SCAFFOLD state does not match this model")
        return state

    def train_records(self) -> dict[str, ArrayRecord]:
        return {P.CONTROL: P.flat_record(self.state["c"].float())}

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        k = cohort.updates.shape[0]
        if k == 0:
            return params, state, {}
        dy = cohort.updates.double()
        steps_lr = cohort.local_steps.double() * self.lr_for(server_round)
        dc = -state["c"] - dy / steps_lr[:, None]  # c_i+ - c_i of each answer (option II)
        c = state["c"] + dc.sum(0) / self.num_clients
        new = params + self.server_lr * dy.mean(0).float()
        return new, {"c": c}, {"scaffold/c_norm": float(c.norm())}
