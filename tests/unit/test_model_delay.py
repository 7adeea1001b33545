"""Wang & Gao's fixed model delay: slow clients train on the model of exactly D rounds earlier."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from conftest import tiny_config
from fedsim.config import ConfigError
from fedsim.experiments.delay import DelayGrid
from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load as load_config
from fedsim.runtime import protocol as P


class Recorder:
    """A handler that answers with the model value and server-round it was handed."""

    def __init__(self):
        self.seen = []

    def num_examples(self):
        return None

    def train(self, messages, contexts):
        replies = []
        for msg, ctx in zip(messages, contexts):
            value = float(msg.content[P.ARRAYS]["w"].numpy()[0])
            rnd = int(msg.content[P.CONFIG]["server-round"])
            self.seen.append((int(ctx.node_config["partition-id"]), value, rnd))
            replies.append(Message(RecordDict({P.METRICS: MetricRecord({"server-round": rnd})}), reply_to=msg))
        return replies

    def close(self):
        pass

    def state_dict(self):
        return None

    def load_state_dict(self, state):
        pass


def test_slow_clients_get_the_model_of_exactly_d_rounds_ago_and_resume_keeps_the_ring():
    stale = np.array([False, True, False])
    handler = Recorder()
    grid = DelayGrid(handler, 3, stale=stale, delay=2)

    def round_(grid, t):  # the global model of round t is the constant t
        arrays = ArrayRecord(torch_state_dict={"w": torch.full((2,), float(t))})
        msgs = [Message(RecordDict({P.ARRAYS: arrays, P.CONFIG: ConfigRecord({"server-round": t})}),
                        dst_node_id=int(grid.node_ids[c]), message_type=MessageType.TRAIN, group_id=str(t))
                for c in range(3)]
        ids = list(grid.push_messages(msgs))
        return {int(r.content[P.METRICS]["server-round"]) for r in grid.pull_until(ids, 3)}

    for t in range(1, 5):
        round_(grid, t)
    slow = [(v, r) for c, v, r in handler.seen if c == 1]
    fast = [(v, r) for c, v, r in handler.seen if c != 1]
    assert slow == [(1, 1), (1, 1), (1, 1), (2, 2)]  # round t trains on model max(1, t - 2)
    assert fast == [(t, t) for t in range(1, 5) for _ in range(2)]
    resumed = DelayGrid(Recorder(), 3, stale=stale, delay=2, first_round=5)
    resumed.load_state_dict(grid.state_dict())
    round_(grid, 5)
    round_(resumed, 5)
    assert handler.seen[-2][1:] == resumed.handler.seen[1][1:] == (3.0, 3)


def _delayed(**over):
    return tiny_config(rounds=6, eval_every=2, stale_model_delay=2, **{
        "data.partition": "shards", "data.shards_per_client": 1, "strategy.name": "direct",
        "participation": {"name": "fixed-epoch", "clients_per_round": 4, "slow_classes": [1], "slow_factor": 1.0},
        **over})


def test_a_delayed_run_reports_staleness_d_and_the_oracle_replaces_those_answers(tmp_path):
    import json

    run_single(load_config(_delayed()), tmp_path / "d", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["server/staleness_max"] for r in rows) == 2 and rows[-1]["participants"] == 4
    run_single(load_config(_delayed(staleness_oracle=True)), tmp_path / "o", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["oracle/replaced"] for r in rows) > 0 and max(r["server/staleness_max"] for r in rows) == 0


@pytest.mark.parametrize("over, message", [
    ({"strategy.name": "fedavg"}, "synchronous"),
    ({"participation": {"name": "uniform", "clients_per_round": 4}}, "participation.slow_classes"),
    ({"strategy.name": "fedasync", "strategy.history": 2}, "strategy.history >= 3"),
])
def test_bad_delay_settings_are_named(over, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_delayed(**over))
