"""Plug-ins by import string: a user's model, dataset and strategy run; typos fail before training."""

import json

import pytest
import torch

from fedsim.config import ConfigError
from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load

from conftest import tiny_config
from helpers import train

USER = {"data": {"name": "user_plugins:blobs", "partition": "natural", "num_clients": 12},
        "model": {"name": "user_plugins:tiny_mlp"}}


def test_user_model_and_dataset_run_and_learn(tmp_path):
    raw = {**tiny_config(rounds=8, eval_every=4), **USER}
    summary = run_single(load(raw), tmp_path, progress=False)
    assert summary["final_accuracy"] > 0.8  # three well-separated blobs
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[-1]["participants"] == 4


def test_user_model_weights_are_fixed_by_the_seed():
    a, _, _ = train({**tiny_config(rounds=2), **USER})
    b, _, _ = train({**tiny_config(rounds=2), **USER})
    c, _, _ = train({**tiny_config(rounds=2, seed=5), **USER})
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_user_strategy_gets_its_args():
    plain, _, _ = train(tiny_config(rounds=1, **{"strategy.weighting": "uniform"}))
    half, results, strategy = train(tiny_config(rounds=1, **{"strategy.name": "user_plugins:ScaledFedAvg",
                                                             "strategy.args": {"scale": 0.5}}))
    assert strategy.scale == 0.5 and results[0].metrics["scaled/scale"] == 0.5
    start, _, _ = train(tiny_config(rounds=1, **{"client.lr": 1e-12}))  # ~ the initial model
    assert torch.allclose(half - start, 0.5 * (plain - start), atol=1e-6)


@pytest.mark.parametrize("key, value, message", [
    ("model.name", "user_plugins:tiny_mpl", "config key 'model.name': module 'user_plugins' has no attribute 'tiny_mpl'"),
    ("data.name", "no_such_pkg.mod:loader", "config key 'data.name': cannot import module 'no_such_pkg.mod'"),
    ("strategy.name", "user_plugins:blobs", "config key 'strategy.name': 'user_plugins:blobs' is not a fedsim"),
    ("strategy.name", "fedavgg", "config key 'strategy.name' must be one of"),
    ("model.name", "user_plugins:", "config key 'model.name': 'user_plugins:' is not an import string"),
])
def test_a_typo_fails_at_load_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load(tiny_config(**{key: value}))


def test_a_loader_returning_garbage_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config key 'data.name': 'user_plugins:not_a_dict' returned list"):
        run_single(load({**tiny_config(), "data": {"name": "user_plugins:not_a_dict"}}), tmp_path,
                   progress=False)


def test_strategy_args_need_a_plugin_strategy():
    with pytest.raises(ConfigError, match="config key 'strategy.args' is for Flower .* and plug-in strategies"):
        load(tiny_config(**{"strategy.args": {"scale": 2}}))
