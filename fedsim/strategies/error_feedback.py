"""Compressed federated training with error feedback: EF21 and the classic EF14 baseline.

**EF21** (Richtarik, Sokolov, Fatkhullin, NeurIPS 2021, arXiv 2106.05203, Algorithm 1), applied to
multi-step local training as in the reference's practical mapping: client i's "gradient" is its
normalised local update Delta_i = (x - y_i) / (eta_l K_i) (AFA's mean gradient, ``update-kind =
mean-gradient``), it sends c_i = C(Delta_i - g_i) and keeps g_i += c_i (``fedsim.local.uplink``); the
server keeps g = (1/N) sum over *all* N clients of g_i, updated by the participants' c_i, so absent
clients keep their last g_i (EF21-PP, Fatkhullin et al., arXiv 2110.03294, Algorithm 4 — the paper's
mean over n, not over participants). The server step is x <- x - gamma g with
gamma = eta_g * eta_l * K: with the identity compressor, full participation and equal K it is
exactly FedAvg with uniform weights (tested). With ``ef_init = "full"`` a client's first message is
Delta_i uncompressed (g_i^0 = grad f_i(x^0) in the paper) and is counted as 32 D bits.

**EF21-SGDM** (Fatkhullin, Tyurin, Richtarik, NeurIPS 2023, arXiv 2305.15155, Algorithm 1) with
``strategy.ef_momentum = eta < 1``: the client first averages its updates into a momentum estimator
v_i <- (1 - eta) v_i + eta Delta_i (v_i^0 = Delta_i, the paper's v_i^0 = g_i^0) and compresses
v_i - g_i instead of Delta_i - g_i; the server is EF21's. The paper's stochastic gradient at x^t is
here the client's normalised multi-step update (ours, as for EF21); v_i lives with the client
(checkpointed like g_i). eta = 1 is EF21 exactly.

**EF14** (Seide et al. 2014; Stich, Cordonnier, Jaggi, arXiv 1809.07599, Algorithm 1): the client
sends m_i = C(e_i + Delta_i) for its model delta and keeps the residual e_i += Delta_i - m_i; the
server averages the m_i of the participants (FedAvg with uniform weights).
"""

from __future__ import annotations

import torch

from ..core.error_feedback import ef21_server
from ..runtime import protocol as P
from .base import Cohort, FedsimStrategy
from .fedavg import FedAvgStrategy


class EF21Strategy(FedsimStrategy):
    name = "ef21"
    update_kind = P.UPDATE_MEAN_GRADIENT
    feedback = "ef21"
    noisy_sum = True

    def __init__(self, participation, *, local_steps: int, ef_init: str = "full", ef_momentum: float = 1.0, **kw):
        super().__init__(participation, **kw)
        if ef_init not in P.EF_INITS:
            raise ValueError(f"strategy.ef_init must be one of {P.EF_INITS}, got '{ef_init}'")
        if not 0 < ef_momentum <= 1:
            raise ValueError(f"strategy.ef_momentum must be in (0, 1], got {ef_momentum}")
        self.ef_momentum = float(ef_momentum)
        if local_steps < 1:
            raise ValueError(f"local_steps must be >= 1, got {local_steps}")
        self.ef_init = ef_init
        self.step = self.server_lr * self.local_lr * local_steps

    def init_state(self, dim: int) -> dict:
        # g: float64 [D], mean of all clients' g_i; seen: bool [N], clients whose first message has arrived
        return {"g": torch.zeros(dim, dtype=torch.float64), "seen": torch.zeros(self.num_clients, dtype=torch.bool)}

    def uplink_config(self) -> dict:
        momentum = {P.EF_MOMENTUM: self.ef_momentum} if self.ef_momentum < 1 else {}
        return {**super().uplink_config(), P.EF_INIT: self.ef_init, **momentum}

    def dense_expected(self, cid: int) -> bool:
        return self._first_full(cid) or super().dense_expected(cid)

    def message_bits(self, cid: int) -> int:
        return 32 * self.spec.dim if self._first_full(cid) else super().message_bits(cid)

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        g = ef21_server(state["g"], cohort.updates.double(), self.num_clients, noise=noise)
        seen = state["seen"].clone()
        seen[cohort.clients] = True
        return params - self.step * g.float(), {"g": g, "seen": seen}, \
            {"ef21/g_norm": float(g.norm()), "ef21/clients_seen": int(seen.sum())}

    def check_state(self, state: dict) -> dict:
        if state["g"].shape != (self.spec.dim,) or state["seen"].shape != (self.num_clients,):
            raise ValueError("EF21 state does not match this model and population")
        return state

    def _first_full(self, cid: int) -> bool:
        # the decoder reads answers against the state before this round's update
        return self.ef_init == "full" and not bool(self.state["seen"][cid])


class EF14Strategy(FedAvgStrategy):
    name = "ef14"
    feedback = "ef14"

    def __init__(self, participation, *, weighting: str = "uniform", **kw):
        if weighting == "num-examples":  # the config default: EF14 averages the messages uniformly
            weighting = "uniform"
        super().__init__(participation, weighting=weighting, **kw)
