"""client.workers: a cohort split over forked worker processes gives the in-process result; workers
are scheduled longest-first, die with the parent, and a dead worker is an error naming it."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from fedsim.core.params import ParamSpec
from fedsim.local.pool import WorkerError, WorkerPool, job_cost, lpt, resolve_workers
from fedsim.local.reference import Job
from fedsim.local.vectorized import train
from fedsim.models import build_model

from conftest import tiny_config
from helpers import federation, train as train_run


class Images:
    def __init__(self, n=400, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, 28, 28, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def take(self, idx):
        return self.x[idx], self.y[idx]


# Unequal sizes, steps and learning rates: the LPT plan puts 2 on one worker and 3 on the other.
JOBS = [Job(0, torch.arange(0, 7), 4, 0.05, 8, 11), Job(1, torch.arange(10, 90), 2, 0.1, 8, 12),
        Job(2, torch.arange(100, 133), 6, 0.05, 8, 13), Job(3, torch.arange(200, 260), 3, 0.05, 8, 14),
        Job(4, torch.arange(300, 340), 5, 0.02, 8, 15)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_lpt_is_longest_first_onto_the_least_loaded_worker():
    # Graham's example: LPT gives makespan 10 here (optimum 9); ties go to the lower rank.
    assert lpt([5, 4, 3, 3, 3], 2) == [[0, 3], [1, 2, 4]]
    assert lpt([1, 1, 1, 1], 3) == [[0, 3], [1], [2]]
    assert lpt([2], 4) == [[0], [], [], []]
    assert [job_cost(j) for j in JOBS] == [4 * 7, 2 * 8, 6 * 8, 3 * 8, 5 * 8]


def test_resolve_workers():
    assert resolve_workers(0) == len(os.sched_getaffinity(0))
    assert resolve_workers(3) == 3
    with pytest.raises(ValueError, match="client.workers"):
        resolve_workers(-1)


@pytest.mark.parametrize("trainer", ["sequential", "vectorized"])
def test_pool_matches_in_process_training_and_stops_its_workers(trainer):
    data = Images()
    model = build_model("lenet", (1, 28, 28), 10, seed=0)
    spec = ParamSpec.of(model)
    start = spec.flatten(model.state_dict())
    ref, ref_loss = train(model, spec, start, JOBS, data, trainer)
    pool = WorkerPool(model, spec, data, trainer, 2)
    try:
        got, loss = pool.train(start, JOBS)
        again, _ = pool.train(start + 0.01, JOBS[:1])  # a second cohort through the same workers
        pids = pool.pids
        assert len(set(pids)) == 2 and all(_alive(p) for p in pids)
    finally:
        pool.close()
    assert _wait_gone(pids, 5.0)
    if trainer == "sequential":  # per-client work is the same computation: bitwise equal
        assert torch.equal(got, ref) and torch.equal(loss, ref_loss)
    else:  # each worker vmaps a different sub-cohort: float round-off only
        assert torch.allclose(got, ref, atol=1e-6, rtol=0) and torch.allclose(loss, ref_loss, atol=1e-6)
    assert ref.abs().max() > 1e-3
    assert not torch.equal(again[0], got[0])  # it trained from the new global vector


def _logreg_pool():
    """A 2-worker pool of a logistic-regression model: (pool, model, spec, start vector, data)."""
    data = Images()
    model = build_model("logreg", (1, 28, 28), 10, seed=0)
    spec = ParamSpec.of(model)
    return WorkerPool(model, spec, data, "sequential", 2), model, spec, spec.flatten(model.state_dict()), data


def test_worker_error_is_raised_with_its_traceback_and_the_pool_stays_usable():
    pool, model, spec, start, data = _logreg_pool()
    try:
        bad = Job(9, torch.arange(0), 2, 0.1, 8, 1)  # no data: the trainer refuses
        with pytest.raises(WorkerError, match=r"worker \d \(pid \d+\) raised ValueError: a client with no training data cannot train "
                                              r"while training clients \[9\]"):
            pool.train(start, [JOBS[1], bad])
        got, _ = pool.train(start, JOBS[:2])
        assert torch.equal(got, train(model, spec, start, JOBS[:2], data, "sequential")[0])
    finally:
        pool.close()


def test_a_dead_worker_is_an_error_naming_it_not_a_hang():
    pool, _, _, start, _ = _logreg_pool()
    try:
        pool.train(start, JOBS)
        victim = pool.pids[1]
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match=rf"worker 1 \(pid {victim}\) (died|cannot reach it).*clients"):
            pool.train(start, JOBS)
        assert time.monotonic() - t0 < 10
        with pytest.raises(WorkerError, match="pool is closed"):
            pool.train(start, JOBS)
        assert _wait_gone(pool.pids, 5.0)  # the survivor was stopped too
    finally:
        pool.close()


def test_workers_die_with_their_parent(tmp_path):
    """SIGKILL the parent mid-run: its workers must not outlive it (no orphans)."""
    script = textwrap.dedent("""
        import time, torch
        from fedsim.core.params import ParamSpec
        from fedsim.local.pool import WorkerPool
        from fedsim.local.reference import Job
        from fedsim.models import build_model

        class Data:
            x, y = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,))
            def take(self, idx):
                return self.x[idx], self.y[idx]

        model = build_model("logreg", (1, 28, 28), 10, seed=0)
        spec = ParamSpec.of(model)
        pool = WorkerPool(model, spec, Data(), "sequential", 2)
        pool.train(spec.flatten(model.state_dict()), [Job(c, torch.arange(10 * c, 10 * c + 10), 2, 0.1, 4, c)
                                                      for c in range(4)])
        print(*pool.pids, flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    pids = []
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        assert _wait_gone(pids, 10.0), "worker processes outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("extra", [
    {"client.trainer": "sequential"},
    {"client.trainer": "sequential", "strategy.name": "ef21", "compression": {"name": "top-k", "k": 5},
     "participation": {"name": "bernoulli", "p": 0.5}},
    {"client.trainer": "vectorized", "participation": {"name": "anarchic", "p": 0.7, "max_steps": 5},
     "strategy.name": "afa-cs"},
])
def test_federated_run_with_two_workers_equals_one(extra):
    raw = dict(extra, **{"model.name": "mlp"})
    one, res_one, _ = train_run(tiny_config(**raw))
    cfg, strategy, grid, arrays = federation(tiny_config(**raw, **{"client.workers": 2}))
    from fedsim.runtime.loop import run_rounds
    try:
        run_rounds(strategy, grid, arrays, first_round=1, last_round=cfg.rounds)
        pids = grid.handler._pool.pids
        if "ef21" in str(extra):  # error-feedback state is kept in the parent, after training
            assert len(grid.handler.uplink.store) > 0
    finally:
        grid.close()
    assert _wait_gone(pids, 5.0)
    if extra["client.trainer"] == "sequential":
        assert torch.equal(strategy.params, one)
    else:
        assert torch.allclose(strategy.params, one, atol=1e-6, rtol=0)
    assert one.abs().max() > 0.1


def test_an_interrupted_cohort_closes_the_pool(monkeypatch):
    """Ctrl-C while waiting: the answers still in the pipes must not be read as the next cohort's."""
    import fedsim.local.pool as pool_module

    data = Images()
    model = build_model("logreg", (1, 28, 28), 10, seed=0)
    spec = ParamSpec.of(model)
    pool = WorkerPool(model, spec, data, "sequential", 2)
    try:
        def interrupted(*_a, **_k):
            raise KeyboardInterrupt
        monkeypatch.setattr(pool_module, "wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pool.train(spec.flatten(model.state_dict()), JOBS)
        monkeypatch.undo()
        with pytest.raises(WorkerError, match="interrupted while training a cohort"):
            pool.train(spec.flatten(model.state_dict()), JOBS)
        assert _wait_gone(pool.pids, 5.0)
    finally:
        pool.close()
