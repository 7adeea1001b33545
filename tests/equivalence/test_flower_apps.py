"""server/ and clients/ are plain Flower apps: they run on any Grid and give the same model as `fedsim run`."""

import json

import pytest
import torch
from flwr.app import Context, RecordDict

from clients.client_app import app as client_app
from fedsim.experiments.setup import load as load_config
from fedsim.experiments.run import run_single
from fedsim.runtime.inprocess import AppHandler, InProcessGrid
from server.server_app import app as server_app

from conftest import tiny_config
from helpers import federation


@pytest.mark.parametrize("name", ["fedau", "scaffold"])  # scaffold: client state through the node Context
def test_server_and_client_apps_match_fedsim_run(tmp_path, name):
    import tomli_w

    raw = tiny_config(rounds=4)
    raw["strategy"]["name"] = name
    raw["participation"] = {"name": "bernoulli", "p": 0.5}
    (tmp_path / "exp.toml").write_text(tomli_w.dumps(raw))
    run_config = {"preset": str(tmp_path / "exp.toml"), "out": str(tmp_path / "flower")}
    grid = InProcessGrid(AppHandler(client_app), raw["data"]["num_clients"], seed=raw["seed"], run_config=run_config)
    server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))

    run_single(load_config(raw), tmp_path / "native", progress=False)
    flower_rows = (tmp_path / "flower" / "metrics.jsonl").read_text()
    native_rows = (tmp_path / "native" / "metrics.jsonl").read_text()
    assert flower_rows == native_rows
    assert json.loads((tmp_path / "flower" / "summary.json").read_text())["runtime"] == "in-process"


def test_fedsim_strategy_runs_under_flowers_own_start_loop():
    cfg, strategy, grid, arrays = federation(tiny_config(**{"strategy.name": "afa-cd", "strategy.m": 4}))
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3,
                            evaluate_fn=lambda rnd, arr: None)
    assert set(result.train_metrics_clientapp) == {1, 2, 3}
    final = torch.cat([t.reshape(-1) for t in result.arrays.to_torch_state_dict().values()])
    assert torch.equal(final, strategy.params)
    assert not torch.equal(final, torch.cat([t.reshape(-1) for t in arrays.to_torch_state_dict().values()]))
