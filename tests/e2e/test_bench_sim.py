"""`fedsim bench sim` end to end on a tiny Fashion-MNIST-shaped data set (written as idx files and read
through fedsim's loader): keys, consistency of ratios with times, equal work in every arm, no process
left behind. Speed targets are the benchmark's business, never thresholds here."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

POPULATION, SAMPLES, K, ROUNDS = 4, 64, 2, 2
LOCAL_STEPS = 2  # ceil(64 / 32)


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fmnist(tmp_path):
    """Fashion-MNIST-shaped idx files: 4 clients x 64 training images, 64 test images."""
    rng = np.random.default_rng(0)
    d = tmp_path / "fmnist"
    d.mkdir()
    for stem, n in (("train", POPULATION * SAMPLES), ("t10k", 64)):
        _write_idx(d / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(d / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return d


def _bench(tmp_path, data_dir, *extra, timeout=300):
    cmd = [sys.executable, "-m", "fedsim", "bench", "sim", "--population", str(POPULATION),
           "--clients-per-round", str(K), "--rounds", str(ROUNDS), "--samples-per-client", str(SAMPLES),
           "--processes", "2", "--data-dir", str(data_dir), "--out", str(tmp_path / "bench"), "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "bench sim: K=2 fedsim" in proc.stderr  # progress lines go to stderr
    return json.loads(proc.stdout)


def _leftovers(marker: str) -> list[str]:
    """Living processes whose command line or environment mentions ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if not zombie and (marker.encode() in cmd or marker.encode() in env):
            found.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _check_arm(r: dict, processes_at_least: int = 1) -> None:
    assert r["ok"], r
    assert r["rounds"] == ROUNDS and len(r["round_s"]) == ROUNDS - 1
    assert 0 < r["first_round_s"] <= r["last_round_end_s"] <= r["total_s"]
    assert r["steady_round_s"] > 0
    assert r["memory"]["peak_mib"] > 20 and r["memory"]["peak_processes"] >= processes_at_least
    assert r["steps"] == ROUNDS * K * LOCAL_STEPS
    assert 0 < r["first_round_cpu_s"] <= r["cpu_s"] and r["steady_round_cpu_s"] >= 0  # the process tree's CPU time


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tree and memory from /proc")
@pytest.mark.slow  # ~15 s: a whole benchmark run
def test_bench_sim_skip_flower_json(tmp_path, tiny_fmnist):
    result = _bench(tmp_path, tiny_fmnist, "--skip-flower")
    assert set(result) == {"workload", "machine", "memory_metric", "results", "targets"}
    assert result["workload"]["local_steps"] == LOCAL_STEPS and result["workload"]["population"] == POPULATION
    assert result["memory_metric"] in ("pss", "rss")
    assert len(result["machine"]["load_avg_before"]) == 3
    r = result["results"][str(K)]
    for arm in ("floor", "pool", "fedsim"):
        _check_arm(r[arm], processes_at_least=3 if arm == "pool" else 1)
    assert r["flower"] == {"ok": False, "error": "skipped (--skip-flower)"}
    assert r["floor"]["processes"] == 1 and r["pool"]["processes"] == 2
    # the floor and the pool train the same clients from the same seeds: the same model comes out
    assert r["pool"]["final_abs_sum"] == pytest.approx(r["floor"]["final_abs_sum"], rel=1e-4)
    ratios = r["ratios"]
    for arm in ("floor", "pool", "fedsim"):
        assert ratios["steady_vs_floor"][arm] == pytest.approx(r[arm]["steady_round_s"] / r["floor"]["steady_round_s"], rel=2e-3)
        assert ratios["steady_vs_pool"][arm] == pytest.approx(r[arm]["steady_round_s"] / r["pool"]["steady_round_s"], rel=2e-3)
    assert ratios["steady_vs_floor"]["flower"] is None
    assert ratios["flower_vs_fedsim"] == {"end_to_end": None, "steady_round": None, "first_round": None}
    assert ratios["memory_fedsim_vs_flower"] is None
    t = result["targets"][str(K)]
    assert set(t) == {"fedsim_first_round_s", "fedsim_steady_vs_pool", "flower_vs_fedsim_end_to_end",
                      "memory_fedsim_vs_flower"}
    assert t["fedsim_first_round_s"]["value"] == r["fedsim"]["first_round_s"]
    assert t["fedsim_steady_vs_pool"]["met"] == (ratios["steady_vs_pool"]["fedsim"] <= 1.1)
    assert t["flower_vs_fedsim_end_to_end"]["met"] is None
    assert json.loads((tmp_path / "bench" / "bench.json").read_text()) == result
    assert _leftovers(str(tmp_path)) == []


def test_trainer_compare_on_cpu(tmp_path, tiny_fmnist):
    cmd = [sys.executable, "-m", "fedsim", "bench", "sim", "--device", "cpu", "--trainer-compare", "--cohorts", "2,3",
           "--samples-per-client", str(SAMPLES), "--data-dir", str(tiny_fmnist), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["mode"] == "trainer-compare" and result["local_steps"] == LOCAL_STEPS
    assert [row["clients"] for row in result["cohorts"]] == [2, 3]
    for row in result["cohorts"]:
        assert row["sequential_clients_per_s"] > 0 and row["vectorized_clients_per_s"] > 0
        assert row["speedup"] == pytest.approx(row["sequential_s"] / row["vectorized_s"], rel=1e-2)
        assert row["max_abs_delta_diff"] < 1e-5  # the two trainers agree


def test_cuda_mode_without_cuda_is_a_clear_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, "-m", "fedsim", "bench", "sim", "--device", "cuda"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--trainer-compare" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tree and memory from /proc")
def test_bench_sim_flower_arm(tmp_path, tiny_fmnist):
    pytest.importorskip("ray", reason="Flower's simulation runtime needs flwr[simulation] (Ray)")
    result = _bench(tmp_path, tiny_fmnist, "--arms", "fedsim,flower", timeout=900)
    r = result["results"][str(K)]
    _check_arm(r["fedsim"])
    _check_arm(r["flower"], processes_at_least=4)  # flwr, SuperLink, SuperExec, flwr-simulation, Ray...
    ratios = r["ratios"]["flower_vs_fedsim"]
    assert ratios["end_to_end"] == pytest.approx(r["flower"]["total_s"] / r["fedsim"]["total_s"], rel=2e-3)
    assert ratios["steady_round"] == pytest.approx(r["flower"]["steady_round_s"] / r["fedsim"]["steady_round_s"], rel=2e-3)
    assert r["ratios"]["memory_fedsim_vs_flower"] == pytest.approx(
        r["fedsim"]["memory"]["peak_mib"] / r["flower"]["memory"]["peak_mib"], rel=2e-3)
    assert r["floor"]["error"] == "not run (--arms)"
    assert _leftovers(str(tmp_path)) == []  # the detached SuperLink and Ray were stopped too
