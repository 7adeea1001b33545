"""gRPC runtime faults on 127.0.0.1: malformed answers, a node dying mid-round, a server crash + --resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message

from fedsim.experiments.setup import load as load_config
from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load_client_data, make_handler
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.runtime import protocol as P
from fedsim.runtime.node import Node

from conftest import tiny_config
from grpc_harness import NodeThread, ServerThread, split


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


class RogueNode(Node):
    """Corrupts the answers of clients 0-4: NaN, float64, wrong shape, over fedsim's size limit, and
    over the transport's own cap (gRPC refuses it before fedsim sees it; the node then sends a small
    error reply, so the round does not wait for the timeout)."""

    def answer(self, messages):
        replies = super().answer(messages)
        for reply in replies:
            if reply.has_error() or P.UPDATE not in reply.content.array_records:
                continue
            cid = int(reply.content[P.METRICS]["partition-id"])
            update = reply.content[P.UPDATE][P.UPDATE].numpy().copy()
            bad = {0: np.full_like(update, np.nan), 1: update.astype(np.float64), 2: update[:-1],
                   3: np.zeros(20_000, dtype=np.float32), 4: np.zeros(400_000, dtype=np.float32)}.get(cid)
            if bad is not None:
                reply.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: Array(bad)})
        return replies


def test_malformed_answers_are_rejected_counted_and_never_aggregated(tmp_path):
    raw = tiny_config(rounds=4, eval_every=1, **{"participation.clients_per_round": 8})
    server = ServerThread(raw, tmp_path / "g", max_message_mb=0.02, round_timeout=20)
    nodes = [NodeThread(server.address, range(0, 5), node_cls=RogueNode), NodeThread(server.address, range(5, 8))]
    summary = server.result(60)  # 4 rounds; waiting for a dropped reply would take 20 s each
    assert [n.join(20) for n in nodes] == [0, 0]
    rows = _rows(tmp_path / "g" / "metrics.jsonl")
    assert [r["server/rejected"] for r in rows] == [5] * 4   # every round: NaN, dtype, shape, oversized x 2
    assert [r["participants"] for r in rows] == [3] * 4
    assert summary["transport"]["oversized"] == 4
    # The run equals an in-process one in which clients 0-3 answer with errors: nothing of theirs got in.
    cfg = load_config(raw)
    data = load_client_data(cfg)
    grid = InProcessGrid(ErrorsFor(make_handler(cfg, data), {0, 1, 2, 3, 4}), 8, seed=cfg.seed)
    run_single(cfg, tmp_path / "ref", progress=False, grid=grid)
    assert rows == _rows(tmp_path / "ref" / "metrics.jsonl")


class ErrorsFor:
    """In-process handler whose clients in ``bad`` answer every TRAIN message with an error."""

    def __init__(self, handler, bad):
        self.handler, self.bad = handler, bad

    def __getattr__(self, name):  # the rest of the handler interface (num_examples, state, close)
        return getattr(self.handler, name)

    def query(self, msg, context):
        return self.handler.query(msg, context)

    def train(self, messages, contexts):
        replies = self.handler.train(messages, contexts)
        return [Message(Error(code=400, reason="bad"), reply_to=m) if int(c.node_config["partition-id"]) in self.bad
                else r for m, c, r in zip(messages, contexts, replies)]


class DyingNode(Node):
    """Stops for good (no answer, no more polls) when it receives work for round ``die_at``."""

    die_at = 2

    def answer(self, messages):
        rounds = {int(m.content[P.CONFIG]["server-round"]) for m in messages if P.CONFIG in m.content.config_records}
        if self.die_at in rounds:
            self.stop()
            return []
        return super().answer(messages)


def test_node_dying_mid_round_times_out_and_a_new_node_takes_over(tmp_path):
    raw = tiny_config(rounds=4, eval_every=1, **{"participation.clients_per_round": 8})
    server = ServerThread(raw, tmp_path / "g", round_timeout=2.0)
    dying = NodeThread(server.address, range(0, 4), node_cls=DyingNode)
    healthy = NodeThread(server.address, range(4, 8))
    assert dying.join(30) == 0  # it stopped itself in round 2
    metrics, deadline = tmp_path / "g" / "metrics.jsonl", time.monotonic() + 30
    while time.monotonic() < deadline and not (metrics.exists() and len(_rows(metrics)) >= 2):
        time.sleep(0.05)  # round 2 ends by its timeout, with the healthy node's answers only
    replacement = NodeThread(server.address, range(0, 4))  # reconnects the same clients
    summary = server.result(60)
    assert healthy.join(20) == 0 and replacement.join(20) == 0
    rows = _rows(tmp_path / "g" / "metrics.jsonl")
    assert [r["participants"] for r in rows] == [8, 4, 8, 8]
    assert summary["transport"]["timeouts"] >= 1


def test_a_node_that_reconnects_mid_round_gets_its_work_again(tmp_path):
    raw = tiny_config(rounds=3, eval_every=1, **{"participation.clients_per_round": 8})
    server = ServerThread(raw, tmp_path / "g", round_timeout=30.0)
    dying = NodeThread(server.address, range(0, 4), node_cls=DyingNode)
    healthy = NodeThread(server.address, range(4, 8))
    assert dying.join(30) == 0
    replacement = NodeThread(server.address, range(0, 4))  # before the timeout: round 2 is redelivered
    summary = server.result(60)
    assert healthy.join(20) == 0 and replacement.join(20) == 0
    assert [r["participants"] for r in _rows(tmp_path / "g" / "metrics.jsonl")] == [8, 8, 8]
    assert summary["transport"].get("timeouts", 0) == 0


def test_asynchronous_run_waits_for_a_dead_node_once(tmp_path):
    """AFA-CD: work sent to a node that died stays in flight but holds up only one round."""
    raw = tiny_config(rounds=5, eval_every=1, participation={"name": "anarchic", "p": 0.9, "max_steps": 3},
                      **{"strategy.name": "afa-cd", "strategy.m": 2})
    server = ServerThread(raw, tmp_path / "g", round_timeout=1.5)
    dying = NodeThread(server.address, range(0, 4), node_cls=DyingNode)
    healthy = NodeThread(server.address, range(4, 8))
    summary = server.result(60)
    assert dying.join(10) == 0 and healthy.join(20) == 0
    assert len(_rows(tmp_path / "g" / "metrics.jsonl")) == 5
    assert 1 <= summary["transport"]["timeouts"] <= 2


@pytest.mark.parametrize("name, participation, extra", [
    pytest.param("fedavg", {"name": "uniform", "clients_per_round": 4}, {}, marks=pytest.mark.slow),  # ef21's path
    ("afa-cd", {"name": "anarchic", "p": 0.7, "max_steps": 5, "speed_spread": 1.0}, {"strategy.m": 2}),  # in flight
    # client state on the nodes, 1-2 updates ahead of the checkpoint: they step back to it
    ("ef21", {"name": "uniform", "clients_per_round": 6},  # EF21-SGDM: g_i and v_i
     {"compression": {"name": "top-k", "density": 0.2}, "strategy.ef_momentum": 0.5}),
    pytest.param("afa-cs", {"name": "anarchic", "p": 0.7, "max_steps": 5, "speed_spread": 1.0}, {"strategy.m": 2},
                 marks=pytest.mark.slow),
])
def test_server_crash_and_resume_equals_uninterrupted(tmp_path, monkeypatch, name, participation, extra):
    raw = tiny_config(rounds=6, eval_every=1, checkpoint_every=2, participation=participation,
                      **{"strategy.name": name, **extra})
    run_single(load_config(raw), tmp_path / "straight", progress=False)

    import fedsim.experiments.run as run_mod
    original = run_mod.run_rounds

    def crashing(*args, on_round, **kw):  # the server dies right after round 5 (checkpoint at 4)
        def wrapped(res, arrays):
            on_round(res, arrays)
            if res.round == 5:
                raise KeyboardInterrupt
        return original(*args, on_round=wrapped, **kw)

    monkeypatch.setattr(run_mod, "run_rounds", crashing)
    first = ServerThread(raw, tmp_path / "g")
    nodes = [NodeThread(first.address, r, max_wait=30) for r in split(8, 2)]
    with pytest.raises(KeyboardInterrupt):
        first.result(60)
    monkeypatch.setattr(run_mod, "run_rounds", original)
    # Same port; the nodes are still running and reconnect by themselves.
    second = ServerThread(raw, tmp_path / "g", resume=True, address=first.address)
    second.result(60)
    assert [n.join(30) for n in nodes] == [0, 0]
    assert _rows(tmp_path / "g" / "metrics.jsonl") == _rows(tmp_path / "straight" / "metrics.jsonl")


@pytest.mark.slow
def test_killed_client_process_round_completes_and_node_reconnects(tmp_path, request):
    """Real processes: SIGKILL one `fedsim client` mid-run; the round times out, a restarted one continues."""
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("slow (~20 s of process start-ups on 2 cores): run with -m slow")
    raw = tiny_config(rounds=6, eval_every=1, **{"participation.clients_per_round": 8})
    server = ServerThread(raw, tmp_path / "g", round_timeout=3.0, wait_nodes=120)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

    def client(clients):
        return subprocess.Popen([sys.executable, "-m", "fedsim", "client", "--server", server.address, "--clients",
                                 clients, "--insecure", "--max-wait", "30"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    procs = [client("0-3"), client("4-7")]
    try:
        deadline = time.monotonic() + 120
        metrics = tmp_path / "g" / "metrics.jsonl"
        while time.monotonic() < deadline and not (metrics.exists() and len(_rows(metrics)) >= 1):
            time.sleep(0.05)
        os.kill(procs[0].pid, signal.SIGKILL)  # our own child, by PID
        procs[0].wait(10)
        # restart only once a round has given up on the dead node (else its work is simply redelivered)
        while time.monotonic() < deadline and not server.grid.transport_stats().get("timeouts"):
            time.sleep(0.05)
        procs.append(client("0-3"))
        summary = server.result(180)
        assert [p.wait(30) for p in procs[1:]] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    rows = _rows(tmp_path / "g" / "metrics.jsonl")
    assert len(rows) == 6 and min(r["participants"] for r in rows) < 8 and rows[-1]["participants"] == 8
    assert summary["transport"]["timeouts"] >= 1


class HostileNode(Node):
    """A node with a valid token whose clients 0-7 each send one answer that used to stop or steer a
    `fedsim server`: bad sample counts, infinite ids, the wrong record type, huge values, a lying header."""

    def answer(self, messages):
        from flwr.app import MetricRecord

        replies = super().answer(messages)
        for reply in replies:
            if reply.has_error():
                continue
            metrics = dict(reply.content[P.METRICS])
            cid = int(metrics["partition-id"])
            update = reply.content[P.UPDATE][P.UPDATE].numpy()
            if cid in (0, 1, 2, 3, 4):
                key, value = {0: ("num-examples", -1.0), 1: ("num-examples", float("nan")),
                              2: ("num-examples", 1e30), 3: ("partition-id", float("inf")),
                              4: ("server-round", float("inf"))}[cid]
                reply.content[P.METRICS] = MetricRecord({**metrics, key: value})
            elif cid == 5:  # the update as a MetricRecord
                del reply.content[P.UPDATE]
                reply.content[P.UPDATE] = MetricRecord({"update": 1.0})
            elif cid == 6:
                reply.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: Array(np.full_like(update, 3e38))})
            elif cid == 7:  # 192 bytes whose header claims 2^31 - 1 floats (8 GiB)
                fake = Array(dtype="float32", shape=(2**31 - 1,), stype="numpy.ndarray", data=b"\x00" * 192)
                reply.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: fake})
        return replies


def test_a_hostile_node_with_a_valid_token_cannot_stop_or_steer_the_server(tmp_path):
    raw = tiny_config(rounds=3, eval_every=1, **{"data.num_clients": 10, "participation": {"name": "full"}})
    server = ServerThread(raw, tmp_path / "g", round_timeout=20)
    nodes = [NodeThread(server.address, range(0, 8), node_cls=HostileNode), NodeThread(server.address, range(8, 10))]
    summary = server.result(90)  # the server finishes its rounds
    assert [n.join(20) for n in nodes] == [0, 0]
    rows = _rows(tmp_path / "g" / "metrics.jsonl")
    assert [(r["participants"], r["server/rejected"]) for r in rows] == [(2, 8)] * 3
    assert summary["final_accuracy"] > 0.3 and np.isfinite(summary["final_loss"])


@pytest.mark.parametrize("name, keeps_state", [("ef21", False), ("ef21", True), ("afa-cs", False)])
def test_a_restarted_node_without_its_clients_state_is_refused_and_with_it_continues(tmp_path, name, keeps_state):
    """EF21's g_i live in the node. A replacement node that lost them is refused by name (its answers
    would break g = mean g_i); one restored from --state-dir continues exactly, as if nothing happened.
    AFA-CS's memory of every client's answer is the server's: a bare replacement node continues exactly."""
    extra = {"compression": {"name": "top-k", "density": 0.2}} if name == "ef21" else {"strategy.m": 4}
    raw = tiny_config(rounds=3, eval_every=1, **{"participation.clients_per_round": 8, "strategy.name": name, **extra})
    state = {"state_dir": str(tmp_path / "state")} if keeps_state else {}
    server = ServerThread(raw, tmp_path / "g", round_timeout=30.0)
    dying = NodeThread(server.address, range(0, 4), node_cls=DyingNode, name="node-a", **state)
    healthy = NodeThread(server.address, range(4, 8))
    assert dying.join(30) == 0
    replacement = NodeThread(server.address, range(0, 4), name="node-a", **state)  # the same clients
    server.result(60)
    assert healthy.join(20) == 0 and replacement.join(20) == 0
    rows = _rows(tmp_path / "g" / "metrics.jsonl")
    if keeps_state or name == "afa-cs":
        run_single(load_config(raw), tmp_path / "ref", progress=False)
        assert rows == _rows(tmp_path / "ref" / "metrics.jsonl")
    else:
        assert [(r["participants"], r["server/rejected"]) for r in rows] == [(8, 0), (4, 4), (4, 4)]
