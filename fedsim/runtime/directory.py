"""Which node hosts which client.

Flower node ids are transient random integers and the server never sees a node's ``partition-id``
(a ClientApp reads it from its node config), yet FedAU counters, AFA-CS memory and participation limits need stable
client ids. ``ClientDirectory`` learns the map with one QUERY message per node. On fedsim's
in-process grid, which assigned the partition ids itself, it reads the map in one call instead
(``InProcessGrid.client_table``): at N = 100,000 the QUERY round costs ~40 s and ~400 MB of Flower
messages, the table ~2 ms and 1.6 MB.

The maps are ``[N]`` arrays behind a small dict-like view (``ClientMap``), 9 bytes per client.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from . import protocol as P
from .grid import FedsimGrid

log = logging.getLogger("fedsim")


class ClientMap:
    """``client id -> int`` for clients 0..N-1, stored as an ``[N]`` array plus a ``known`` mask;
    reads like a dict (``get``, ``[]``, ``in``, ``len``, ``values``, ``items``). Node ids are Flower's
    unsigned 64-bit integers, hence ``dtype``."""

    def __init__(self, num_clients: int, dtype=np.int64):
        self.array = np.zeros(num_clients, dtype=dtype)
        self.known = np.zeros(num_clients, dtype=bool)

    def __contains__(self, cid) -> bool:
        return 0 <= int(cid) < len(self.array) and bool(self.known[int(cid)])

    def get(self, cid, default=None):
        return int(self.array[int(cid)]) if cid in self else default

    def __getitem__(self, cid) -> int:
        if cid not in self:
            raise KeyError(cid)
        return int(self.array[int(cid)])

    def __setitem__(self, cid, value) -> None:
        self.array[int(cid)] = int(value)
        self.known[int(cid)] = True

    def set_all(self, values: np.ndarray) -> None:
        self.array[:] = values
        self.known[:] = True

    def __len__(self) -> int:
        return int(np.count_nonzero(self.known))

    def keys(self) -> list[int]:
        return np.flatnonzero(self.known).tolist()

    def values(self) -> list[int]:
        return self.array[self.known].tolist()

    def items(self) -> list[tuple[int, int]]:
        keys = self.keys()
        return list(zip(keys, self.array[keys].tolist()))


class ClientDirectory:
    def __init__(self, num_clients: int):
        self.num_clients = num_clients
        self.node_of = ClientMap(num_clients, np.uint64)  # client id -> node id
        self.num_examples = ClientMap(num_clients)  # client id -> training examples (as the node reported)
        self.refused: set[int] = set()  # nodes that answered the QUERY with an error (no partition id)

    @property
    def complete(self) -> bool:
        return bool(self.node_of.known.all())

    def discover(self, grid: Grid, timeout: float | None = 180.0) -> None:
        """Ask every unknown node for its partition id; fail loudly if clients are missing.

        Nodes of a real deployment (Flower SuperNodes) may still be registering: wait up to
        ``timeout`` wall seconds until the grid lists at least ``num_clients`` nodes, as Flower's
        ``FedAvg`` waits for ``min_available_nodes``, and keep asking the nodes that have not
        answered until then (under load, Flower's simulation answers the first queries slowly).
        """
        table = grid.client_table() if isinstance(grid, FedsimGrid) else None
        if table is not None and len(table[0]) == self.num_clients:
            self.node_of.set_all(table[0])
            self.num_examples.set_all(table[1])
            return
        deadline = time.monotonic() + (timeout or 0.0)
        node_ids = list(grid.get_node_ids())
        while len(node_ids) < self.num_clients and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = list(grid.get_node_ids())
        while True:  # ask the nodes not heard from yet, again until the deadline (slow simulation start-ups)
            known = np.isin(np.asarray(node_ids, dtype=np.uint64), self.node_of.array[self.node_of.known])
            unknown = [n for n, k in zip(node_ids, known) if not k]
            left = deadline - time.monotonic()
            if not unknown or (left <= 0 and timeout):
                break
            self._query(grid, unknown, max(left, 1.0) if timeout else None)
            if timeout is None or self.complete or self.refused.issuperset(unknown):
                break
            time.sleep(0.5)
            node_ids = list(grid.get_node_ids())
        self._number_the_refusing(node_ids)
        if not self.complete:
            missing = np.flatnonzero(~self.node_of.known)
            raise RuntimeError(f"{missing.size} of {self.num_clients} clients are not connected "
                               f"(first missing ids: {missing[:10].tolist()})")

    def _number_the_refusing(self, node_ids: list[int]) -> None:
        """A standard Flower ClientApp has no QUERY handler, so it never names its client: when the
        nodes that refused are exactly as many as the clients still unknown, the clients are numbered
        in ascending node-id order (stable for the run; each node is then one client)."""
        missing = np.flatnonzero(~self.node_of.known)
        refused = sorted(self.refused.intersection(node_ids))
        if missing.size and len(refused) == missing.size:
            log.warning("%d nodes did not say which client they host (no QUERY handler); clients %d.. are "
                        "numbered by node id", len(refused), int(missing[0]))
            for cid, node in zip(missing.tolist(), refused):
                self.node_of[cid] = node
            self.refused.clear()

    def _query(self, grid, nodes: list[int], timeout: float | None) -> None:
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
        if isinstance(grid, FedsimGrid):
            ids = set(grid.push_messages(msgs))
            replies = grid.pull_until(ids, len(ids), timeout=timeout)
            grid.forget(ids - {r.metadata.reply_to_message_id for r in replies})  # no late answer in a training round
        else:  # a plain Flower grid (Strategy.start in a user's ServerApp): its own blocking call
            replies = grid.send_and_receive(msgs, timeout=timeout)
        for reply in replies:
            if reply.has_error():
                log.info("node %s did not say which client it hosts: %s", reply.metadata.src_node_id,
                         reply.error.reason)
                self.refused.add(int(reply.metadata.src_node_id))
                continue
            try:  # a malformed answer (inf ids, absurd counts, wrong records) names the node, never stops the run
                metrics = reply.content[P.METRICS]
                cid = int(metrics["partition-id"])
                n = metrics.get("num-examples")
                if n is not None and (isinstance(n, bool) or not isinstance(n, (int, float)) or not 1 <= n < 2**53):
                    raise ValueError(f"num-examples {n!r} is not a count")
                self.add(reply.metadata.src_node_id, cid)
            except Exception as exc:  # noqa: BLE001
                log.warning("node %s sent an unreadable QUERY answer (%s: %s); it counts as not naming its client",
                            reply.metadata.src_node_id, type(exc).__name__, exc)
                self.refused.add(int(reply.metadata.src_node_id))
                continue
            if n is not None:
                self.num_examples[cid] = int(n)

    def client_of(self, node_id: int) -> int | None:
        """The client ``node_id`` hosts (reverse lookup), or None."""
        hit = np.flatnonzero(self.node_of.known & (self.node_of.array == np.uint64(node_id)))
        return int(hit[0]) if hit.size else None

    def add(self, node_id: int, client: int) -> None:
        if not 0 <= client < self.num_clients:
            raise ValueError(f"node {node_id} claims unknown client {client} (expected 0..{self.num_clients - 1})")
        self.node_of[client] = node_id  # a client that reconnected from another node replaces the old one
