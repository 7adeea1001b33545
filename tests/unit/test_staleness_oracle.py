"""The staleness oracle (experiment-only): stale answers arrive as fresh updates on the current model."""

import json

import pytest

from fedsim.config import ConfigError
from fedsim.experiments.run import run_single
from fedsim.experiments.serve import ServerOptions, run_server
from fedsim.experiments.setup import load as load_config

from conftest import tiny_config
from helpers import run_until

SLOW = {"strategy.name": "direct", "strategy.round_time": 0.5, "rounds": 8, "eval_every": 1, "checkpoint_every": 3,
        "participation": {"name": "uniform", "clients_per_round": 4, "slow_classes": [0], "slow_share": 0.4,
                          "slow_factor": 8.0}}


def _rows(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def test_every_stale_answer_becomes_a_fresh_one(tmp_path):
    run_single(load_config(tiny_config(**SLOW)), tmp_path / "direct", progress=False)
    run_single(load_config(tiny_config(**SLOW, staleness_oracle=True)), tmp_path / "oracle", progress=False)
    direct, oracle = _rows(tmp_path / "direct"), _rows(tmp_path / "oracle")
    stale = sum(r["server/staleness_max"] > 0 for r in direct)
    assert stale > 0 and sum(r["oracle/replaced"] for r in oracle) > 0
    assert all(r["server/staleness_max"] == 0 for r in oracle)
    # same arrivals: the same number of answers per round, only their content differs
    assert [r["participants"] for r in oracle] == [r["participants"] for r in direct]
    assert [r["accuracy"] for r in oracle] != [r["accuracy"] for r in direct]


def test_the_oracle_resumes_exactly(tmp_path):
    cfg = load_config(tiny_config(**SLOW, staleness_oracle=True))
    run_single(cfg, tmp_path / "a", progress=False)
    run_until(cfg, tmp_path / "b", stop_after=5)
    run_single(cfg, tmp_path / "b", resume=True, progress=False)
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")


def test_the_oracle_is_refused_where_it_cannot_mean_anything(tmp_path):
    with pytest.raises(ConfigError, match="staleness_oracle"):
        load_config(tiny_config(staleness_oracle=True))  # fedavg is synchronous
    with pytest.raises(ConfigError, match="experiment-only"):
        run_server(load_config(tiny_config(**SLOW, staleness_oracle=True)), tmp_path, ServerOptions(insecure=True))
