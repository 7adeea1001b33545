"""Worker processes that train one cohort in parallel on a multi-core CPU (``client.workers``).

``WorkerPool`` forks W long-lived worker processes once (the first time a cohort is trained). Each
worker inherits, by ``fork``, the training split and ONE resident model of the parent: nothing is
copied or pickled when it starts, the dataset pages stay shared copy-on-write, and it sets
``torch.set_num_threads(1)``. Per cohort the parent

1. splits the jobs longest-first onto the least-loaded worker (LPT, ``lpt``; a job costs
   ``local_steps x min(batch_size, n_i)`` sample-steps),
2. writes the global vector ``[D]`` once into a shared-memory buffer every worker maps, and sends each
   busy worker its small job descriptors (client, indices, steps, lr, batch size, seed) over a pipe,
3. gets back each worker's deltas ``[k, D]`` in that worker's shared-memory result buffer (grown,
   never shrunk, when a worker is given more jobs than it has rows for; a new buffer travels as a
   file descriptor) and the k losses over the pipe.

No model is constructed and no ``state_dict`` is serialized in this hot path; a worker runs the same
``fedsim.local.vectorized.train`` on its share as the parent would on the whole cohort. A client's
result depends only on (seed, round, client) (``reference.job_seed``), so the assignment to workers
does not change it: with the sequential trainer and ``threads = 1`` the deltas are bitwise equal to
``workers = 1`` (tested); the vectorized trainer batches other cohorts per worker and agrees to float
round-off (~1e-7, tested to 1e-6).

Lifetime: workers are daemon processes (terminated when the parent exits normally) and exit on their
own when the parent's end of their pipe closes (the parent died); on Linux they also ask for SIGKILL
when the parent thread that forked them dies. A worker that dies mid-cohort raises ``WorkerError``
naming the worker, its pid, exit code and the clients it held, instead of hanging; the pool is then
closed. A Python exception inside a worker is re-raised in the parent as ``WorkerError`` with the
worker's traceback, and the pool stays usable.

Needs the ``fork`` start method (Linux, the platform of the simulator's CPU runs); elsewhere use
``client.workers = 1``. Measured on the 2-core machine (LeNet on Fashion-MNIST, 19 steps of 32 per
client, other jobs running): forking 2 workers took 34-55 ms and their first cohort was at most
~0.1 s slower than later ones; for 10 clients the workers spent 1.09 + 1.10 CPU-s against 2.16 CPU-s
in one process, and the parent 4-7 ms per cohort.
"""

from __future__ import annotations

import ctypes
import heapq
import mmap
import multiprocessing as mp
import os
import signal
import threading
import traceback
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle, send_handle

import torch
from torch import nn

from ..core.params import ParamSpec
from .reference import Job
from .vectorized import train

PR_SET_PDEATHSIG = 1


class WorkerError(RuntimeError):
    """A worker process failed (died, or raised while training); the message names it."""


def resolve_workers(workers: int) -> int:
    """``client.workers``: 0 = one per CPU core this process may run on, else the number given."""
    if workers < 0:
        raise ValueError(f"client.workers must be >= 0 (0 = one per CPU core), got {workers}")
    if workers == 0:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    return workers


def job_cost(job: Job) -> int:
    """Sample-steps a job computes: the LPT weight (all clients share one model)."""
    return job.local_steps * min(job.batch_size, int(job.indices.numel()))


