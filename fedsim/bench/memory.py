"""Peak memory of a process tree, sampled from a background thread.

Each sample sums, over the living processes of the tree (see ``processes.tree_pids``), the
proportional set size (PSS: shared pages divided among the processes sharing them, so a pool of
forked workers or Ray's processes are not counted several times) and the resident set size (RSS)
from ``/proc/<pid>/smaps_rollup``. Where smaps_rollup cannot be read (older kernels, other users'
processes) the RSS from ``/proc/<pid>/status`` is used for both and ``metric`` says ``"rss"``.
Reading smaps_rollup walks each process's page tables, which costs ~3 ms of CPU per large process
(a Ray worker with torch loaded), so the sampler waits at least 20x what its last sample cost
(``max_cpu_share``: at most 5% of one core) and at least ``interval`` (0.2 s) between samples:
about 0.2 s for fedsim's 1-3 processes, about 1 s for Flower's 13-15. A peak shorter than that can
be missed; ``samples`` and ``sampler_cpu_s`` are reported.

The same samples add up the CPU time (user + system) of every process seen in the tree, the last
value read per process, so ``cpu_s`` misses at most one interval of each process that exited and
``cpu_at(t)`` interpolates the running total: CPU seconds per round do not grow when other tenants
load the machine the way wall seconds do.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

MIB = 1024 * 1024


def process_memory(pid: int) -> tuple[int, int, bool] | None:
    """``(pss bytes, rss bytes, pss measured)`` of one process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(_kb_fields(f))
        return fields.get("Pss", 0), fields.get("Rss", 0), True
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = dict(_kb_fields(f)).get("VmRSS")
    except (OSError, ValueError):
        return None
    return None if rss is None else (rss, rss, False)  # None: gone, a zombie or a kernel thread


def _kb_fields(lines):
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            yield name, int(parts[0]) * 1024


class PeakMemory:
    """Sample ``pids()`` every ``interval`` seconds until stopped; keeps the peak of the sums.

    Use as a context manager around the run being measured::

        with PeakMemory(lambda: tree_pids({p.pid}, tag)) as mem:
            ...
        mem.result()  # {"metric": "pss", "peak_pss_mib": ..., "peak_rss_mib": ..., "peak_processes": ...}
    """

    def __init__(self, pids: Callable[[], set[int]], interval: float = 0.2, max_cpu_share: float = 0.05):
        self.pids = pids
        self.interval = interval
        self.max_cpu_share = max_cpu_share
        self.cpu_s = 0.0
        self.peak_pss = self.peak_rss = self.peak_processes = self.samples = 0
        self.pss_everywhere = True
        self.peak_breakdown: dict[str, float] = {}
        self._ticks: dict[tuple[int, str], int] = {}  # (pid, start time) -> user + system clock ticks
        self.cpu_series: list[tuple[float, float]] = []  # (wall time, CPU seconds of the tree so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fedsim-bench-memory", daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        pss = rss = 0
        each = {}
        for pid in self.pids():
            mem = process_memory(pid)
            if mem is None:
                continue
            pss, rss, each[pid] = pss + mem[0], rss + mem[1], mem[0]
            self.pss_everywhere &= mem[2]
            ticks = _cpu_ticks(pid)
            if ticks is not None:
                self._ticks[ticks[0]] = ticks[1]
        self.samples += 1
        self.cpu_series.append((time.time(), sum(self._ticks.values()) / _CLK_TCK))
        if pss > self.peak_pss:
            self.peak_pss, self.peak_breakdown = pss, _by_name(each)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_processes = max(self.peak_processes, len(each))

    def _loop(self) -> None:
        while True:
            cpu = time.thread_time()
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a process vanishing mid-scan must not end the sampling
                pass
            cost = time.thread_time() - cpu
            self.cpu_s += cost
            if self._stop.wait(max(self.interval, cost / self.max_cpu_share)):
                break

    def cpu_at(self, wall: float) -> float | None:
        """CPU seconds the tree had used by wall-clock time ``wall`` (linear between samples)."""
        series = self.cpu_series
        if not series or wall < series[0][0]:
            return None
        for (t0, c0), (t1, c1) in zip(series, series[1:]):
            if t0 <= wall <= t1:
                return c0 + (c1 - c0) * (wall - t0) / max(t1 - t0, 1e-9)
        return series[-1][1]

    def result(self) -> dict:
        metric = "pss" if self.pss_everywhere else "rss"
        return {"metric": metric, "peak_mib": round((self.peak_pss if metric == "pss" else self.peak_rss) / MIB, 1),
                "peak_pss_mib": round(self.peak_pss / MIB, 1) if metric == "pss" else None,
                "peak_rss_sum_mib": round(self.peak_rss / MIB, 1), "peak_processes": self.peak_processes,
                "samples": self.samples, "cpu_s": round(self.cpu_series[-1][1], 2) if self.cpu_series else None,
                "sampler_cpu_s": round(self.cpu_s, 3), "at_peak_mib": self.peak_breakdown}


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_ticks(pid: int) -> tuple[tuple[int, str], int] | None:
    """((pid, start time), user + system clock ticks) from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (pid, fields[19]), int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _by_name(each: dict[int, int]) -> dict[str, float]:
    """MiB per process name (``/proc/<pid>/comm``; "name xN" when N processes share it), largest first."""
    groups: dict[str, list[int]] = {}
    for pid, size in each.items():
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            name = "?"
        groups.setdefault(name, []).append(size)
    named = {(f"{k} x{len(v)}" if len(v) > 1 else k): round(sum(v) / MIB, 1) for k, v in groups.items()}
    return dict(sorted(named.items(), key=lambda kv: -kv[1]))
