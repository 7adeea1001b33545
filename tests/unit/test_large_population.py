"""N = 100,000 virtual clients fit in memory when each client's state is small: node Contexts are
made only for contacted clients, discovery reads the in-process client table (no 100k QUERY
messages), and the directory, FedAU counters, EF21 state and participation are [N] arrays."""

import time
import tracemalloc

import numpy as np
import pytest
import torch

from fedsim.experiments import setup
from fedsim.runtime.loop import run_rounds

from conftest import tiny_config
from helpers import federation

N = 100_000
PYTHON_PEAK_MB = 150  # Python + numpy allocations (tracemalloc) while building and running 2 rounds
RSS_GROWTH_MB = 300   # resident memory growth of the whole process, torch tensors included


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.parametrize("strategy", ["fedau", "ef21"])
def test_100k_clients_two_rounds_in_small_memory(strategy):
    raw = tiny_config(**{"data.num_clients": N, "data.partition": "iid",
                         "data.options": {"n": 3 * N, "dim": 8, "classes": 4},  # 2.4 training rows per client
                         "strategy.name": strategy, "participation": {"name": "uniform", "clients_per_round": 5},
                         "client.local_steps": 2, "client.batch_size": 2})
    if strategy == "ef21":
        raw["compression"] = {"name": "top-k", "k": 4}
    rss0, t0 = _rss_mb(), time.perf_counter()
    tracemalloc.start()
    try:
        cfg, strat, grid, arrays = federation(raw)
        results = []
        run_rounds(strat, grid, arrays, first_round=1, last_round=2, on_round=lambda r, _a: results.append(r))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds, grown = time.perf_counter() - t0, _rss_mb() - rss0
    try:
        assert [r.participants for r in results] == [5, 5]
        assert torch.isfinite(strat.params).all() and strat.params.abs().sum() > 0
        assert len(grid.contexts) <= 10  # only the clients that were sent work
        assert strat.directory.complete and strat.directory.node_of.array.shape == (N,)
        assert int(strat.directory.num_examples.array.sum()) == int(0.8 * 3 * N)  # every training row owned
        if strategy == "fedau":
            assert strat.state["interval_count"].shape == (N,) and int(strat.state["interval_count"].sum()) == 10
        else:
            assert strat.state["seen"].shape == (N,) and int(strat.state["seen"].sum()) == len(grid.handler.uplink.store) <= 10
        assert peak / 2**20 < PYTHON_PEAK_MB, f"Python peak {peak / 2**20:.0f} MB"
        assert grown < RSS_GROWTH_MB, f"RSS grew by {grown:.0f} MB"
        assert seconds < 120, f"{seconds:.1f} s"  # ~5 s on the 2-core CI machine (tracemalloc on)
    finally:
        setup._client_data.cache_clear()


def test_directory_maps_are_arrays_that_read_like_dicts():
    from fedsim.runtime.directory import ClientDirectory

    d = ClientDirectory(4)
    d.add(1234, 2)
    d.num_examples[2] = 7
    assert d.node_of.get(2) == 1234 and d.node_of.get(0) is None and d.node_of[2] == 1234
    assert 2 in d.node_of and 0 not in d.node_of and len(d.node_of) == 1 and not d.complete
    assert d.num_examples.values() == [7] and d.node_of.items() == [(2, 1234)]
    with pytest.raises(KeyError):
        d.node_of[0]
    with pytest.raises(ValueError, match="unknown client 9"):
        d.add(99, 9)
    big = 2**64 - 5  # Flower node ids are unsigned 64-bit
    d.add(big, 0)
    assert d.node_of[0] == big and d.node_of.array.dtype == np.uint64
