"""``GrpcGrid``: a Flower ``Grid`` whose clients are remote node processes (fedsim's gRPC runtime).

Every virtual client is its own Flower node id (the same ids as the in-process runtime, drawn from
the seed), with its ``Context`` kept by the node process that hosts it; one node process answers for
many. ``push_messages`` serializes each message once (Flower protobuf) into the outbox of its node
id; node processes long-poll their outboxes (``take``) and push replies (``accept``), which are
checked here before any strategy sees them: the sender's session must own the destination node of
the message it answers, each message is answered once, and late answers to forgotten messages are
dropped. Every refusal is counted (``transport_stats``) and logged.

Arrival order: with ``arrival="virtual"`` (default) a reply is due at push time + its
``sim-latency`` on a virtual clock, in the same ``ArrivalQueue`` as ``InProcessGrid`` uses;
``pull_until`` waits (wall clock) until every answer due by the ``need``-th earliest due time is
physically in, so synchronous and asynchronous strategies (AFA-CD) see the same answers in the same
order as under ``fedsim run``.
With ``arrival="wall"`` answers count in the order they really arrive. Either way a wall-clock
``round_timeout`` bounds every wait: a dead node delays a round, never hangs it.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from flwr.app import Error, Message, MessageType
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module
from flwr.supercore.run import Run

from . import protocol as P
from .grid import ArrivalQueue, FedsimGrid
from .inprocess import RunGrid, client_node_ids, set_task_identity
from .security import NodeToken, TokenBook

log = logging.getLogger("fedsim.grpc")

MAX_POLLS_PER_SESSION = 4  # a node polls one at a time; a few more cover a retry racing a slow reply
MAX_STRIKES = 20  # refused replies (foreign, duplicate, unknown, oversized) before a session is ended


class Refused(Exception):
    """A node request the server turns down; ``kind`` names the counter, ``code`` the gRPC status."""

    def __init__(self, kind: str, reason: str, code: str = "PERMISSION_DENIED"):
        super().__init__(reason)
        self.kind, self.reason, self.code = kind, reason, code


@dataclass
class _Request:
    dst: int
    seq: int         # push order
    data: bytes      # the serialized Flower message
    owner: str | None = None  # session it was delivered to (None: still in the outbox)


@dataclass
class _Session:
    name: str
    nodes: set[int] = field(default_factory=set)
    last_seen: float = field(default_factory=time.monotonic)
    told_done: bool = False
    polls: int = 0  # long polls now open (bounded: one session must not hold every server thread)
    strikes: int = 0  # replies refused for this session's own fault (foreign, duplicate, unknown, oversized)


class GrpcGrid(RunGrid, FedsimGrid):
    def __init__(self, num_clients: int, *, seed: int = 0, run_id: int = 1, config: dict | None = None,
                 tokens: TokenBook | None = None, arrival: str = "virtual", round_timeout: float = 120.0,
                 sizes=None):
        if arrival not in ("virtual", "wall"):
            raise ValueError(f"arrival must be 'virtual' or 'wall', got '{arrival}'")
        self.num_clients, self.config, self.tokens = num_clients, dict(config or {}), tokens
        self.arrival, self.round_timeout = arrival, float(round_timeout)
        self.node_ids = client_node_ids(num_clients, seed)
        # training examples of every client, when the server knows the partition (fedsim server does: it is
        # defined by the experiment): the strategies then map clients without asking the nodes, and a
        # node's claimed sample count is checked against the true one
        self.sizes = None if sizes is None else np.asarray(sizes, dtype=np.int64)
        self.client_of = {nid: cid for cid, nid in enumerate(self.node_ids)}
        self.arrivals = ArrivalQueue()  # due times, push order, answers in, overdue requests
        self.done = False
        self.stats: Counter = Counter()
        self._t0 = time.monotonic()
        self.registered_s: float | None = None  # seconds until every client was registered (wait_for_nodes)
        self._run = Run.create_empty(run_id)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._sessions: dict[str, _Session] = {}
        self._owner: dict[int, str] = {}          # node id -> session id
        self._outbox: dict[int, list[str]] = {}   # node id -> message ids not yet delivered
        self._requests: dict[str, _Request] = {}  # message id -> request still awaiting pull
        self._arrived: dict[str, int] = {}        # message id -> arrival order (wall mode)
        self._forgotten: set[str] = set()
        self._replaced: set[str] = set()          # sessions that lost every node to a newer one
        self._disconnected: set[str] = set()      # sessions ended for repeated refused replies
        set_task_identity(run_id)

    @property
    def now(self) -> float:
        return self.arrivals.now

    def client_table(self):
        """``(node id [N], training examples [N])`` when the partition is known (see ``sizes``)."""
        if self.sizes is None or len(self.sizes) != self.num_clients:
            return None
        return np.asarray(self.node_ids, dtype=np.int64), self.sizes.copy()

    # --- Flower Grid API -------------------------------------------------------------------------
    def get_node_ids(self) -> Iterable[int]:
        with self._cond:
            return sorted(self._owner, key=self.client_of.__getitem__)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        with self._cond:
            for msg in messages:
                dst = msg.metadata.dst_node_id
                if dst not in self.client_of:
                    raise ValueError(f"unknown node {dst}: no such client in this federation")
                seq = next(self._seq)
                msg.metadata.__dict__["_message_id"] = mid = f"{self._run.run_id}-{seq}"
                latency = 0.0
                config = msg.content.config_records.get(P.CONFIG)
                if msg.metadata.message_type.startswith(MessageType.TRAIN) and config is not None:
                    latency = float(config.get(P.SIM_LATENCY, 0.0))
                self.arrivals.expect(mid, latency, seq)
                self._requests[mid] = _Request(dst, seq, message_to_proto(msg).SerializeToString())
                self._outbox.setdefault(dst, []).append(mid)
                ids.append(mid)
            self._cond.notify_all()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Every wanted reply that is in (the virtual clock moves to the latest one's due time)."""
        with self._cond:
            mids = [m for m in message_ids if m in self.arrivals.replies]
            return self._take(sorted(mids, key=self._order))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return self.pull_until(ids, len(ids), timeout=timeout)

    # --- waiting ---------------------------------------------------------------------------------
    def pull_until(self, message_ids: Iterable[str], min_replies: int, *, timeout: float | None = None,
                   window: float | None = None) -> list[Message]:
        """Wait for ``min_replies`` answers among ``message_ids`` (see the module docstring).

        ``timeout`` is wall-clock seconds (default ``round_timeout``); after it, what is in comes back.
        ``window`` ends the wait after that many seconds of the arrival clock (virtual, as in the
        in-process grid, or wall), with whatever is due by then.
        """
        deadline = time.monotonic() + (self.round_timeout if timeout is None else timeout)
        cap = None
        if window is not None and self.arrival == "wall":
            deadline = min(deadline, time.monotonic() + window)
        elif window is not None:
            cap = self.arrivals.now + window
        with self._cond:
            wanted = [m for m in message_ids if m in self._requests]
            while True:
                ready = self._ready(wanted, min_replies, cap)
                if ready is not None:
                    return self._take(ready)
                left = deadline - time.monotonic()
                if left <= 0:
                    return self._take(self._late(wanted, min_replies))
                self._cond.wait(min(left, 1.0))

    def _ready(self, wanted: list[str], need: int, cap: float | None = None) -> list[str] | None:
        q = self.arrivals
        if self.arrival == "virtual":
            return q.ready(wanted, need, cap)
        alive = [m for m in wanted if m in self._requests and (m not in q.overdue or m in q.replies)]
        got = sorted((m for m in alive if m in q.replies), key=self._order)
        return got if len(got) >= min(need, len(alive)) else None

    def _late(self, wanted: list[str], need: int) -> list[str]:
        q = self.arrivals
        if self.arrival == "virtual":
            got = q.settle(wanted, need)
        else:
            got = sorted((m for m in wanted if m in q.replies), key=self._order)
            q.overdue.update(m for m in wanted if m in q.due and m not in q.replies)
        log.warning("waited %.1f s: %d of %d answers needed are in; going on without the rest",
                    self.round_timeout, len(got), need)
        self.stats["timeouts"] += 1
        return got

    def _order(self, mid: str):
        if self.arrival == "wall":
            return self._arrived.get(mid, 0), self._requests[mid].seq
        return self.arrivals.order(mid)

    def _take(self, mids: list[str]) -> list[Message]:
        for mid in mids:
            self._requests.pop(mid)
            self._arrived.pop(mid, None)
        out = self.arrivals.take(mids)
        if self.arrival == "wall":
            self.arrivals.now = time.monotonic() - self._t0
        return out

    def forget(self, message_ids: Iterable[str]) -> None:
        """Stop waiting for these messages: undelivered ones are withdrawn, late answers dropped."""
        with self._cond:
            message_ids = list(message_ids)
            self.arrivals.forget(message_ids)
            for mid in message_ids:
                req = self._requests.pop(mid, None)
                if req is not None:
                    self._forgotten.add(mid)
                    if req.owner is None and mid in self._outbox.get(req.dst, []):
                        self._outbox[req.dst].remove(mid)

    def wait_for_nodes(self, timeout: float, report_every: float = 10.0) -> bool:
        """Block until every virtual client is registered (False after ``timeout`` seconds); every
        ``report_every`` seconds log how many are missing and which."""
        start = time.monotonic()
        deadline, next_report = start + timeout, start + report_every
        with self._cond:
            while len(self._owner) < self.num_clients:
                now = time.monotonic()
                if now >= deadline:
                    return False
                if now >= next_report:
                    log.warning("waiting for clients: %d of %d registered after %.0f s; missing %s",
                                len(self._owner), self.num_clients, now - start, self._missing())
                    next_report = now + report_every
                self._cond.wait(max(0.0, min(deadline, next_report) - now))
            if self.registered_s is None:
                self.registered_s = time.monotonic() - self._t0
        return True

    def _missing(self, show: int = 10) -> str:
        """The first missing client ids, as ranges (call with the lock held)."""
        have = {self.client_of[n] for n in self._owner}
        missing = [c for c in range(self.num_clients) if c not in have]
        ranges, start = [], None
        for i, c in enumerate(missing):
            if start is None:
                start = c
            if i + 1 == len(missing) or missing[i + 1] != c + 1:
                ranges.append(f"{start}" if start == c else f"{start}-{c}")
                start = None
        return ", ".join(ranges[:show]) + (", ..." if len(ranges) > show else "")

    def close(self) -> None:
        """The run is over: nodes polling from now on are told to exit."""
        with self._cond:
            self.done = True
            self._cond.notify_all()

    def polling_sessions(self, within: float = 15.0) -> int:
        """Sessions seen in the last ``within`` s that have not yet been told the run is over."""
        now = time.monotonic()
        with self._cond:
            return sum(1 for s in self._sessions.values() if not s.told_done and now - s.last_seen < within)

    def transport_stats(self) -> dict:
        with self._cond:
            out = dict(self.stats)
            if self.registered_s is not None:
                out["registered_s"] = round(self.registered_s, 3)  # grid start -> every client registered
            return out

    def outstanding(self) -> set[str]:
        with self._cond:
            return set(self._requests)

    # --- node side (called from gRPC worker threads) ----------------------------------------------
    def authenticate(self, token: str, peer: str = "?") -> NodeToken | None:
        """The token's entry (None without a token book: loopback test mode); raises ``Refused``.
        Called before the request body is read."""
        if self.tokens is None:
            return None
        entry = self.tokens.check(token)
        if entry is None:
            self._refuse("unauthenticated", f"refused node at {peer}: unknown token", "UNAUTHENTICATED")
        return entry

    def check_session(self, sid: str) -> None:
        """Raise ``Refused`` for an unknown or replaced session (before a Push body is read)."""
        with self._cond:
            self._session(sid)

    def register(self, entry: NodeToken | None, clients: list[int], peer: str = "?") -> tuple[str, dict]:
        """Register an authenticated node (``authenticate``) for ``clients``."""
        name = entry.name if entry else f"node@{peer}"
        bad = [c for c in clients if not 0 <= c < self.num_clients]
        if bad or not clients:
            self._refuse("bad_registration", f"refused {name}: clients {bad[:5] or '[]'} not in 0..{self.num_clients - 1}",
                         "INVALID_ARGUMENT")
        if entry is not None and not set(clients) <= entry.clients:
            self._refuse("unauthorized_clients", f"refused {name}: its token does not cover clients "
                         f"{sorted(set(clients) - entry.clients)[:5]}")
        sid = secrets.token_hex(16)
        with self._cond:
            nodes = {self.node_ids[c] for c in clients}
            taken: dict[str, int] = {}  # previous owner's name -> clients taken from it
            for nid in nodes:
                old = self._owner.get(nid)
                if old is not None and old != sid:
                    previous = self._sessions[old].name if old in self._sessions else "an ended session"
                    taken[previous] = taken.get(previous, 0) + 1
                    self._release(old, nid)
                self._owner[nid] = sid
            for previous, count in taken.items():  # a restarted node, or someone else holding a valid token
                log.warning("%s at %s took over %d clients from %s", name, peer, count, previous)
            self._sessions[sid] = _Session(name, nodes)
            self._cond.notify_all()
        log.info("%s registered %d clients", name, len(nodes))
        return sid, {"nodes": {str(c): self.node_ids[c] for c in clients}, "run_id": self._run.run_id,
                     "num_clients": self.num_clients, "config": self.config}

    def take(self, sid: str, wait: float) -> tuple[bool, list[bytes]]:
        """Messages for the session's nodes (blocks up to ``wait`` s); ``(done, messages)``."""
        deadline = time.monotonic() + wait
        with self._cond:
            session = self._session(sid)
            if session.polls >= MAX_POLLS_PER_SESSION:
                self._refuse("too_many_polls", f"refused a poll of {session.name}: {session.polls} already open",
                             "RESOURCE_EXHAUSTED")
            session.polls += 1
            try:
                while True:
                    session = self._session(sid)
                    session.last_seen = time.monotonic()
                    mids = [m for nid in session.nodes for m in self._outbox.pop(nid, [])]
                    if mids or self.done or time.monotonic() >= deadline:
                        break
                    self._cond.wait(max(0.0, min(deadline - time.monotonic(), 1.0)))
            finally:
                session.polls -= 1
            out = []
            for mid in sorted(mids, key=lambda m: self._requests[m].seq):
                self._requests[mid].owner = sid
                out.append(self._requests[mid].data)
            session.told_done = self.done and not out
            return session.told_done, out

    def accept(self, sid: str, data: bytes, max_bytes: int | None = None) -> None:
        """Check and store a reply; raises ``Refused`` (and counts it) when it is not acceptable.

        A reply over ``max_bytes`` from the rightful node is refused too, but an error reply takes
        its place, so the strategy counts it as rejected and the round does not wait for it.
        """
        try:
            reply = message_from_proto(ProtoMessage.FromString(data))
        except Exception as exc:  # noqa: BLE001 - anything undecodable is refused
            self._refuse("malformed", f"undecodable reply: {exc}", "INVALID_ARGUMENT")
        meta = reply.metadata
        with self._cond:
            session = self._session(sid)
            mid = meta.reply_to_message_id
            req = self._requests.get(mid)
            if req is None:
                kind = "late" if mid in self._forgotten else "unknown_message"
                if kind != "late":
                    self._strike(sid, session)
                self._refuse(kind, f"{session.name}: reply to {kind.replace('_', ' ')} '{mid}' dropped",
                             "FAILED_PRECONDITION", warn=kind != "late")
            if req.dst != meta.src_node_id or req.dst not in session.nodes:
                self._strike(sid, session)
                self._refuse("foreign", f"refused reply from {session.name}: message {mid} went to node {req.dst}, "
                             f"not to node {meta.src_node_id} of this session")
            if mid in self.arrivals.replies:
                self._strike(sid, session)
                self._refuse("duplicate", f"{session.name}: message {mid} was already answered", "ALREADY_EXISTS")
            too_big = max_bytes is not None and len(data) > max_bytes
            if too_big:
                reason = f"reply of {len(data)} bytes is over the {max_bytes}-byte limit"
                reply = Message(metadata=reply.metadata, error=Error(code=413, reason=reason))
            self.arrivals.arrive(mid, reply)
            self._arrived[mid] = next(self._seq)
            self.stats["replies"] += 1
            self._cond.notify_all()
            if too_big:
                self._strike(sid, session)
                self._refuse("oversized", f"refused {session.name}: {reason}", "RESOURCE_EXHAUSTED")

    def count(self, kind: str) -> None:
        with self._cond:
            self.stats[kind] += 1

    def _session(self, sid: str) -> _Session:
        session = self._sessions.get(sid)
        if session is None and sid in self._disconnected:
            self._refuse("disconnected_session", "request from a session ended for repeated refused replies")
        if session is None and sid in self._replaced:
            self._refuse("replaced_session", "request from a session whose clients another node took over", "ABORTED")
        if session is None:
            self._refuse("unknown_session", "request from an unknown or replaced session", "UNAUTHENTICATED")
        return session

    def _release(self, sid: str, nid: int) -> None:
        """Node ``nid`` moves to a new session: what its old session got but did not answer is redelivered."""
        session = self._sessions.get(sid)
        if session is not None:
            session.nodes.discard(nid)
            if not session.nodes:
                del self._sessions[sid]
                self._replaced.add(sid)
        again = [m for m, r in self._requests.items()
                 if r.dst == nid and r.owner == sid and m not in self.arrivals.replies]
        for mid in again:
            self._requests[mid].owner = None
        self._outbox[nid] = sorted(set(self._outbox.get(nid, [])) | set(again), key=lambda m: self._requests[m].seq)

    def _strike(self, sid: str, session: _Session) -> None:
        """Count a refused reply against the session; at ``MAX_STRIKES`` the session is ended (its clients
        released, the node named in the log): it must register again to go on (call with the lock held)."""
        session.strikes += 1
        if session.strikes < MAX_STRIKES:
            return
        for nid in list(session.nodes):
            if self._owner.get(nid) == sid:
                del self._owner[nid]
            self._release(sid, nid)
        self._sessions.pop(sid, None)
        self._replaced.discard(sid)
        self._disconnected.add(sid)
        self.stats["disconnected"] += 1
        log.warning("disconnected %s after %d refused replies; its clients wait for a new registration",
                    session.name, session.strikes)

    def _refuse(self, kind: str, reason: str, code: str = "PERMISSION_DENIED", warn: bool = True):
        self.stats[kind] += 1
        (log.warning if warn else log.info)(reason)
        raise Refused(kind, reason, code)

    # --- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Clock, id counter, requests still awaiting an answer and answers not yet pulled (as Flower
        protobuf bytes). Client-side state lives in the node processes, not here."""
        with self._cond:
            seq = next(self._seq)
            self._seq = itertools.count(seq)
            return {"seq": seq, "arrivals": self.arrivals.state_dict(),
                    "requests": {m: (r.dst, r.seq, r.data) for m, r in self._requests.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore; requests that were out are sent again (nodes answer deterministically)."""
        with self._cond:
            self._seq = itertools.count(int(state["seq"]))
            self.arrivals.load_state_dict(state["arrivals"])
            self._requests = {m: _Request(int(d), int(s), b) for m, (d, s, b) in state["requests"].items()}
            self._outbox = {}
            for mid in sorted(set(self._requests) - set(self.arrivals.replies), key=lambda m: self._requests[m].seq):
                self._outbox.setdefault(self._requests[mid].dst, []).append(mid)
            self._cond.notify_all()
