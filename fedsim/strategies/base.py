"""Shared machinery of fedsim's Flower strategies; subclasses supply the pure server rule.

A ``FedsimStrategy`` is a ``flwr.serverapp.strategy.Strategy``: it works in a user's own ServerApp
through ``Strategy.start`` (synchronous rounds) and in fedsim's round loop
(``fedsim.runtime.loop.run_rounds``), which also supports asynchronous arrival. The base class keeps
one job: the Flower API, participation sampling and the run's state. Per round it

1. asks the participation model (the environment) which idle clients start work, with how many local
   steps and how long their answer takes in virtual time;
2. sends each of them the global model and a per-client config (``fedsim.runtime.protocol``);
3. decodes the replies that arrived (``replies.ReplyDecoder``: malformed ones are rejected without
   touching the global model);
4. runs the server stages and the subclass's rule (``ServerPipeline``) and returns the new global
   ``ArrayRecord``.

The subclass rule is ``server_update(round, params, cohort, state, noise=None) -> (params, state,
metrics)``: it returns its new algorithm state (created by ``init_state``) instead of changing
``self``, so a rejected round (a non-finite model) simply keeps the old state. Strategies whose rule
adds to a sum of clipped contributions set ``noisy_sum = True`` and take user-level DP ``noise``.

All state that matters for continuing a run (global vector, in-flight jobs, algorithm and stage
state, participation RNG) is returned by ``state_dict`` and restored by ``load_state_dict``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..core.compression import Compressor, make_compressor
from ..core.params import ParamSpec
from ..local.optimizer import ClientOptimizer, lr_at
from ..runtime import protocol as P
from ..runtime.directory import ClientDirectory
from ..stages import ServerPipeline
from ..stages.example_dp import ExampleDPLedger
from .replies import Cohort, ReplyDecoder

log = logging.getLogger("fedsim")

__all__ = ["Cohort", "FedsimStrategy"]


class FedsimStrategy(Strategy):
    name = "base"
    update_kind = P.UPDATE_DELTA
    asynchronous = False
    noisy_sum = False     # server_update takes user-level DP noise for its sum of contributions
    m = 1                 # asynchronous strategies: answers a round waits for (round_time = 0)
    round_time = 0.0      # asynchronous strategies: > 0, a round's fixed window of the arrival clock
    feedback = "none"     # client-side error feedback the strategy asks for: none | ef21 | ef14
    full_weights = True   # synchronous strategies read Flower's full-weight replies (fedsim-only protocols: False)
    client_state = False  # clients keep state the server's rule relies on (SCAFFOLD's c_i; error feedback implies it)

    def __init__(self, participation, *, local_lr: float, batch_size: int, seed: int, server_lr: float = 1.0,
                 compression: dict | None = None, example_dp: dict | None = None, stages=(), client_clip: float = 0.0,
                 client_optimizer: ClientOptimizer | None = None, lr_schedule: tuple[str, float, int] | None = None,
                 prox_mu: float = 0.0):
        if local_lr <= 0 or server_lr <= 0 or batch_size < 1:
            raise ValueError(f"need local_lr > 0, server_lr > 0, batch_size >= 1; got {local_lr}, {server_lr}, {batch_size}")
        if not client_clip >= 0:
            raise ValueError(f"client.clip_norm must be >= 0, got {client_clip}")
        self.compression = dict(compression or {"name": "identity"})
        self.client_clip = float(client_clip)  # a client stage: clients clip their updates before sending
        self.compressor: Compressor | None = None  # built once the model dimension is known
        self.participation = participation
        self.num_clients = participation.num_clients
        self.local_lr, self.batch_size, self.seed, self.server_lr = local_lr, batch_size, seed, server_lr
        # the clients' local optimizer (momentum, weight decay, FedProx's mu) and the lr schedule
        optimizer = client_optimizer or ClientOptimizer()
        self.client_optimizer = dataclasses.replace(optimizer, prox_mu=float(prox_mu)) if prox_mu else optimizer
        self.lr_schedule = lr_schedule or ("constant", 1.0, 1)  # (schedule, decay, rounds of the run)
        # clients run DP-SGD (Opacus); the ledger counts the steps each was asked for
        self.example_dp = None if not example_dp else ExampleDPLedger(self.num_clients, batch_size=batch_size,
                                                                        **example_dp)
        self.directory = ClientDirectory(self.num_clients)
        self.spec: ParamSpec | None = None
        self.params: torch.Tensor | None = None
        self.state: dict = {}  # the algorithm's state (init_state / server_update)
        self.in_flight: dict[int, int] = {}  # client id -> round it was sent work
        self.rejections: list[str] = []  # why each answer of the last aggregated round was rejected
        # answers accepted per client: sent as state-count to clients that keep state, so a client whose
        # state was lost (a node restart) or is ahead of this server (a resumed checkpoint) refuses
        self.state_counts = torch.zeros(self.num_clients, dtype=torch.int64)
        self.durable_counts = self.state_counts.clone()  # state_counts in the last checkpoint (sent as state-keep)
        self.pipeline = ServerPipeline(stages)  # server stages around server_update (user-level DP, momentum)
        self.decoder: ReplyDecoder | None = None

    # --- subclass hooks --------------------------------------------------------------------------
    def init_state(self, dim: int) -> dict:
        """The algorithm's initial state for a model of dimension ``dim``."""
        return {}

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict,
                      noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict, dict[str, float]]:
        """The server rule: ``(new params, new state, metrics)``. ``noise`` [D] (only when
        ``noisy_sum``) is user-level DP noise to add to the sum of contributions before the rule's
        normalisation."""
        raise NotImplementedError

    def check_state(self, state: dict) -> dict:
        """Validate a restored algorithm state against this run (shapes); returns it."""
        return state

    def weight_bound(self, server_round: int) -> float:
        """A public bound on the weight of one clipped answer in round ``server_round``'s sum (the DP
        noise is scaled by it so that each round's sum stays a Gaussian mechanism with multiplier z)."""
        return 1.0

    def round_wait(self, pushed: int, in_flight: int) -> tuple[int, float | None]:
        """How many answers a round waits for, and within what window of the arrival clock (None =
        no window). Synchronous strategies wait for all they sent. Asynchronous ones wait for ``m``
        answers of everything in flight, or, with ``round_time > 0``, take whatever arrives within
        a fixed window (FedFix-style rounds, Fraboni et al., arXiv 2206.10189): asking for one more
        answer than can come makes the round last its whole window."""
        if not self.asynchronous:
            return pushed, None
        if self.round_time > 0:
            return in_flight + 1, self.round_time
        return min(self.m, in_flight), None

    def set_round_wait(self, m: int, round_time: float) -> None:
        """Asynchronous strategies: wait for ``m`` answers, or (``round_time > 0``) for a fixed window."""
        if m < 1 or round_time < 0:
            raise ValueError(f"need strategy.m >= 1 and strategy.round_time >= 0, got {m}, {round_time}")
        self.m, self.round_time = m, float(round_time)

    def dense_expected(self, cid: int) -> bool:
        """Whether client ``cid``'s next answer is a dense vector (else values + indices)."""
        return not self.compressor.sparse

    def message_bits(self, cid: int) -> int:
        """Uplink bits of client ``cid``'s answer, counted from what the server asked it to send."""
        return self.compressor.bits

    def lr_for(self, server_round: int) -> float:
        """The local learning rate sent in ``server_round``'s TRAIN messages (``client.lr_schedule``)."""
        return lr_at(self.local_lr, *self.lr_schedule[:2], server_round, self.lr_schedule[2])

    @property
    def keeps_client_state(self) -> bool:
        return self.client_state or self.feedback != "none"

    def train_records(self) -> dict[str, ArrayRecord]:
        """Arrays every TRAIN message carries besides the model (SCAFFOLD's control variate)."""
        return {}

    def uplink_config(self) -> dict:
        """The client stages every TRAIN message asks for: clip, then compress (with error feedback)."""
        clip = {P.CLIENT_CLIP: self.client_clip} if self.client_clip > 0 else {}
        if self.compressor.name == "identity" and self.feedback == "none":
            return clip
        density = {P.COMPRESS_DENSITY: float(self.compression["density"])} if self.compressor.name == "prune" else {}
        return {P.COMPRESSOR: self.compressor.name, P.COMPRESS_K: self.compressor.k,
                P.COMPRESS_UNBIASED: self.compressor.unbiased, P.ERROR_FEEDBACK: self.feedback, **density, **clip}

    def summary_fields(self, rounds_done: int) -> dict:
        """What the strategy and its stages add to ``summary.json`` (e.g. epsilon, repair counters)."""
        out = self.pipeline.summary(rounds_done)
        if self.example_dp:
            out.update(self.example_dp.fields(self.example_dp.epsilon(self.directory.num_examples)))
        return out

    def row_fields(self, metrics: dict) -> dict:
        """What the stages add to a ``metrics.jsonl`` row (e.g. epsilon, delta, mechanism)."""
        out = self.pipeline.row_fields(metrics)
        if self.example_dp and "dp/example_epsilon" in metrics:
            out.update({k: v for k, v in self.example_dp.fields(metrics["dp/example_epsilon"]).items()
                        if k != "example_epsilon"})
        return out

    # --- Flower Strategy API ---------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self.bind(arrays)
        if not self.directory.complete:
            self.directory.discover(grid)
        available = torch.ones(self.num_clients, dtype=torch.bool)
        available[list(self.in_flight)] = False
        plan = self.participation.sample(server_round, available.numpy())
        base = {**dict(config), "server-round": server_round, "lr": self.lr_for(server_round),
                "batch-size": self.batch_size,
                "seed": self.seed, "update-kind": self.update_kind, **self.uplink_config(),
                **self.client_optimizer.config(), **(self.example_dp.client_config() if self.example_dp else {})}
        messages, extra = [], self.train_records()
        for cid, steps, latency in zip(plan.clients.tolist(), plan.local_steps.tolist(), plan.latency.tolist()):
            cfg = {**base, "local-steps": int(steps), P.SIM_LATENCY: float(latency)}
            if self.keeps_client_state:
                cfg[P.STATE_COUNT] = int(self.state_counts[cid])
                cfg[P.STATE_KEEP] = int(self.durable_counts[cid])
            messages.append(Message(P.train_content(arrays, cfg, extra), dst_node_id=self.directory.node_of[cid],
                                    message_type=MessageType.TRAIN, group_id=str(server_round)))
            self.in_flight[cid] = server_round
            if self.example_dp:
                self.example_dp.record(cid, steps)
        self.pipeline.on_send(server_round, plan.clients.tolist())
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.params is None:
            raise RuntimeError("aggregate_train before configure_train: the strategy has no global model yet")
        cohort, self.rejections = self.decoder.decode(server_round, list(replies))
        for cid in cohort.clients.tolist():
            self.in_flight.pop(cid, None)
        if not self.asynchronous:
            self.in_flight.clear()
        stages_before = self.pipeline.state_dict()
        new_params, new_state, metrics = self.pipeline.aggregate(self, server_round, self.params, cohort, self.state)
        if not torch.isfinite(new_params).all():
            self.pipeline.load_state_dict(stages_before)
            raise FloatingPointError(f"round {server_round}: the aggregated model is not finite; "
                                     "the previous global model and strategy state are kept (lower the learning rates)")
        self.params, self.state = new_params, new_state
        self.state_counts[cohort.clients] += 1
        staleness = (server_round - cohort.model_round).double()
        metrics.update({"participants": int(cohort.clients.numel()), "server/rejected": len(self.rejections),
                        "server/staleness_mean": float(staleness.mean()) if staleness.numel() else 0.0,
                        "server/staleness_max": int(staleness.max()) if staleness.numel() else 0,
                        "comm/bits_up": int(cohort.bits.sum())})
        train_loss = cohort.mean_train_loss()  # what the clients report: their mean local loss
        if train_loss is not None:
            metrics["train_loss"] = train_loss
        if self.example_dp:
            metrics["dp/example_epsilon"] = self.example_dp.epsilon(self.directory.num_examples)
        return self.global_arrays(), MetricRecord(metrics)

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        return []  # fedsim evaluates centrally (evaluate_fn)

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log.info("%s: %d clients, server lr %g, local lr %g, batch %d", self.name, self.num_clients,
                 self.server_lr, self.local_lr, self.batch_size)

    def global_arrays(self) -> ArrayRecord:
        return ArrayRecord(torch_state_dict={k: v.clone() for k, v in self.spec.unflatten(self.params).items()})

    # --- state -----------------------------------------------------------------------------------
    def checkpointed(self) -> None:
        """The state just returned by ``state_dict`` is durable: the run can no longer go back further,
        so clients may forget versions of their state older than this."""
        self.durable_counts = self.state_counts.clone()

    def state_dict(self) -> dict:
        return {"params": self.params, "in_flight": dict(self.in_flight), "participation": self.participation.state_dict(),
                "algorithm": self.state, "stages": self.pipeline.state_dict(), "state_counts": self.state_counts.clone(),
                "example_dp": self.example_dp.state_dict() if self.example_dp else None}

    def load_state_dict(self, state: dict) -> None:
        self.params = state["params"]
        if self.spec is not None and self.params is not None and self.params.shape != (self.spec.dim,):
            raise ValueError(f"checkpoint model has {self.params.numel()} parameters, this model has {self.spec.dim}")
        self.in_flight = {int(k): int(v) for k, v in state["in_flight"].items()}
        if "state_counts" in state:
            self.state_counts = state["state_counts"].clone()
        self.durable_counts = self.state_counts.clone()
        self.participation.load_state_dict(state["participation"])
        if self.params is not None and self.spec is not None:
            self.state = self.check_state(state["algorithm"])
            self.pipeline.init(self.spec.dim)
            self.pipeline.load_state_dict(state["stages"])
        if self.example_dp and state.get("example_dp"):
            self.example_dp.load_state_dict(state["example_dp"])

    # --- helpers ---------------------------------------------------------------------------------
    def bind(self, arrays: ArrayRecord) -> None:
        """Adopt ``arrays`` as the global model (fixes the parameter layout on first use)."""
        state = arrays.to_torch_state_dict()
        if self.spec is None:
            self.spec = ParamSpec.of(state)
            c = self.compression
            self.compressor = make_compressor(c["name"], self.spec.dim, k=c.get("k") or None,
                                              density=c.get("density") or None, unbiased=bool(c.get("unbiased")),
                                              sizes=self.spec.sizes)
            self.state = self.init_state(self.spec.dim)
            self.pipeline.init(self.spec.dim)
            self.decoder = ReplyDecoder(self.spec, self.compressor, self.directory, self.dense_expected,
                                        self.message_bits,
                                        (lambda: self.params) if self.full_weights and not self.asynchronous else None)
        self.params = self.spec.flatten(state)
