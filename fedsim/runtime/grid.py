"""The grid interface fedsim's round loop needs, and the one arrival order both fedsim grids use.

``FedsimGrid`` is a Flower ``Grid`` plus what an asynchronous round loop needs to ask of a transport:
an arrival clock (``now``), waiting for a number of answers or a window of that clock
(``pull_until``), the messages still outstanding (``outstanding``: the grid owns them, not the loop),
withdrawing work (``forget``), its state for checkpoints, the client table when the grid assigned the
clients itself, and transport counters. ``InProcessGrid`` and ``GrpcGrid`` implement it;
``as_fedsim_grid`` wraps any other Flower grid (e.g. Flower's own runtimes under ``flwr run``) with
wall-clock polling.

``ArrivalQueue`` is the virtual-clock arrival order, written once: a request pushed at virtual time
``now`` with latency ``L`` is due at ``now + L``; answers are taken in ``(due, push order)`` order;
``ready`` decides which answers a wait returns and where the clock stops. The in-process grid has
every answer as soon as it is pushed; the gRPC grid waits until the due ones are physically in.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Message
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid


class FedsimGrid(Grid):
    """What fedsim's round loop uses beyond Flower's ``Grid`` (see the module docstring)."""

    now: float  # the arrival clock: virtual seconds on fedsim's grids, wall seconds elsewhere

    def pull_until(self, message_ids: Iterable[str], min_replies: int, *, timeout: float | None = None,
                   window: float | None = None) -> list[Message]:
        raise NotImplementedError

    def outstanding(self) -> set[str]:
        """Ids of pushed messages whose answers have not been pulled or forgotten."""
        raise NotImplementedError

    def forget(self, message_ids: Iterable[str]) -> None:
        """Stop waiting for these messages: their late answers are dropped."""
        raise NotImplementedError

    def client_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(node id [N], training examples [N])`` when the grid placed the clients itself, else None."""
        return None

    def transport_stats(self) -> dict | None:
        """Counters of what the transport refused (None: nothing to report)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass


class ArrivalQueue:
    """Outstanding requests on a virtual clock; not thread-safe (the gRPC grid holds its lock)."""

    def __init__(self):
        self.now = 0.0
        self.due: dict[str, tuple[float, int]] = {}  # message id -> (due time, push order)
        self.replies: dict[str, Message] = {}        # message id -> answer that is physically in
        self.overdue: set[str] = set()               # missed a wait: no longer holds up later waits

    def expect(self, mid: str, latency: float, seq: int) -> None:
        if latency < 0:
            raise ValueError(f"negative latency {latency}")
        self.due[mid] = (self.now + latency, seq)

    def arrive(self, mid: str, reply: Message) -> None:
        self.replies[mid] = reply

    def order(self, mid: str) -> tuple[float, int]:
        return self.due[mid]

    def arrived_by_now(self, wanted: Iterable[str]) -> list[str]:
        return sorted((m for m in wanted if m in self.replies and self.due[m][0] <= self.now), key=self.order)

    def ready(self, wanted: Iterable[str], need: int, cap: float | None = None) -> list[str] | None:
        """The answers a wait for ``need`` of ``wanted`` returns, or None while a due one is not in.

        The wait ends at the due time of the ``need``-th earliest answer (or of the last one when
        fewer are outstanding), but not after ``cap`` (the end of a window or virtual timeout); it
        returns every wanted answer due by then and moves the clock there.
        """
        alive = sorted((m for m in wanted if m in self.due and (m not in self.overdue or m in self.replies)),
                       key=self.order)
        horizon = self.now if need <= 0 or not alive else max(self.now, self.due[alive[min(need, len(alive)) - 1]][0])
        if cap is not None:  # a window: stop at its end unless enough answers are due before
            horizon = cap if need > len(alive) else min(horizon, cap)
        due = [m for m in alive if self.due[m][0] <= horizon]
        if not all(m in self.replies for m in due):
            return None
        self.now = max(self.now, horizon)
        return due

    def settle(self, wanted: Iterable[str], need: int) -> list[str]:
        """A wait that timed out before the due answers were in: the answers that are in and due by
        the ``need``-th due time, then later ones up to ``need``; the clock moves past them, and the
        missing ones are marked overdue (they no longer hold up later waits, and count if they come)."""
        wanted = list(wanted)
        got = sorted((m for m in wanted if m in self.replies), key=self.order)
        if got:
            alive = sorted((m for m in wanted if m in self.due), key=self.order)
            horizon = max(self.now, self.due[alive[min(max(need, 1), len(alive)) - 1]][0])
            on_time = [m for m in got if self.due[m][0] <= horizon]
            got = on_time + [m for m in got if m not in on_time][:max(0, need - len(on_time))]
            self.now = max([horizon] + [self.due[m][0] for m in got])
        self.overdue.update(m for m in wanted if m in self.due and m not in self.replies)
        return got

    def take(self, mids: Iterable[str]) -> list[Message]:
        out = []
        for mid in mids:
            due, _ = self.due.pop(mid)
            self.overdue.discard(mid)
            self.now = max(self.now, due)
            out.append(self.replies.pop(mid))
        return out

    def forget(self, mids: Iterable[str]) -> None:
        for mid in mids:
            self.due.pop(mid, None)
            self.replies.pop(mid, None)
            self.overdue.discard(mid)

    def state_dict(self) -> dict:
        return {"now": self.now, "due": dict(self.due),
                "replies": {m: message_to_proto(r).SerializeToString() for m, r in self.replies.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.now = float(state["now"])
        self.due = {m: (float(t), int(s)) for m, (t, s) in state["due"].items()}
        self.replies = {m: message_from_proto(ProtoMessage.FromString(b)) for m, b in state["replies"].items()}
        self.overdue = set()


class PollingGrid(FedsimGrid):
    """Any Flower ``Grid`` (e.g. Flower's simulation or deployment runtime) seen as a ``FedsimGrid``:
    the arrival clock is the wall clock and waits poll ``pull_messages``."""

    def __init__(self, grid: Grid, poll: float = 0.05):
        self.inner, self.poll = grid, poll
        self._t0 = time.monotonic()
        self._outstanding: set[str] = set()

    @property
    def now(self) -> float:
        return time.monotonic() - self._t0

    @property
    def run(self):
        return self.inner.run

    def set_run(self, run_id: int) -> None:
        self.inner.set_run(run_id)

    def create_message(self, *args, **kw) -> Message:
        return self.inner.create_message(*args, **kw)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = list(self.inner.push_messages(messages))
        self._outstanding |= set(ids)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        got = list(self.inner.pull_messages(message_ids))
        self._outstanding -= {m.metadata.reply_to_message_id for m in got}
        return got

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return self.pull_until(ids, len(ids), timeout=timeout)

    def pull_until(self, message_ids, min_replies, *, timeout=None, window=None) -> list[Message]:
        if window is not None:
            timeout = window if timeout is None else min(timeout, window)
        wanted = set(message_ids)
        got: list[Message] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got.extend(self.pull_messages(wanted - {m.metadata.reply_to_message_id for m in got}))
            if len(got) >= min_replies or (deadline is not None and time.monotonic() >= deadline):
                return got
            time.sleep(self.poll)

    def outstanding(self) -> set[str]:
        return set(self._outstanding)

    def forget(self, message_ids: Iterable[str]) -> None:
        self._outstanding -= set(message_ids)  # Flower's Grid cannot withdraw work; late answers are never pulled

    def state_dict(self) -> dict:
        return {"outstanding": sorted(self._outstanding)}

    def load_state_dict(self, state: dict) -> None:
        self._outstanding = set(state.get("outstanding", ()))


def as_fedsim_grid(grid: Grid) -> FedsimGrid:
    return grid if isinstance(grid, FedsimGrid) else PollingGrid(grid)
