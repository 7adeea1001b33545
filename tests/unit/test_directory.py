"""Client discovery: nodes that do not answer the first QUERY are asked again until the deadline."""

import pytest
from flwr.app import Message, MetricRecord, RecordDict

from fedsim.runtime import protocol as P
from fedsim.runtime.inprocess import set_task_identity
from fedsim.runtime.directory import ClientDirectory


class SlowStartGrid:
    """Three nodes; the first round of queries only reaches node 11 (the others are still starting)."""

    nodes = {11: 0, 12: 1, 13: 2}

    def __init__(self):
        self.calls = 0

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, timeout=None):
        self.calls += 1
        out = []
        for m in messages:
            nid = m.metadata.dst_node_id
            if self.calls == 1 and nid != 11:
                continue
            reply = Message(RecordDict({P.METRICS: MetricRecord({"partition-id": self.nodes[nid], "num-examples": 5})}),
                            reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = nid
            out.append(reply)
        return out


def test_discovery_asks_silent_nodes_again():
    set_task_identity(1)
    grid = SlowStartGrid()
    d = ClientDirectory(3)
    d.discover(grid, timeout=30)
    assert d.complete and grid.calls == 2
    assert [d.node_of[c] for c in range(3)] == [11, 12, 13]


def test_discovery_without_answers_fails_naming_the_missing_clients():
    set_task_identity(1)

    class Silent(SlowStartGrid):
        def send_and_receive(self, messages, timeout=None):
            return []

    with pytest.raises(RuntimeError, match=r"3 of 3 clients are not connected"):
        ClientDirectory(3).discover(Silent(), timeout=0.5)


class HostileQueryGrid(SlowStartGrid):
    """Node 12 answers the QUERY with an infinite partition id, node 13 with an absurd sample count."""

    def send_and_receive(self, messages, timeout=None):
        bad = {12: {"partition-id": float("inf"), "num-examples": 5}, 13: {"partition-id": 2, "num-examples": 1e30}}
        return [Message(RecordDict({P.METRICS: MetricRecord(bad.get(m.metadata.dst_node_id, {"partition-id": 0,
                                                                                              "num-examples": 5}))}),
                        reply_to=m) for m in messages]


def test_malformed_query_answers_name_the_node_and_never_crash_discovery(caplog):
    """They count as nodes that did not name their client: like ClientApps without a QUERY handler,
    they are numbered by node id when exactly as many clients are unknown."""
    set_task_identity(1)
    directory = ClientDirectory(3)
    directory.discover(HostileQueryGrid(), timeout=None)
    assert [directory.node_of[c] for c in range(3)] == [11, 12, 13]
    assert 13 not in [directory.node_of[c] for c in directory.num_examples.keys()]  # its 1e30 was not kept
    assert "node 12 sent an unreadable QUERY answer" in caplog.text and "node 13" in caplog.text
