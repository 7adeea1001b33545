"""In-process runtime: a Flower ``Grid`` whose clients live in this process, on a virtual clock.

Pushing a TRAIN message computes the client's answer at once (every TRAIN message pushed together
is handed to the client handler as one cohort) but *delivers* it only when the virtual clock reaches
``push time + sim-latency``. ``pull_messages`` returns what has arrived by now, so an algorithm
that stops waiting early (AFA-CD) sees late answers in later rounds, computed on the model they were
sent. ``pull_until`` advances the clock event by event until enough answers are in; it is what a
synchronous round's ``send_and_receive`` uses too. Node ids are random 63-bit integers drawn from
the seed, as in Flower; each node has one persistent ``Context`` holding its partition id, created
the first time the node is contacted, so a population of N = 100,000 clients costs a few [N] arrays
until clients train. ``close()`` stops the handler's worker processes (``client.workers``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from . import protocol as P
from .grid import ArrivalQueue, FedsimGrid


def set_task_identity(run_id: int) -> None:
    """``Message(...)`` outside Flower's runtimes needs the process-global task identity."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID


class AppHandler:
    """Drive a plain Flower ``ClientApp`` one message at a time (no cohort batching). The client
    handler interface the in-process grid uses: ``query``, ``train`` (a cohort), ``num_examples``
    (None: unknown), ``state_dict`` / ``load_state_dict`` (None: kept in the node Contexts), ``close``."""

    def __init__(self, app):
        self.app = app

    def query(self, msg: Message, context: Context) -> Message:
        return self._call(msg, context)

    def train(self, messages, contexts) -> list[Message]:
        return [self._call(m, c) for m, c in zip(messages, contexts)]

    evaluate = train  # one call per message either way

    def _call(self, msg: Message, context: Context) -> Message:
        """The app's reply; an exception (e.g. no handler for QUERY) becomes an error reply, as
        Flower's runtimes send back when a ClientApp raises."""
        try:
            return self.app(msg, context)
        except Exception as exc:  # noqa: BLE001 - the client's failure is the server's information
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"),
                           reply_to=msg)

    def num_examples(self) -> None:
        return None

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state) -> None:
        pass

    def close(self) -> None:
        pass


def client_node_ids(num_clients: int, seed: int) -> list[int]:
    """Node id of each virtual client (random 63-bit integers drawn from the seed, as in Flower);
    the gRPC runtime assigns the same ids, so both runtimes route identically."""
    rng = np.random.default_rng([seed, 0x6E6F6465])
    return [int(i) for i in rng.choice(np.iinfo(np.int64).max - 2, size=num_clients, replace=False) + 2]


class RunGrid(Grid):
    """The run bookkeeping and message factory every fedsim Grid shares (set ``self._run`` in __init__)."""

    _run: Run

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)


class _Contexts(dict):
    """A dict of node Contexts that creates one on first lookup (``make(node_id)``)."""

    def __init__(self, make):
        super().__init__()
        self._make = make

    def __missing__(self, node_id: int) -> Context:
        ctx = self[node_id] = self._make(node_id)
        return ctx


