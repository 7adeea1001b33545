"""`fedsim launch` never leaves processes behind, even when it is killed, and resumes a run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tomli_w

from conftest import tiny_config

pytestmark = pytest.mark.slow  # real processes: ~20 s


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = open(f"/proc/{pid}/stat").read().split()[2] if os.path.exists(f"/proc/{pid}/stat") else "X"
    return state != "Z"


def test_a_killed_launcher_takes_its_server_and_clients_with_it_and_resume_finishes(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(tomli_w.dumps(tiny_config(rounds=400, checkpoint_every=5)))
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    cmd = [sys.executable, "-m", "fedsim", "launch", str(cfg), "--processes", "2", "--insecure", "--quiet",
           "--out", str(tmp_path / "run")]
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "run" / "checkpoint.pt").exists():
            time.sleep(0.2)
        children = _children(launcher.pid)
        assert len(children) == 3 and (tmp_path / "run" / "checkpoint.pt").exists()
        launcher.kill()  # SIGKILL: no cleanup code of the launcher runs
        launcher.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.2)
        assert not any(_alive(p) for p in children)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    done = subprocess.run([*cmd, "--resume"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 401))
