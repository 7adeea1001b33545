"""Decoding the clients' replies of a round into a ``Cohort`` of flat tensors.

Two reply forms are read: fedsim's (the update under ``update``, with ``partition-id``,
``server-round``, ``local-steps`` and ``num-examples`` metrics) and a standard Flower ClientApp's
(the trained weights under ``arrays`` and ``num-examples``; synchronous strategies only: the update
is the weights minus the model sent, the client is the node's, the round is the current one and
local-steps counts as 1).

Malformed replies are rejected one by one, naming the reason in the log, and never reach the
strategy: error replies, a missing or non-numeric metric, NaN/Inf, absurdly long (norm > 1e8) or
wrong-shaped updates, a sparse update where a dense one is due (or the reverse), a claimed round in
the future, fewer than one local step, a sample count that is not finite, below 1 or above what the
client registered with, an unknown client, or a node answering for a client it does not host. Any
exception while reading an answer rejects that answer only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Message

from ..core.compression import Compressor, from_sparse
from ..core.params import ParamSpec
from ..runtime import protocol as P
from ..runtime.directory import ClientDirectory

log = logging.getLogger("fedsim")

MAX_UPDATE_NORM = 1e8  # no honest update of a float32 model is this long; longer ones are rejected


@dataclass(frozen=True)
class Cohort:
    clients: torch.Tensor       # int64 [K]
    updates: torch.Tensor       # float32 [K, D]
    num_examples: torch.Tensor  # float64 [K]
    local_steps: torch.Tensor   # int64 [K]
    model_round: torch.Tensor   # int64 [K], the round whose global model the client trained on
    bits: torch.Tensor          # int64 [K], uplink bits of each message (the compressor's exact count)
    train_loss: torch.Tensor | None = None  # float64 [K], the clients' mean local training loss (NaN: not sent)

    def mean_train_loss(self) -> float | None:
        """Mean of the training losses the clients reported (None when none did)."""
        if self.train_loss is None:
            return None
        sent = self.train_loss[torch.isfinite(self.train_loss)]
        return float(sent.mean()) if sent.numel() else None

    def replace(self, **changes) -> "Cohort":
        return dataclasses.replace(self, **changes)

    @classmethod
    def empty(cls, dim: int) -> "Cohort":
        none = torch.zeros(0, dtype=torch.int64)
        return cls(none, torch.zeros(0, dim), torch.zeros(0, dtype=torch.float64), none, none, none)


@dataclass
class ReplyDecoder:
    spec: ParamSpec
    compressor: Compressor
    directory: ClientDirectory
    dense_expected: Callable[[int], bool]  # whether client cid's answer is due dense (else values + indices)
    message_bits: Callable[[int], int]     # uplink bits of client cid's answer
    sent_model: Callable[[], torch.Tensor] | None = None  # synchronous strategies: the model this round sent

    def decode(self, server_round: int, replies: list[Message]) -> tuple[Cohort, list[str]]:
        """``(cohort of the valid replies, why each rejected one was rejected)``."""
        rows, rejected = [], []
        for msg in replies:
            try:
                rows.append(self._read(server_round, msg))
            except Exception as exc:  # noqa: BLE001 - whatever a peer sends, it is a rejection, never a crash
                reason = f"node {msg.metadata.src_node_id}: {type(exc).__name__}: {exc}"
                rejected.append(reason)
                log.warning("round %d: rejected the answer of %s", server_round, reason)
        if not rows:
            return Cohort.empty(self.spec.dim), rejected
        cids, updates, n, steps, rnd, bits, loss = zip(*rows)
        return Cohort(torch.tensor(cids), torch.stack(updates), torch.tensor(n, dtype=torch.float64),
                      torch.tensor(steps), torch.tensor(rnd), torch.tensor(bits), torch.tensor(loss, dtype=torch.float64)), rejected

    def _read(self, server_round: int, msg: Message) -> tuple:
        if msg.has_error():
            raise ValueError(f"client error: {msg.error.reason}")
        metrics = msg.content[P.METRICS]
        node = msg.metadata.src_node_id
        if "partition-id" in metrics:
            cid = int(metrics["partition-id"])
        elif (cid := self.directory.client_of(node)) is None:  # a standard ClientApp: the node is the client
            raise ValueError(f"node {node} sent no partition-id and hosts no known client")
        if self.directory.node_of.get(cid) != node:
            raise ValueError(f"node {node} answered for client {cid}, which it does not host")
        arrays = msg.content.array_records
        if P.UPDATE in arrays:
            update = self._read_update(cid, arrays[P.UPDATE])
        elif P.ARRAYS in arrays:
            update = self._full_weights(cid, arrays[P.ARRAYS])
        else:
            raise ValueError(f"the answer has no ArrayRecord '{P.UPDATE}' (or '{P.ARRAYS}'); it has "
                             f"{sorted(msg.content.keys())}")
        if not torch.isfinite(update).all():
            raise ValueError("update contains NaN or Inf")
        model_round = int(metrics.get("server-round", server_round))  # Flower's ClientApps do not say
        if not 0 < model_round <= server_round:
            raise ValueError(f"update claims to be computed on round {model_round} (now {server_round})")
        steps = int(metrics.get("local-steps", 1))
        if steps < 1:
            raise ValueError(f"local-steps must be >= 1, got {steps}")
        if float(update.double().norm()) > MAX_UPDATE_NORM:  # finite but absurd: would overflow the sum
            raise ValueError(f"update norm {float(update.double().norm()):.3g} exceeds {MAX_UPDATE_NORM:g}")
        loss = metrics.get("train-loss")  # optional and informative only: a bad one is dropped, not the answer
        loss = float(loss) if isinstance(loss, (int, float)) else float("nan")
        return cid, update, self._num_examples(cid, metrics), steps, model_round, self.message_bits(cid), loss

    def _num_examples(self, cid: int, metrics) -> float:
        """The claimed sample count: a finite number >= 1, and no more than the client reported when it
        registered (its shard), so one client cannot take over a sample-weighted average."""
        n = metrics["num-examples"]
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n < 1:
            raise ValueError(f"num-examples must be a finite number >= 1, got {n!r}")
        registered = self.directory.num_examples.get(cid)
        if registered is not None and n > registered:
            raise ValueError(f"num-examples {n:g} exceeds the {registered} examples client {cid} registered with")
        return float(n)

    def _full_weights(self, cid: int, record: ArrayRecord) -> torch.Tensor:
        """Flower's convention: the trained model under ``arrays``; the update is it minus the model sent."""
        if self.sent_model is None:
            raise ValueError("this strategy does not read full-weight answers (under 'arrays'): it needs a "
                             "synchronous round and no fedsim-only client protocol; send an 'update'")
        if not self.dense_expected(cid):
            raise ValueError(f"client {cid} sent full weights where a {self.compressor.name} update is due")
        try:
            weights = self.spec.flatten(record.to_torch_state_dict())
        except Exception as exc:  # noqa: BLE001 - missing or foreign tensors: a named rejection
            raise ValueError(f"the weights under 'arrays' do not fit the model: {exc}") from None
        return weights.float() - self.sent_model()

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
