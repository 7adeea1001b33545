"""The gRPC runtime gives `fedsim run`'s results: same metrics rows, same final model (127.0.0.1 only)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fedsim.experiments.setup import load as load_config
from fedsim.experiments.run import read_checkpoint, run_single

from conftest import tiny_config
from grpc_harness import NodeThread, ServerThread, split

ANARCHIC = {"name": "anarchic", "p": 0.7, "max_steps": 5, "speed_spread": 1.0}
WINDOWED = {"strategy.round_time": 1.0, "data.alpha": 0.3,
            "participation": {"name": "uniform", "clients_per_round": 3, "slow_classes": [0], "slow_share": 0.4,
                              "slow_factor": 10.0}}


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _final(path):
    return read_checkpoint(path / "checkpoint.pt")["strategy"]["params"]


def _grpc_run(raw, out, nodes=2, **opts):
    server = ServerThread(raw, out, **opts)
    threads = [NodeThread(server.address, r) for r in split(raw["data"]["num_clients"], nodes)]
    summary = server.result(90)
    assert [t.join(20) for t in threads] == [0] * nodes  # the server dismissed every node
    return summary


@pytest.mark.parametrize("over", [
    {},                                                                          # fedavg, uniform
    {"strategy.name": "fedau", "participation": {"name": "bernoulli", "p": 0.5}},
    {"strategy.name": "ef21", "compression": {"name": "top-k", "density": 0.2}},  # client g_i in the nodes
    {"strategy.name": "afa-cd", "strategy.m": 2, "participation": ANARCHIC},      # asynchronous arrival
    {"strategy.name": "repair", **WINDOWED, "repair.iterations": 3, "repair.samples": 2},                                   # virtual windows, history
    {"strategy.name": "fedbuff", **WINDOWED, "strategy.buffer_size": 3},
    {"strategy.name": "fedau", "privacy.user_level": True, "privacy.noise_multiplier": 0.5,  # server stages
     "participation": {"name": "bernoulli", "p": 0.5}, "privacy.accountant": "rdp",
     "server_optimizer": {"name": "momentum", "momentum": 0.5}},
    {"compression": {"name": "prune", "density": 0.2}, "client.clip_norm": 0.5},  # client stages
    {"strategy.name": "scaffold", "client.momentum": 0.5},                        # client c_i in the nodes
    {"strategy.name": "flwr:FedAdam", "strategy.args": {"eta": 0.05}},            # Flower's class as it is
    {"adversary": {"behaviour": "backdoor", "fraction": 0.25}, "defense.norm_bound": 0.5},  # attackers in nodes
], ids=["fedavg", "fedau", "ef21", "afa-cd", "repair", "fedbuff", "fedau-dp-momentum", "clip-prune", "scaffold",
        "flwr-fedadam", "backdoor-norm-bound"])
def test_grpc_matches_in_process(tmp_path, over):
    raw = tiny_config(rounds=5, **over)
    summary = _grpc_run(raw, tmp_path / "grpc")
    run_single(load_config(raw), tmp_path / "native", progress=False)
    assert _rows(tmp_path / "grpc" / "metrics.jsonl") == _rows(tmp_path / "native" / "metrics.jsonl")
    assert torch.equal(_final(tmp_path / "grpc"), _final(tmp_path / "native"))
    assert summary["runtime"] == "GrpcGrid" and summary["transport"]["replies"] > 0


def test_wall_clock_arrival_runs_afa_cd(tmp_path):
    raw = tiny_config(rounds=4, **{"strategy.name": "afa-cd", "strategy.m": 2, "participation": ANARCHIC})
    summary = _grpc_run(raw, tmp_path / "wall", arrival="wall")
    rows = _rows(tmp_path / "wall" / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and all(r["participants"] >= 2 for r in rows)
    assert summary["final_accuracy"] is not None


def test_launch_with_processes_matches_run(tmp_path):
    """`fedsim launch` (server + 2 client processes, TLS and tokens) == `fedsim run`, byte for byte."""
    import tomli_w

    raw = tiny_config(rounds=3, eval_every=1)
    (tmp_path / "exp.toml").write_text(tomli_w.dumps(raw))
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    done = subprocess.run([sys.executable, "-m", "fedsim", "launch", str(tmp_path / "exp.toml"), "--processes", "2",
                           "--out", str(tmp_path / "g"), "--quiet", "--round-timeout", "30"],
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "listening on 127.0.0.1:" in done.stdout
    run_single(load_config(raw), tmp_path / "r", progress=False)
    assert (tmp_path / "g" / "metrics.jsonl").read_text() == (tmp_path / "r" / "metrics.jsonl").read_text()
    assert torch.equal(_final(tmp_path / "g"), _final(tmp_path / "r"))
    assert (tmp_path / "g" / "curves.png").exists()
    # 3 rounds of 4 answers and no QUERY round: the server knows the experiment's partition
    assert json.loads((tmp_path / "g" / "summary.json").read_text())["transport"]["replies"] == 3 * 4


def test_flower_server_app_runs_on_the_grpc_grid(tmp_path):
    """server/server_app.py (a plain Flower ServerApp) drives remote nodes through GrpcGrid."""
    import tomli_w
    from flwr.app import Context, RecordDict

    from fedsim.runtime.grpc_grid import GrpcGrid
    from fedsim.runtime.grpc_service import serve
    from server.server_app import app as server_app

    raw = tiny_config(rounds=3)
    (tmp_path / "exp.toml").write_text(tomli_w.dumps(raw))
    cfg = load_config(raw)
    grid = GrpcGrid(8, seed=cfg.seed, config=cfg.to_dict(), round_timeout=20)
    server, port = serve(grid, "127.0.0.1:0")
    try:
        nodes = [NodeThread(f"127.0.0.1:{port}", r) for r in split(8, 2)]
        assert grid.wait_for_nodes(30)
        run_config = {"preset": str(tmp_path / "exp.toml"), "out": str(tmp_path / "flower")}
        server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
        grid.close()
        assert [n.join(20) for n in nodes] == [0, 0]
    finally:
        server.stop(0).wait(5)
    run_single(cfg, tmp_path / "native", progress=False)
    assert _rows(tmp_path / "flower" / "metrics.jsonl") == _rows(tmp_path / "native" / "metrics.jsonl")
