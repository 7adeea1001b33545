"""server/ and clients/ are plain Flower apps: `flwr run` (Flower's Ray simulation runtime) runs them
and gets the same model as `fedsim run`, for a fedsim strategy and for one of Flower's own (whose node
sampling and aggregation then run on Flower's node ids, in Flower's reply order)."""

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from fedsim.experiments.setup import load as load_config
from fedsim.experiments.run import run_single

pytest.importorskip("ray", reason="Flower's simulation runtime needs flwr[simulation] (Ray)")

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = """
name = "flwr-smoke"
rounds = 2
seed = 0
eval_every = 1
[data]
name = "synthetic"
num_clients = 4
options = {n = 400, dim = 10, classes = 4}
[model]
name = "logreg"
[client]
lr = 0.1
batch_size = 8
local_steps = 2
[participation]
name = "full"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_superlink(port: int) -> None:
    """`flwr run` leaves its local SuperLink (and its simulation child) running: end them by PID."""
    out = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True).stdout
    for pid in map(int, out.split()):
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        for child in map(int, children.split()):
            os.kill(child, signal.SIGTERM)
        os.kill(pid, signal.SIGTERM)


# Flower's class as it is (default run), and a fedsim strategy (slow: also covered on an in-process
# grid by tests/equivalence/test_flower_apps.py); each `flwr run` costs ~20 s of Ray start-up
@pytest.mark.parametrize("strategy", ["flwr:FedAdam", pytest.param("fedavg", marks=pytest.mark.slow)])
def test_flwr_run_simulation_matches_fedsim_run(tmp_path, strategy):
    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT + f'[strategy]\nname = "{strategy}"\n')
    http, control = _free_port(), _free_port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http),
           "FLWR_LOCAL_CONTROL_API_PORT": str(control)}
    cmd = ["flwr", "run", str(ROOT), "local", "--stream",
           "--run-config", f"preset='{exp}' out='{tmp_path / 'flower'}'",
           "--federation-config", "num-supernodes=4 client-resources-num-cpus=1"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finally:
        _stop_superlink(http)
    assert (tmp_path / "flower" / "summary.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    flower = json.loads((tmp_path / "flower" / "summary.json").read_text())
    native = run_single(load_config(str(exp)), tmp_path / "native", progress=False)
    assert flower["rounds"] == native["rounds"] == 2
    assert flower["final_accuracy"] == native["final_accuracy"]
    assert flower["final_loss"] == pytest.approx(native["final_loss"], abs=1e-5)
