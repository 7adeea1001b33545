"""The processes a benchmark starts: each in its own session, found again and stopped by PID.

``Processes`` starts children with ``start_new_session=True`` and an environment that carries a
unique tag (``FEDSIM_BENCH_TAG``). On exit, error or Ctrl-C it stops every child's process group,
every descendant found under the children, and every process whose environment carries the tag:
the last catches what was started detached and re-parented away, such as the local SuperLink that
``flwr run`` leaves behind and the processes it starts (SuperExec, ``flwr-simulation``, Ray).
``tree_pids`` gives the same set, which is what the memory sampler sums over.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

TAG_VAR = "FEDSIM_BENCH_TAG"
FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "PYTHONUNBUFFERED": "1"}


class BenchError(RuntimeError):
    """A runtime that did not complete; the message says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """The processes one runtime started; each in its own session, stopped by PID (its group) on exit."""

    def __init__(self, logdir: Path, env: dict | None = None):
        self.logdir = logdir / "logs"
        self.tag = uuid.uuid4().hex
        self.env = {**os.environ, **FLWR_ENV, **(env or {}), TAG_VAR: self.tag}
        self.children: dict[str, subprocess.Popen] = {}
        self._logs = []

    def __enter__(self) -> Processes:
        self.logdir.mkdir(parents=True, exist_ok=True)
        return self

    def start(self, name: str, cmd: list[str], cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "w")  # noqa: SIM115 - closed in __exit__
        self._logs.append(log)
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                             cwd=cwd, start_new_session=True)
        self.children[name] = p
        return p

    def wait(self, p: subprocess.Popen, timeout: float) -> None:
        name = next(k for k, v in self.children.items() if v is p)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{name} did not finish within {timeout:.0f} s; " + self.tail(name)) from None
        if p.returncode != 0:
            raise BenchError(f"{name} exited with code {p.returncode}; " + self.tail(name))

    def tail(self, name: str, lines: int = 8) -> str:
        path = self.logdir / f"{name}.log"
        text = path.read_text(errors="replace").strip().splitlines()[-lines:] if path.exists() else []
        return f"last lines of {path}:\n  " + "\n  ".join(text) if text else f"({path} is empty)"

    def pids(self) -> set[int]:
        """Every living process of this runtime: children, their descendants, tagged processes."""
        return tree_pids({p.pid for p in self.children.values() if p.poll() is None}, self.tag)

    def __exit__(self, *exc) -> None:
        self.stop()
        for log in self._logs:
            log.close()

    def stop(self, grace: float = 10.0) -> None:
        """SIGINT (fedsim launch stops its nodes on it) then SIGTERM to each child's process group and to
        every descendant or tagged process (Flower's SuperExec starts ``flwr-serverapp`` and
        ``flwr-clientapp`` in sessions of their own; ``flwr run`` detaches its SuperLink); SIGKILL what is
        left after ``grace`` seconds. A group is signalled even when its leader has exited, since its
        processes may outlive it."""
        groups = list(reversed(self.children.values()))
        others = tree_pids({p.pid for p in groups}, self.tag) - {p.pid for p in groups}
        for pid in others:
            _signal_pid(pid, signal.SIGTERM)
        for p in groups:
            _signal_group(p, signal.SIGINT if p.poll() is None else signal.SIGTERM)
        for escalation in (signal.SIGTERM, signal.SIGKILL):  # wait, then escalate what is left
            deadline = time.monotonic() + grace / 2
            for p in groups:
                _wait(p, max(0.1, deadline - time.monotonic()))
                _signal_group(p, escalation)
        for p in groups:
            _wait(p, 5)
        deadline = time.monotonic() + grace / 2
        while others and time.monotonic() < deadline:
            others = {pid for pid in others if _alive(pid)}
            time.sleep(0.1)
        for pid in others | tagged(self.tag):
            _signal_pid(pid, signal.SIGKILL)


def _wait(p: subprocess.Popen, timeout: float) -> None:
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the group of a child started with start_new_session: pgid == its pid
    except (ProcessLookupError, PermissionError):
        pass


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _living_parents() -> dict[int, tuple[int, str]]:
    """``{pid: (parent pid, start time)}`` of every living process (Linux /proc; empty elsewhere)."""
    parent: dict[int, tuple[int, str]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return parent
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parent[int(entry)] = (int(fields[1]), fields[19])
    return parent


def _descendants(roots: set[int], table: dict[int, tuple[int, str]] | None = None) -> set[int]:
    """PIDs of every living process below ``roots``."""
    table = _living_parents() if table is None else table
    found, frontier = set(), set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


_TAGGED: dict[tuple[int, str], bool] = {}  # (pid, start time + tag) -> the environment holds the tag


def tagged(tag: str, table: dict[int, tuple[int, str]] | None = None) -> set[int]:
    """Living processes whose environment holds ``FEDSIM_BENCH_TAG=tag`` (only processes of this user
    can be read). Environments are read once per process (cached by pid and start time)."""
    needle = f"{TAG_VAR}={tag}".encode()
    table = _living_parents() if table is None else table
    found = set()
    for pid, (_, start) in table.items():
        key = (pid, start + tag)
        if key not in _TAGGED:
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    _TAGGED[key] = needle in f.read().split(b"\0")
            except OSError:
                _TAGGED[key] = False
        if _TAGGED[key]:
            found.add(pid)
    return found


def tree_pids(roots: set[int], tag: str | None = None) -> set[int]:
    """``roots`` (those alive), their descendants and, with ``tag``, every tagged process and its
    descendants."""
    table = _living_parents()
    top = {pid for pid in roots if pid in table}
    if tag is not None:
        top |= tagged(tag, table)
    return top | _descendants(top, table)
