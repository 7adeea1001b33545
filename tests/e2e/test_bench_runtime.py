"""`fedsim bench runtime --skip-flower` end to end on a tiny config: keys and positive times only.

Speed targets are checked by the benchmark's side-by-side ratios, never by thresholds here."""

import json
import subprocess
import sys

import pytest

from conftest import tiny_config


@pytest.mark.slow  # ~15 s: a whole benchmark run
def test_bench_runtime_skip_flower_json(tmp_path):
    tomli_w = pytest.importorskip("tomli_w")
    raw = tiny_config(**{"data.num_clients": 2, "participation.clients_per_round": 2})
    (tmp_path / "tiny.toml").write_text(tomli_w.dumps(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "bench", "runtime", "--config", str(tmp_path / "tiny.toml"), "--rounds", "2",
         "--processes", "2", "--skip-flower", "--json", "--out", str(tmp_path / "bench"), "--timeout", "150"],
        capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert set(result) >= {"workload", "runtimes", "ratios", "metrics_identical_grpc"}
    assert result["workload"]["rounds"] == 2
    for name in ("in-process", "grpc"):
        r = result["runtimes"][name]
        assert r["ok"], r
        assert r["rounds"] == 2 and len(r["round_s"]) == 1
        assert r["first_round_s"] > 0 and r["steady_round_s"] > 0 and r["total_s"] >= r["first_round_s"]
    assert result["runtimes"]["flower"] == {"ok": False, "error": "skipped (--skip-flower)"}
    assert result["ratios"]["grpc/in-process"] > 0 and result["ratios"]["flower/grpc"] is None
    assert result["metrics_identical_grpc"] is True
    assert json.loads((tmp_path / "bench" / "bench.json").read_text()) == result
    timing = (tmp_path / "bench" / "in-process" / "timing.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in timing] == [1, 2]
