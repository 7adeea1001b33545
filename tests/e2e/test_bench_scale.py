"""`fedsim bench scale`: the gRPC runs equal the in-process one; the table names what failed."""

import json

import pytest

from fedsim.bench.scale import bench_scale, format_table


@pytest.mark.slow  # real server and node processes: ~20 s
def test_scale_runs_match_in_process_and_report_costs(tmp_path):
    result = bench_scale([100], [1, 2], per_round=10, rounds=2, out=tmp_path, timeout=120, log=lambda *_: None)
    runs = result["runs"]
    assert [r["ok"] for r in runs] == [True] * 3, runs
    grpc = [r for r in runs if r["runtime"] == "grpc"]
    assert all(r["same_metrics_as_in_process"] for r in grpc)
    assert all(r["messages_per_round"] == 10 and r["registered_s"] is not None for r in grpc)
    assert all(r["server_peak_rss_mib"] > 50 and r["node_peak_rss_mib"] > 50 for r in grpc)
    assert json.loads((tmp_path / "scale.json").read_text())["runs"] == runs
    assert (tmp_path / "scale.png").exists() and "| 100 | grpc | 2 |" in (tmp_path / "scale.md").read_text()


def test_the_table_shows_failed_runs():
    result = {"workload": {"dim": 20, "classes": 4, "rows_per_client": 20, "clients_per_round": 10, "rounds": 2,
                           "cpus": 2},
              "runs": [{"runtime": "grpc", "n": 10, "processes": 2, "ok": False, "error": "server exited with code 2"}]}
    assert "| 10 | grpc | 2 | failed: server exited with code 2" in format_table(result)
