"""Every strategy in the registry passes the same checks, so adding a row runs it automatically:
same seed -> identical metrics.jsonl; resume after a crash -> the uninterrupted run; malformed
answers rejected with the global model untouched. (In-process = gRPC for a representative subset:
tests/e2e/test_grpc_equivalence.py.)"""

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load
from fedsim.runtime import protocol as P
from fedsim.strategies.registry import STRATEGIES

from conftest import tiny_config
from helpers import federation, run_until

SLOW = {"participation": {"name": "uniform", "clients_per_round": 4, "slow_classes": [0], "slow_share": 0.4,
                          "slow_factor": 8.0}, "strategy.round_time": 0.5}
# What a strategy needs beyond the tiny default to exercise its own machinery; a new row runs with {}.
SETUP = {
    "afa-cd": {"strategy.m": 2, "participation": {"name": "anarchic", "p": 0.7, "max_steps": 4, "speed_spread": 1.0}},
    "afa-cs": {"strategy.m": 2, "participation": {"name": "anarchic", "p": 0.7, "max_steps": 4, "speed_spread": 1.0}},
    "ef21": {"compression": {"name": "top-k", "density": 0.2}},
    "ef14": {"compression": {"name": "top-k", "density": 0.2}},
    "dp-fedavg": {"privacy.noise_multiplier": 1.0, "participation": {"name": "bernoulli", "p": 0.5},
                  "privacy.accountant": "rdp"},  # the accountant is not what these checks are about
    "dp-mf": {"privacy.mechanism": "banded", "privacy.accountant": "rdp", "participation": {"name": "fixed-epoch", "clients_per_round": 4}},
    "direct": SLOW, "weighted": SLOW, "fedasync": SLOW, "fedbuff": {**SLOW, "strategy.buffer_size": 3},
    "repair": {**SLOW, "repair.iterations": 3, "repair.samples": 2},
}


def _raw(name, **over):
    return tiny_config(**{"strategy.name": name, "rounds": 6, "eval_every": 1, "checkpoint_every": 3,
                          **SETUP.get(name, {}), **over})


def _rows(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_same_seed_same_metrics_and_resume_is_identical(name, tmp_path):
    cfg = load(_raw(name))
    run_single(cfg, tmp_path / "a", progress=False)
    run_single(cfg, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()
    run_until(cfg, tmp_path / "c", stop_after=5)  # checkpoint at round 3, crash after round 5
    run_single(cfg, tmp_path / "c", resume=True, progress=False)
    assert _rows(tmp_path / "c") == _rows(tmp_path / "a")


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_malformed_answers_are_rejected_and_the_model_is_untouched(name):
    cfg, strategy, grid, arrays = federation(_raw(name))
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    ids = set(grid.push_messages(messages))
    replies = list(grid.pull_until(ids, len(ids), timeout=None))
    assert replies
    before = strategy.params.clone()
    for i, r in enumerate(replies):
        if i % 2:
            r.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: Array(np.zeros(3, np.float32))})  # wrong shape
        else:
            r.content[P.UPDATE] = ArrayRecord(array_dict={P.UPDATE: Array(np.full(strategy.spec.dim, np.nan,
                                                                                   np.float32))})
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["server/rejected"] == len(replies) and metrics["participants"] == 0
    if name not in ("dp-fedavg", "dp-mf"):  # DP adds round 1's noise to an empty sum, as it must
        assert torch.equal(strategy.params, before)
