"""Shared machinery of fedsim's Flower strategies; subclasses only supply ``server_update``.

A ``FedsimStrategy`` is a ``flwr.serverapp.strategy.Strategy``: it works in a user's own ServerApp
through ``Strategy.start`` (synchronous rounds) and in fedsim's round loop
(``fedsim.runtime.loop.run_rounds``), which also supports asynchronous arrival. Per round it

1. asks the participation model (the environment) which idle clients start work, with how many local
   steps and how long their answer takes in virtual time;
2. sends each of them the global model and a per-client config (``fedsim.runtime.protocol``);
3. decodes the replies that arrived into a ``Cohort`` of flat tensors, rejecting malformed ones
   (error replies, wrong shape, NaN/Inf, unknown client, a node answering for another's client)
   without touching the global model;
4. calls the subclass's pure ``server_update`` and returns the new global ``ArrayRecord``.

All state that matters for continuing a run (global vector, in-flight jobs, algorithm state,
participation RNG) is returned by ``state_dict`` and restored by ``load_state_dict``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..core.compression import Compressor, from_sparse, make_compressor
from ..core.params import ParamSpec
from ..local.example_dp import example_epsilon
from ..runtime import protocol as P
from ..stages import ServerPipeline
from .directory import ClientDirectory

log = logging.getLogger("fedsim")


@dataclass(frozen=True)
class Cohort:
    clients: torch.Tensor       # int64 [K]
    updates: torch.Tensor       # float32 [K, D]
    num_examples: torch.Tensor  # float64 [K]
    local_steps: torch.Tensor   # int64 [K]
    model_round: torch.Tensor   # int64 [K], the round whose global model the client trained on
    bits: torch.Tensor          # int64 [K], uplink bits of each message (the compressor's exact count)

    def replace(self, **changes) -> "Cohort":
        return dataclasses.replace(self, **changes)


class FedsimStrategy(Strategy):
    name = "base"
    update_kind = P.UPDATE_DELTA
    asynchronous = False
    m = 1                 # asynchronous strategies: answers a round waits for (round_time = 0)
    round_time = 0.0      # asynchronous strategies: > 0, a round's fixed window of the arrival clock
    feedback = "none"  # client-side error feedback the strategy asks for: none | ef21 | ef14

    def __init__(self, participation, *, local_lr: float, batch_size: int, seed: int, server_lr: float = 1.0,
                 compression: dict | None = None, example_dp: dict | None = None, stages=()):
        if local_lr <= 0 or server_lr <= 0 or batch_size < 1:
            raise ValueError(f"need local_lr > 0, server_lr > 0, batch_size >= 1; got {local_lr}, {server_lr}, {batch_size}")
        self.compression = dict(compression or {"name": "identity"})
        self.compressor: Compressor | None = None  # built once the model dimension is known
        self.example_dp = example_dp  # {noise_multiplier, clip_norm, delta}: clients run DP-SGD (Opacus)
        self.example_steps = torch.zeros(participation.num_clients, dtype=torch.int64)  # DP-SGD steps sent
        self.participation = participation
        self.num_clients = participation.num_clients
        self.local_lr, self.batch_size, self.seed, self.server_lr = local_lr, batch_size, seed, server_lr
        self.directory = ClientDirectory(self.num_clients)
        self.spec: ParamSpec | None = None
        self.params: torch.Tensor | None = None
        self.in_flight: dict[int, int] = {}  # client id -> round it was sent work
        self.pipeline = ServerPipeline(stages)  # server stages around server_update (user-level DP, momentum)

    # --- subclass hooks --------------------------------------------------------------------------
    def init_state(self, dim: int) -> None:
        """Create algorithm state for a model of dimension ``dim`` (called once)."""

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def noisy_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, noise: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """``server_update`` with ``noise`` [D] added to the strategy's sum of (clipped) contributions,
        before its normalisation; drawn by the user-level DP stage. A strategy whose new model is not
        a post-processing of such a sum keeps this default, and the DP stage refuses it."""
        raise NotImplementedError(f"strategy {self.name} has no noisy sum for user-level DP")

    def weight_bound(self) -> float:
        """An a-priori bound on the weight of one clipped answer in the strategy's sum (the DP noise
        is scaled by it so that each round's sum stays a Gaussian mechanism with multiplier z)."""
        return 1.0

    def algorithm_state(self) -> dict:
        return {}

    def load_algorithm_state(self, state: dict) -> None:
        pass

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

    def summary_fields(self, rounds_done: int) -> dict:
        """What the strategy and its stages add to ``summary.json`` (e.g. epsilon, repair counters)."""
        return self.pipeline.summary(rounds_done)

    def row_fields(self, metrics: dict) -> dict:
        """What the stages add to a ``metrics.jsonl`` row (e.g. epsilon, delta, mechanism)."""
        return self.pipeline.row_fields(metrics)

    def dense_expected(self, cid: int) -> bool:
        """Whether client ``cid``'s next answer is a dense vector (else values + indices)."""
        return not self.compressor.sparse

    def message_bits(self, cid: int) -> int:
        """Uplink bits of client ``cid``'s answer, counted from what the server asked it to send."""
        return self.compressor.bits

    def example_dp_config(self) -> dict:
        if not self.example_dp:
            return {}
        return {P.EXAMPLE_DP_NOISE: float(self.example_dp["noise_multiplier"]),
                P.EXAMPLE_DP_CLIP: float(self.example_dp["clip_norm"])}

    def example_epsilon(self) -> float:
        """Worst client's example-level epsilon so far (steps it was asked to run, q = batch / n_i).

        Epsilon grows with the step count, so per data size only the busiest client is accounted."""
        most_steps: dict[int, int] = {}  # n_i -> most steps of any client holding n_i examples
        for c in torch.nonzero(self.example_steps).flatten().tolist():
            n = max(self.directory.num_examples.get(c, 1), 1)
            most_steps[n] = max(most_steps.get(n, 0), int(self.example_steps[c]))
        return max((example_epsilon(self.example_dp["noise_multiplier"], self.batch_size / n, steps,
                                    self.example_dp["delta"]) for n, steps in most_steps.items()), default=0.0)

    def uplink_config(self) -> dict:
        if self.compressor.name == "identity" and self.feedback == "none":
            return {}
        return {P.COMPRESSOR: self.compressor.name, P.COMPRESS_K: self.compressor.k,
                P.COMPRESS_UNBIASED: self.compressor.unbiased, P.ERROR_FEEDBACK: self.feedback}

    # --- Flower Strategy API ---------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self.bind(arrays)
        if not self.directory.complete:
            self.directory.discover(grid)
        available = torch.ones(self.num_clients, dtype=torch.bool)
        available[list(self.in_flight)] = False
        plan = self.participation.sample(server_round, available.numpy())
        base = {**dict(config), "server-round": server_round, "lr": self.local_lr, "batch-size": self.batch_size,
                "seed": self.seed, "update-kind": self.update_kind, **self.uplink_config(),
                **self.example_dp_config()}
        messages = []
        for cid, steps, latency in zip(plan.clients.tolist(), plan.local_steps.tolist(), plan.latency.tolist()):
            cfg = {**base, "local-steps": int(steps), P.SIM_LATENCY: float(latency)}
            messages.append(Message(P.train_content(arrays, cfg), dst_node_id=self.directory.node_of[cid],
                                    message_type=MessageType.TRAIN, group_id=str(server_round)))
            self.in_flight[cid] = server_round
            if self.example_dp:
                self.example_steps[cid] += int(steps)  # spent once the client trains, answer or not
        self.pipeline.on_send(server_round, plan.clients.tolist())
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.params is None:
            raise RuntimeError("aggregate_train before configure_train: the strategy has no global model yet")
        cohort, rejected = self._decode(server_round, list(replies))
        for cid in cohort.clients.tolist():
            self.in_flight.pop(cid, None)
        if not self.asynchronous:
            self.in_flight.clear()
        before = self.algorithm_state()  # references: server_update replaces state, never mutates it
        stages_before = self.pipeline.state_dict()
        if self.pipeline:
            new_params, metrics = self.pipeline.aggregate(self, server_round, self.params, cohort)
        else:
            new_params, metrics = self.server_update(server_round, self.params, cohort)
        if not torch.isfinite(new_params).all():
            self.load_algorithm_state(before)
            self.pipeline.load_state_dict(stages_before)
            raise FloatingPointError(f"round {server_round}: the aggregated model is not finite; "
                                     "the previous global model and strategy state are kept (lower the learning rates)")
        self.params = new_params
        staleness = (server_round - cohort.model_round).double()
        metrics.update({"participants": int(cohort.clients.numel()), "server/rejected": rejected,
                        "server/staleness_mean": float(staleness.mean()) if staleness.numel() else 0.0,
                        "server/staleness_max": int(staleness.max()) if staleness.numel() else 0,
                        "comm/bits_up": int(cohort.bits.sum())})
        if self.example_dp:
            metrics["dp/example_epsilon"] = self.example_epsilon()
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
    def state_dict(self) -> dict:
        return {"params": self.params, "in_flight": dict(self.in_flight), "example_steps": self.example_steps.clone(),
                "participation": self.participation.state_dict(), "algorithm": self.algorithm_state(),
                "stages": self.pipeline.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.params = state["params"]
        if self.spec is not None and self.params is not None and self.params.shape != (self.spec.dim,):
            raise ValueError(f"checkpoint model has {self.params.numel()} parameters, this model has {self.spec.dim}")
        self.in_flight = {int(k): int(v) for k, v in state["in_flight"].items()}
        self.example_steps = state["example_steps"].clone()
        self.participation.load_state_dict(state["participation"])
        if self.params is not None and self.spec is not None:
            self.init_state(self.spec.dim)
            self.pipeline.init(self.spec.dim)
        self.load_algorithm_state(state["algorithm"])
        self.pipeline.load_state_dict(state.get("stages", {}))

    # --- helpers ---------------------------------------------------------------------------------
    def bind(self, arrays: ArrayRecord) -> None:
        """Adopt ``arrays`` as the global model (fixes the parameter layout on first use)."""
        state = arrays.to_torch_state_dict()
        if self.spec is None:
            self.spec = ParamSpec.of(state)
            c = self.compression
            self.compressor = make_compressor(c["name"], self.spec.dim, k=c.get("k") or None,
                                              density=c.get("density") or None, unbiased=bool(c.get("unbiased")))
            self.init_state(self.spec.dim)
            self.pipeline.init(self.spec.dim)
        self.params = self.spec.flatten(state)

    def _decode(self, server_round: int, replies: list[Message]) -> tuple[Cohort, int]:
        rows, rejected = [], 0
        for msg in replies:
            try:
                rows.append(self._read(server_round, msg))
            except (KeyError, ValueError, TypeError) as exc:
                rejected += 1
                log.warning("round %d: rejected the answer of node %s: %s", server_round,
                            msg.metadata.src_node_id, exc)
        dim = self.spec.dim
        if not rows:
            empty = torch.zeros(0, dtype=torch.int64)
            return Cohort(empty, torch.zeros(0, dim), torch.zeros(0, dtype=torch.float64), empty, empty, empty), rejected
        cids, updates, n, steps, rnd, bits = zip(*rows)
        return Cohort(torch.tensor(cids), torch.stack(updates), torch.tensor(n, dtype=torch.float64),
                      torch.tensor(steps), torch.tensor(rnd), torch.tensor(bits)), rejected

    def _read(self, server_round: int, msg: Message) -> tuple:
        if msg.has_error():
            raise ValueError(f"client error: {msg.error.reason}")
        metrics = msg.content[P.METRICS]
        cid = int(metrics["partition-id"])
        if self.directory.node_of.get(cid) != msg.metadata.src_node_id:
            raise ValueError(f"node {msg.metadata.src_node_id} answered for client {cid}, which it does not host")
        update = self._read_update(cid, msg.content[P.UPDATE])
        if not torch.isfinite(update).all():
            raise ValueError("update contains NaN or Inf")
        model_round = int(metrics["server-round"])
        if not 0 < model_round <= server_round:
            raise ValueError(f"update claims to be computed on round {model_round} (now {server_round})")
        steps = int(metrics["local-steps"])
        if steps < 1:
            raise ValueError(f"local-steps must be >= 1, got {steps}")
        return cid, update, float(metrics["num-examples"]), steps, model_round, self.message_bits(cid)

    def _read_update(self, cid: int, record: ArrayRecord) -> torch.Tensor:
        dense = self.dense_expected(cid)
        if P.is_sparse(record):
            if dense:
                raise ValueError(f"client {cid} sent a sparse update where a dense one is due")
            return from_sparse(*P.read_sparse(record), self.spec.dim, self.compressor.k)
        if not dense:
            raise ValueError(f"client {cid} sent a dense update where a {self.compressor.name} "
                             f"(k={self.compressor.k}) one is due")
        update = P.read_flat(record)
        if update.shape != (self.spec.dim,):
            raise ValueError(f"update has {update.numel()} values, the model has {self.spec.dim}")
        return update