def lpt(costs: Sequence[float], workers: int) -> list[list[int]]:
    """Longest processing time first: job indices per worker, each job onto the least-loaded worker
    (ties: the lower job index first, the lower worker rank first), so the plan is deterministic."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    heap = [(0.0, rank) for rank in range(workers)]
    plan: list[list[int]] = [[] for _ in range(workers)]
    for i in order:
        load, rank = heapq.heappop(heap)
        plan[rank].append(i)
        heapq.heappush(heap, (load + float(costs[i]), rank))
    return plan


class SharedFloats:
    """A float32 tensor of ``numel`` values in anonymous shared memory (a memfd), mappable by other
    processes: inherited by ``fork`` or sent as a file descriptor (``fd``, open until ``release_fd``)."""

    def __init__(self, numel: int, fd: int | None = None):
        nbytes = max(4 * numel, 4)
        if fd is None:
            fd = os.memfd_create("fedsim-pool", os.MFD_CLOEXEC)
            os.ftruncate(fd, nbytes)
        self.fd: int | None = fd
        self._map = mmap.mmap(fd, nbytes)
        self.tensor = torch.frombuffer(self._map, dtype=torch.float32, count=numel) if numel else torch.zeros(0)

    def release_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class _Worker:
    rank: int
    process: mp.process.BaseProcess
    conn: Connection
    rows: int = 0                  # capacity of its result buffer
    out: SharedFloats | None = None


class WorkerPool:
    """W forked workers, each with one resident model and the (inherited) training data."""

    def __init__(self, model: nn.Module, spec: ParamSpec, data, trainer: str, workers: int):
        if workers < 2:
            raise ValueError(f"a worker pool needs >= 2 workers, got {workers}")
        if "fork" not in mp.get_all_start_methods():
            raise ValueError("client.workers > 1 needs the 'fork' start method (Linux); use client.workers = 1")
        self.spec, self.size = spec, workers
        self._global = SharedFloats(spec.dim)  # mapped by every worker: the round's global vector
        self._global.release_fd()
        ctx = mp.get_context("fork")
        forker_is_main = threading.current_thread() is threading.main_thread()
        self._workers: list[_Worker] = []
        parent_ends: list[Connection] = []
        for rank in range(workers):
            ours, theirs = ctx.Pipe(duplex=True)  # a socketpair: it can carry file descriptors
            parent_ends.append(ours)
            proc = ctx.Process(target=_serve, name=f"fedsim-worker-{rank}", daemon=True,
                               args=(rank, theirs, list(parent_ends), os.getpid(), forker_is_main, model, spec, data,
                                     trainer, self._global.tensor))
            proc.start()
            theirs.close()
            self._workers.append(_Worker(rank, proc, ours))
        self._broken: str | None = None
        self._finalizer = weakref.finalize(self, _stop, [w.process for w in self._workers],
                                           [w.conn for w in self._workers])

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def train(self, global_params: torch.Tensor, jobs: list[Job]) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as ``vectorized.train``: ``(deltas [K, D], mean train loss [K])``."""
        if self._broken is not None:
            raise WorkerError(f"the worker pool is closed: {self._broken}")
        k, dim = len(jobs), self.spec.dim
        deltas, losses = torch.empty(k, dim), torch.empty(k)
        if not jobs:
            return deltas, losses
        plan = lpt([job_cost(j) for j in jobs], self.size)
        self._global.tensor.copy_(global_params.detach().to("cpu", torch.float32))
        busy = {}
        try:
            for w, share in zip(self._workers, plan):
                if share:
                    self._send(w, [jobs[i] for i in share])
                    busy[w.rank] = share
            errors = self._collect(busy, deltas, losses, jobs)
        except BaseException:  # e.g. Ctrl-C: answers still in the pipes would desynchronise the next cohort
            if self._broken is None:
                self._broken = "interrupted while training a cohort"
            self._finalizer()
            raise
        if errors:
            raise WorkerError("; ".join(errors))
        return deltas, losses

    def close(self) -> None:
        """Stop the workers (a sentinel, then terminate stragglers); idempotent."""
        if self._broken is None:
            self._broken = "closed"
        self._finalizer()

    # --- parent side -----------------------------------------------------------------------------
    def _send(self, w: _Worker, jobs: list[Job]) -> None:
        grow = len(jobs) > w.rows
        if grow:
            w.rows = max(len(jobs), 2 * w.rows)
            w.out = SharedFloats(w.rows * self.spec.dim)
        descriptors = [(j.client, j.indices.numpy(), j.local_steps, j.lr, j.batch_size, j.seed) for j in jobs]
        try:
            w.conn.send((w.rows if grow else 0, descriptors))
            if grow:
                send_handle(w.conn, w.out.fd, w.process.pid)
        except OSError as exc:
            self._fail(w, [j.client for j in jobs], f"cannot reach it ({exc})")
        finally:
            if grow:
                w.out.release_fd()

    def _collect(self, busy: dict[int, list[int]], deltas, losses, jobs) -> list[str]:
        errors = []
        while busy:
            waiting = [self._workers[r] for r in busy]
            ready = set(wait([w.conn for w in waiting] + [w.process.sentinel for w in waiting]))
            for w in waiting:
                if w.conn not in ready and w.process.sentinel not in ready:
                    continue
                share = busy.pop(w.rank)
                clients = [jobs[i].client for i in share]
                try:
                    status, payload = w.conn.recv() if w.conn.poll() else (None, None)
                except (EOFError, OSError):
                    status = None
                if status is None:  # the worker is gone
                    w.process.join(timeout=1.0)
                    self._fail(w, clients, f"died (exit code {w.process.exitcode})")
                if status == "error":
                    what, trace = payload
                    errors.append(f"fedsim worker {w.rank} (pid {w.process.pid}) raised {what} while training "
                                  f"clients {clients[:10]}; its traceback:\n{trace}")
                    continue
                rows = torch.as_tensor(share)
                deltas[rows] = w.out.tensor[: len(share) * self.spec.dim].view(len(share), self.spec.dim)
                losses[rows] = torch.tensor(payload, dtype=losses.dtype)
        return errors

    def _fail(self, w: _Worker, clients: list[int], what: str):
        reason = (f"fedsim worker {w.rank} (pid {w.process.pid}) {what} while training clients {clients[:10]}"
                  f"{' ...' if len(clients) > 10 else ''}")
        self._broken = reason
        self._finalizer()
        raise WorkerError(reason + "; the worker pool is closed")


def _stop(processes, conns) -> None:
    for conn in conns:
        try:
            conn.send(None)
        except OSError:
            pass
    for proc in processes:
        proc.join(timeout=2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=2.0)
    for conn in conns:
        conn.close()


# --- worker side ---------------------------------------------------------------------------------
def _serve(rank: int, conn: Connection, parent_ends: list[Connection], parent_pid: int, forker_is_main: bool,
           model: nn.Module, spec: ParamSpec, data, trainer: str, global_params: torch.Tensor) -> None:
    """The worker loop: one cohort share per message until a ``None`` sentinel or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    for end in parent_ends:  # else the pipe would not close when the parent dies
        end.close()
    if forker_is_main:
        _die_with_parent(parent_pid)
    torch.set_num_threads(1)
    out: SharedFloats | None = None
    while True:
        try:
            msg = conn.recv()
            if msg is None:
                return
            rows, descriptors = msg
            if rows:
                out = SharedFloats(rows * spec.dim, fd=recv_handle(conn))
                out.release_fd()
        except (EOFError, OSError):
            return
        try:
            jobs = [Job(c, torch.from_numpy(idx), s, lr, b, seed) for c, idx, s, lr, b, seed in descriptors]
            deltas, losses = train(model, spec, global_params, jobs, data, trainer)
            out.tensor[: deltas.numel()].copy_(deltas.reshape(-1))
            reply = ("ok", losses.tolist())
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            reply = ("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        try:
            conn.send(reply)
        except OSError:
            return


def _die_with_parent(parent_pid: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


