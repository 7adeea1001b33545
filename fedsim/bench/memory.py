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
"""

from __future__ import annotations

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
        self.samples += 1
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

    def result(self) -> dict:
        metric = "pss" if self.pss_everywhere else "rss"
        return {"metric": metric, "peak_mib": round((self.peak_pss if metric == "pss" else self.peak_rss) / MIB, 1),
                "peak_pss_mib": round(self.peak_pss / MIB, 1) if metric == "pss" else None,
                "peak_rss_sum_mib": round(self.peak_rss / MIB, 1), "peak_processes": self.peak_processes,
                "samples": self.samples, "sampler_cpu_s": round(self.cpu_s, 3), "at_peak_mib": self.peak_breakdown}


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
