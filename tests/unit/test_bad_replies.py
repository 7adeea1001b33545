"""Malformed answers are rejected by name and never touch the global model."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from fedsim.runtime import protocol as P

from conftest import tiny_config
from helpers import federation


def _round_with(mutate):
    cfg, strategy, grid, arrays = federation(tiny_config(participation={"name": "full"}))
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    replies = grid.send_and_receive(messages)
    before = strategy.params.clone()
    replies = mutate(list(replies), strategy)
    new_arrays, metrics = strategy.aggregate_train(1, replies)
    return before, strategy, metrics


@pytest.mark.parametrize("case", ["nan", "shape", "wrong-node", "unknown-client"])
def test_bad_answer_is_rejected_and_others_are_used(case):
    def mutate(replies, strategy):
        bad = replies[0]
        metrics = bad.content[P.METRICS]
        if case == "nan":
            v = bad.content[P.UPDATE][P.UPDATE].numpy().copy()
            v[3] = np.nan
            bad.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: Array(v)})
        elif case == "shape":
            bad.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: Array(np.zeros(5, np.float32))})
        elif case == "wrong-node":
            other = (int(metrics["partition-id"]) + 1) % strategy.num_clients
            bad.content[P.METRICS] = MetricRecord({**dict(metrics), "partition-id": other})
        else:
            bad.content[P.METRICS] = MetricRecord({**dict(metrics), "partition-id": 999})
        return replies

    before, strategy, metrics = _round_with(mutate)
    assert metrics["server/rejected"] == 1
    assert metrics["participants"] == strategy.num_clients - 1
    assert not torch.equal(strategy.params, before)


@pytest.mark.parametrize("case,reason", [
    ("num-examples=-1", "num-examples"), ("num-examples=nan", "num-examples"),
    ("num-examples=1e30", "exceeds the"), ("partition-id=inf", "OverflowError"), ("server-round=inf", "OverflowError"),
    ("local-steps=nan", "ValueError"), ("huge", "update norm"), ("record-type", "update"),
])
def test_a_hostile_answer_is_one_rejection_not_a_crash(case, reason):
    """What a node with a valid token once used to stop or steer a server: each is now one rejection
    naming the reason, and the other answers are aggregated."""
    def mutate(replies, strategy):
        bad = replies[0]
        metrics = dict(bad.content[P.METRICS])
        if "=" in case:
            key, value = case.split("=")
            bad.content[P.METRICS] = MetricRecord({**metrics, key: float(value)})
        elif case == "huge":
            bad.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: Array(np.full(strategy.spec.dim, 3e38, np.float32))})
        else:  # the update sent as a MetricRecord instead of an ArrayRecord
            del bad.content[P.UPDATE]
            bad.content[P.UPDATE] = MetricRecord({"update": 1.0})
        return replies

    before, strategy, metrics = _round_with(mutate)
    assert metrics["server/rejected"] == 1 and reason in strategy.rejections[0]
    assert metrics["participants"] == strategy.num_clients - 1
    assert torch.isfinite(strategy.params).all() and not torch.equal(strategy.params, before)


def test_all_answers_bad_keeps_the_model():
    def mutate(replies, strategy):
        for r in replies:
            r.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: Array(np.zeros(3, np.float32))})
        return replies

    before, strategy, metrics = _round_with(mutate)
    assert metrics["server/rejected"] == strategy.num_clients and metrics["participants"] == 0
    assert torch.equal(strategy.params, before)


def test_client_rejects_unknown_partition_with_an_error_reply():
    cfg, strategy, grid, arrays = federation(tiny_config())
    msg = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))[0]
    ctx = grid.contexts[msg.metadata.dst_node_id]
    ctx.node_config["partition-id"] = 77
    reply = grid.handler.train([msg], [ctx])[0]
    assert reply.has_error() and "unknown client" in reply.error.reason


def test_diverging_aggregate_keeps_model_and_strategy_state(monkeypatch):
    monkeypatch.setattr("fedsim.strategies.replies.MAX_UPDATE_NORM", float("inf"))  # the last line of defense
    cfg, strategy, grid, arrays = federation(tiny_config(**{"strategy.name": "fedau", "participation": {"name": "full"}}))
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    replies = list(grid.send_and_receive(messages))
    for r in replies:  # finite but overflowing once summed in float32
        r.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: Array(np.full(strategy.spec.dim, 3e38, np.float32))})
    params, counts = strategy.params.clone(), strategy.state["interval_count"].clone()
    with pytest.raises(FloatingPointError, match="not finite"):
        strategy.aggregate_train(1, replies)
    assert torch.equal(strategy.params, params) and torch.equal(strategy.state["interval_count"], counts)


def test_a_run_whose_answers_are_all_rejected_fails_loudly(tmp_path, capsys, monkeypatch):
    """No exit 0 with an unchanged model: the run stops naming the first reason; the rows so far stay."""
    import fedsim.experiments.run as run_mod
    from fedsim.cli import main
    from fedsim.experiments.run import NoValidAnswers, run_single
    from fedsim.experiments.setup import load as load_config, load_client_data, make_handler
    from fedsim.runtime.inprocess import InProcessGrid

    class WrongShape:  # a client that answers in a protocol fedsim does not speak
        def __init__(self, handler):
            self.inner = handler

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def train(self, messages, contexts):
            replies = self.inner.train(messages, contexts)
            for r in replies:
                r.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: Array(np.zeros(3, np.float32))})
            return replies

    cfg = load_config(tiny_config(rounds=3))
    grid = InProcessGrid(WrongShape(make_handler(cfg, load_client_data(cfg))), 8, seed=cfg.seed)
    with pytest.raises(NoValidAnswers, match=r"round 1: all 4 answers were rejected, the first because node \d+: "
                                             r"ValueError: update has 3 values"):
        run_single(cfg, tmp_path, progress=False, grid=grid)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1

    def failing(cfg, out, **kw):
        run_single(cfg, out, progress=False, grid=InProcessGrid(WrongShape(make_handler(cfg, load_client_data(cfg))),
                                                                8, seed=cfg.seed))

    monkeypatch.setattr(run_mod, "run_config", failing)
    config = tmp_path / "tiny.toml"
    import tomli_w
    config.write_text(tomli_w.dumps(tiny_config(rounds=3)))
    assert main(["run", str(config), "--out", str(tmp_path / "cli"), "--quiet"]) == 2
    assert "all 4 answers were rejected" in capsys.readouterr().err
