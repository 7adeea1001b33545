"""Asynchronous aggregation of stale answers: direct, weighted, FedAsync and FedBuff.

In fedsim's round loop an asynchronous strategy does not wait for the answers it sent this round:
a round collects ``m`` answers of everything in flight, or, with ``round_time > 0``, everything that
arrives within a fixed window of that many (virtual) seconds, as in FedFix (Fraboni et al., arXiv
2206.10189): every round then lasts exactly ``round_time``, whoever answers. Slow clients' answers land rounds later, computed on the model they were sent; a
client with a job in flight is not sent another. Staleness ``tau`` is counted in rounds (server
versions): ``tau = t - s`` for an answer sent in round ``s`` and aggregated in round ``t``. Answers of
one round are taken in arrival order. The pure rules live in ``fedsim.core.staleness``.

- ``direct``: ``x + eta * mean_i delta_i`` -- stale answers as if fresh (Wang & Gao's "unweighted").
- ``weighted``: ``x + eta * mean_i s(tau_i) delta_i`` (Wang & Gao's "weighted" uses exponential
  ``s = 2^(-tau/20)``: ``staleness_fn = "exponential"``, ``staleness_a = ln 2 / 20``).
- ``fedasync``: per answer ``x <- (1 - alpha s(tau)) x + alpha s(tau) (x_s + delta)`` (Xie et al.,
  arXiv 1903.03934, Alg. 1). Clients run plain local SGD (no proximal term, i.e. rho = 0). With
  ``strategy.staleness_unit = "update"`` tau counts server *updates* as in the paper (each mixed
  answer is one version: the j-th answer of a round meets a model j updates newer than the round's
  start); the default ``"round"`` counts rounds, as the other strategies here do (ours).
- ``fedbuff``: ``buf += s(tau) delta``; every ``buffer_size`` answers ``x <- x + eta * buf / K``;
  answers staler than ``max_staleness`` (if > 0) are dropped (Nguyen et al., arXiv 2106.06639,
  Alg. 1). A partly filled buffer carries over to later rounds (and checkpoints).

FedAsync and repair (``fedsim.strategies.repair``) need the model each answer was computed on: the
server keeps those versions in a bounded ``ModelVersions`` store (at most ``strategy.history``),
saved with the strategy state.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from ..core import staleness as S
from ..core.model_versions import ModelVersions
from .base import Cohort, FedsimStrategy

STALENESS_UNITS = ("round", "update")  # FedAsync: tau in server rounds (fedsim's default) or in server updates


class AsyncStrategy(FedsimStrategy):
    asynchronous = True
    uses_versions = False  # keep the global model of every version still in flight

    def __init__(self, participation, *, m: int = 10, round_time: float = 0.0, history: int = 64,
                 staleness_fn: str = "polynomial", staleness_a: float = 0.5, staleness_b: float = 4.0, **kw):
        super().__init__(participation, **kw)
        self.set_round_wait(m, round_time)
        self.staleness_fn = (staleness_fn, float(staleness_a), float(staleness_b))
        self.weight(torch.zeros(1))  # validates the staleness function now, not at the first stale answer
        self.versions = ModelVersions(history)
        self.keep_recent = 0  # also keep the models of the last rounds (an experiment hands out delayed models)

    def weight(self, tau: torch.Tensor) -> torch.Tensor:
        kind, a, b = self.staleness_fn
        return S.staleness_weight(kind, tau, a=a, b=b)

    @staticmethod
    def staleness(server_round: int, cohort: Cohort) -> torch.Tensor:
        return server_round - cohort.model_round

    def base_models(self, params: torch.Tensor, cohort: Cohort) -> tuple[list[torch.Tensor], int]:
        """The model each answer was computed on (the current one where the store has lost it) and
        how many were lost."""
        found = [self.versions.get(int(s)) for s in cohort.model_round.tolist()]
        return [params if x is None else x for x in found], sum(x is None for x in found)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.uses_versions and messages:
            self.versions.record(server_round, self.params)
        return messages

    def aggregate_train(self, server_round: int, replies):
        try:
            arrays, metrics = super().aggregate_train(server_round, replies)
        finally:
            recent = range(server_round + 1 - self.keep_recent, server_round + 1)
            self.versions.retain(set(self.in_flight.values()) | set(recent))
        if self.uses_versions:  # the model history's memory: versions with work in flight, at most `history`
            metrics["server/model_versions"] = len(self.versions.versions)
            metrics["server/model_versions_mib"] = self.versions.nbytes / 2**20
        return arrays, metrics

    def state_dict(self) -> dict:
        return {**super().state_dict(), "versions": self.versions.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.versions.load_state_dict(state["versions"])


class DirectStrategy(AsyncStrategy):
    name = "direct"

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        return S.direct(params, cohort.updates, self.server_lr), state, {}


class WeightedStrategy(AsyncStrategy):
    name = "weighted"

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        w = self.weight(self.staleness(server_round, cohort))
        metrics = {"staleness/mean_weight": float(w.mean())} if w.numel() else {}
        return S.weighted(params, cohort.updates, w, self.server_lr), state, metrics


class FedAsyncStrategy(AsyncStrategy):
    name = "fedasync"
    uses_versions = True

    def __init__(self, participation, *, mixing: float = 0.6, staleness_unit: str = "round", **kw):
        super().__init__(participation, **kw)
        if not 0 < mixing <= 1:
            raise ValueError(f"strategy.mixing (FedAsync alpha) must be in (0, 1], got {mixing}")
        if self.server_lr != 1.0:
            raise ValueError(f"fedasync steps with strategy.mixing, not a server rate: leave strategy.server_lr "
                             f"at 1 (got {self.server_lr})")
        if staleness_unit not in STALENESS_UNITS:
            raise ValueError(f"strategy.staleness_unit must be one of {STALENESS_UNITS}, got '{staleness_unit}'")
        self.mixing, self.staleness_unit = mixing, staleness_unit

    def init_state(self, dim: int) -> dict:
        # per-update counting: server updates applied so far, and the count each round's model was sent at
        return {"updates": 0, "sent_at": {1: 0}}

    def check_state(self, state: dict) -> dict:
        return {"updates": 0, "sent_at": {1: 0}, **state}  # checkpoints from before per-update counting

    def update_staleness(self, cohort: Cohort, state: dict) -> torch.Tensor:
        """Xie et al.'s staleness t - tau in server *updates*: the j-th answer mixed this round (0-based)
        meets a model ``updates + j`` versions on, and was computed on version ``sent_at[s]``."""
        sent = torch.tensor([state["sent_at"].get(int(s), 0) for s in cohort.model_round.tolist()])
        return state["updates"] + torch.arange(cohort.clients.numel()) - sent

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        bases, missed = self.base_models(params, cohort)
        updates = state["updates"] + len(bases)
        live = {s for s in self.in_flight.values()} | {server_round + 1}  # versions still needed
        sent_at = {r: v for r, v in state["sent_at"].items() if r in live}
        sent_at[server_round + 1] = updates  # the model sent next round is this many updates on
        new_state = {"updates": updates, "sent_at": sent_at}
        if not bases:
            return params.clone(), new_state, {}
        tau = (self.update_staleness(cohort, state) if self.staleness_unit == "update"
               else self.staleness(server_round, cohort))
        models = torch.stack(bases) + cohort.updates
        alphas = self.mixing * self.weight(tau.double())
        return S.fedasync_mix(params, models, alphas), new_state, {
            "fedasync/mean_alpha": float(alphas.mean()), "fedasync/mean_staleness": float(tau.double().mean()),
            "staleness/history_misses": missed}


class FedBuffStrategy(AsyncStrategy):
    name = "fedbuff"
    noisy_sum = True

    def __init__(self, participation, *, buffer_size: int = 10, max_staleness: int = 0, **kw):
        super().__init__(participation, **kw)
        if buffer_size < 1 or max_staleness < 0:
            raise ValueError(f"need strategy.buffer_size >= 1 and max_staleness >= 0, got {buffer_size}, {max_staleness}")
        self.buffer_size, self.max_staleness = buffer_size, max_staleness

    def init_state(self, dim: int) -> dict:
        return {"buffer": torch.zeros(dim), "count": 0}

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        """User-level DP adds each round's noise to the buffer (the released per-round sums)."""
        tau = self.staleness(server_round, cohort)
        weights = self.weight(tau).tolist()
        buf, count, flushes, dropped = state["buffer"], state["count"], 0, 0
        if noise is not None:
            buf = buf + noise.to(buf.dtype)
        for delta, t, w in zip(cohort.updates, tau.tolist(), weights):
            if self.max_staleness and t > self.max_staleness:
                dropped += 1
                continue
            buf, count = S.fedbuff_add(buf, count, delta, w)
            if count == self.buffer_size:
                params, buf, count, flushes = S.fedbuff_flush(params, buf, count, self.server_lr), \
                    torch.zeros_like(buf), 0, flushes + 1
        return params.clone(), {"buffer": buf, "count": count}, \
            {"fedbuff/flushes": flushes, "fedbuff/dropped": dropped, "fedbuff/buffered": count}

    def check_state(self, state: dict) -> dict:
        if state["buffer"].shape != (self.spec.dim,):
            raise ValueError(f"FedBuff buffer has shape {tuple(state['buffer'].shape)}, expected ({self.spec.dim},)")
        return {"buffer": state["buffer"].clone(), "count": int(state["count"])}
