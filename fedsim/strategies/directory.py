"""Which node hosts which client.

Flower node ids are transient random integers and the server never sees a node's ``partition-id``
(reference/flower.md §3.5), yet FedAU counters, AFA-CS memory and participation limits need stable
client ids. ``ClientDirectory`` learns the map with one QUERY message per node.
"""

from __future__ import annotations

import logging
import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from ..runtime import protocol as P

log = logging.getLogger("fedsim")


class ClientDirectory:
    def __init__(self, num_clients: int):
        self.num_clients = num_clients
        self.node_of: dict[int, int] = {}    # client id -> node id
        self.client_of: dict[int, int] = {}  # node id -> client id
        self.num_examples: dict[int, int] = {}  # client id -> training examples (as the node reported)

    @property
    def complete(self) -> bool:
        return len(self.node_of) == self.num_clients

    def discover(self, grid: Grid, timeout: float | None = 60.0) -> None:
        """Ask every unknown node for its partition id; fail loudly if clients are missing.

        Nodes of a real deployment (Flower SuperNodes) may still be registering: wait up to
        ``timeout`` wall seconds until the grid lists at least ``num_clients`` nodes, as Flower's
        ``FedAvg`` waits for ``min_available_nodes``.
        """
        deadline = time.monotonic() + (timeout or 0.0)
        node_ids = list(grid.get_node_ids())
        while len(node_ids) < self.num_clients and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = list(grid.get_node_ids())
        unknown = [n for n in node_ids if n not in self.client_of]
        if unknown:
            msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in unknown]
            for reply in grid.send_and_receive(msgs, timeout=timeout):
                if reply.has_error():
                    log.warning("node %s did not say which client it hosts: %s", reply.metadata.src_node_id,
                                reply.error.reason)
                    continue
                metrics = reply.content[P.METRICS]
                cid = int(metrics["partition-id"])
                self.add(reply.metadata.src_node_id, cid)
                if "num-examples" in metrics:
                    self.num_examples[cid] = int(metrics["num-examples"])
        if not self.complete:
            missing = sorted(set(range(self.num_clients)) - set(self.node_of))
            raise RuntimeError(f"{len(missing)} of {self.num_clients} clients are not connected "
                               f"(first missing ids: {missing[:10]})")

    def add(self, node_id: int, client: int) -> None:
        if not 0 <= client < self.num_clients:
            raise ValueError(f"node {node_id} claims unknown client {client} (expected 0..{self.num_clients - 1})")
        old = self.node_of.get(client)
        if old is not None and old != node_id:
            self.client_of.pop(old, None)  # the client reconnected from another node
        self.node_of[client] = node_id
        self.client_of[node_id] = client