class InProcessGrid(RunGrid, FedsimGrid):
    def __init__(self, handler, num_clients: int, *, seed: int = 0, run_id: int = 1, run_config: dict | None = None):
        self.node_ids = np.asarray(client_node_ids(num_clients, seed), dtype=np.int64)  # [N], node of client i
        self._order = np.argsort(self.node_ids)  # node ids sorted, for node -> client lookups
        self._sorted = self.node_ids[self._order]
        self.contexts = _Contexts(self._new_context)  # node id -> Context, made on first use: O(contacted)
        self._run_id, self._run_config, self.num_clients = run_id, dict(run_config or {}), num_clients
        self.handler = handler
        self._run = Run.create_empty(run_id)
        self.arrivals = ArrivalQueue()  # every answer is in at once; it is *due* at push time + latency
        self._seq = itertools.count()
        set_task_identity(run_id)

    @property
    def now(self) -> float:
        return self.arrivals.now

    def client_of(self, node_id: int) -> int | None:
        """The client (partition id) hosted by ``node_id``, or None for an unknown node."""
        i = int(np.searchsorted(self._sorted, node_id))
        return int(self._order[i]) if i < len(self._sorted) and self._sorted[i] == node_id else None

    def client_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(node id [N], training examples [N])`` of client 0..N-1 without a QUERY message per client,
        when the handler can tell client sizes (``ClientHandler``); None for a plain Flower ClientApp."""
        sizes = self.handler.num_examples()
        return None if sizes is None else (self.node_ids.copy(), np.asarray(sizes, dtype=np.int64))

    def close(self) -> None:
        """Release what the clients hold outside this process (worker processes); idempotent."""
        self.handler.close()

    # --- Flower Grid API -------------------------------------------------------------------------
    def get_node_ids(self) -> Iterable[int]:
        return self.node_ids.tolist()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids, train = [], []
        for msg in messages:
            if self.client_of(msg.metadata.dst_node_id) is None:
                raise ValueError(f"unknown node {msg.metadata.dst_node_id}: no such client in this federation")
            seq = next(self._seq)
            msg.metadata.__dict__["_message_id"] = mid = f"{self._run.run_id}-{seq}"
            ids.append(mid)
            if msg.metadata.message_type.startswith(MessageType.TRAIN):
                self.arrivals.expect(mid, float(msg.content[P.CONFIG].get(P.SIM_LATENCY, 0.0)), seq)
                train.append(msg)
            elif msg.metadata.message_type.startswith(MessageType.QUERY):
                self.arrivals.expect(mid, 0.0, seq)
                self.arrivals.arrive(mid, self.handler.query(msg, self._context(msg)))
            elif msg.metadata.message_type.startswith(MessageType.EVALUATE):  # a Flower strategy's evaluation
                self.arrivals.expect(mid, 0.0, seq)
                self.arrivals.arrive(mid, self.handler.evaluate([msg], [self._context(msg)])[0])
            else:
                raise ValueError(f"the in-process runtime does not handle '{msg.metadata.message_type}' messages")
        if train:
            replies = self.handler.train(train, [self._context(m) for m in train])
            for msg, reply in zip(train, replies):
                self.arrivals.arrive(msg.metadata.message_id, reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The wanted answers that are due by now on the virtual clock."""
        return self.arrivals.take(self.arrivals.arrived_by_now(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return self.pull_until(ids, len(ids), timeout=timeout)

    # --- virtual clock ---------------------------------------------------------------------------
    def pull_until(self, message_ids: Iterable[str], min_replies: int, *, timeout: float | None = None,
                   window: float | None = None) -> list[Message]:
        """Advance the virtual clock until ``min_replies`` of ``message_ids`` are due (``ArrivalQueue.ready``).

        ``timeout`` (or ``window``: the same here) is in virtual seconds from now; answers due later
        stay queued, and the clock stops at the deadline.
        """
        limit = window if window is not None else timeout
        cap = None if limit is None else self.now + limit
        return self.arrivals.take(self.arrivals.ready(list(message_ids), min_replies, cap))

    def outstanding(self) -> set[str]:
        return set(self.arrivals.due)

    def forget(self, message_ids: Iterable[str]) -> None:
        self.arrivals.forget(message_ids)

    def state_dict(self) -> dict:
        """Clock, id counter, the answers still travelling (as Flower protobuf bytes) and the clients'
        own state (error-feedback vectors)."""
        seq = next(self._seq)
        self._seq = itertools.count(seq)
        return {"seq": seq, "arrivals": self.arrivals.state_dict(), "clients": self.handler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._seq = itertools.count(int(state["seq"]))
        self.arrivals.load_state_dict(state["arrivals"])
        if state.get("clients") is not None:
            self.handler.load_state_dict(state["clients"])

    def _context(self, msg: Message) -> Context:
        return self.contexts[msg.metadata.dst_node_id]

    def _new_context(self, nid: int) -> Context:
        cid = self.client_of(nid)
        if cid is None:
            raise KeyError(nid)
        return Context(run_id=self._run_id, node_id=nid, state=RecordDict(), run_config=dict(self._run_config),
                       node_config={"partition-id": cid, "num-partitions": self.num_clients})
