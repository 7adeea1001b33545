"""The benchmarks' peak-memory sampler and process bookkeeping, on children that allocate known amounts."""

import sys
import time

import pytest

from fedsim.bench.memory import MIB, PeakMemory, process_memory
from fedsim.bench.processes import Processes, _alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# The child holds 128 MiB and starts a grandchild in a session of its own that holds 96 MiB; once both
# hold their memory it writes the grandchild's pid to READY, waits a second and exits, so the grandchild
# is left re-parented away from the child (found by the environment tag only).
GRANDCHILD = "import pathlib, sys, time; b = b'x' * (96 << 20); pathlib.Path(sys.argv[1]).write_text('1'); time.sleep(120)"
CHILD = f"""
import pathlib, subprocess, sys, time
b = b'x' * (128 << 20)
flag = pathlib.Path(sys.argv[1] + '.grandchild')
g = subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}, str(flag)], start_new_session=True)
while not flag.exists():
    time.sleep(0.02)
pathlib.Path(sys.argv[1]).write_text(str(g.pid))
time.sleep(1.0)
"""


def _wait_for(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_peak_memory_of_a_child_and_its_detached_grandchild(tmp_path):
    ready = tmp_path / "ready"
    with Processes(tmp_path) as procs:
        with PeakMemory(procs.pids, interval=0.05) as mem:
            procs.start("alloc", [sys.executable, "-c", CHILD, str(ready)])
            _wait_for(ready)
            time.sleep(0.3)
        grandchild = int(ready.read_text())
        procs.children["alloc"].wait(30)
        assert grandchild in procs.pids()  # the child is gone: found through the tag in its environment
    assert not _alive(grandchild)  # stopped on exit although it was in no child's process group
    r = mem.result()
    assert r["metric"] == "pss" and r["samples"] >= 3
    assert r["peak_processes"] == 2
    assert 224 <= r["peak_mib"] <= 224 + 80, r
    assert r["peak_rss_sum_mib"] >= r["peak_mib"] - 1
    assert sum(r["at_peak_mib"].values()) == pytest.approx(r["peak_mib"], abs=0.5)  # per process name


def test_process_memory_of_this_process_and_of_a_gone_one(tmp_path):
    pss, rss, measured = process_memory(__import__("os").getpid())
    assert measured and 0 < pss <= rss and rss > 10 * MIB
    assert process_memory(2**22 + 12345) is None  # above any pid_max default: no such process
