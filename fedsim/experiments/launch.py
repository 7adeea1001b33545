"""``fedsim launch``: a server and N client node processes on 127.0.0.1, one command.

Per run (or per arm of a comparison preset, one after another): generate a test CA, server
certificate and one token per node bound to its client range (unless ``--insecure``), start
``fedsim server`` on a free port and, at the same time, ``fedsim client`` processes on contiguous
client ranges (they retry until the server listens), forward the server's output, and wait. On
Linux the server and nodes are forked from the launcher after it has imported torch and loaded the
data, so none of them starts a fresh interpreter (``fedsim bench runtime`` measures the time to the
first round against ``fedsim run``). Outputs are ``fedsim run``'s
(``metrics.jsonl``, ``summary.json``, ``curves.png``, ``checkpoint.pt``; plus ``comparison.*`` for
arms); node logs go to ``OUT/.launch/node-<i>.log``. On exit, error or Ctrl-C every child still
running is terminated by its PID (SIGTERM, then SIGKILL after a grace period); if the launcher itself
is killed (SIGKILL), the kernel sends its children SIGTERM (Linux). ``--resume`` continues every run
(arm) that has a checkpoint, through ``fedsim server --resume``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..config import ConfigError, arm_configs
from .setup import load as load_config


def contiguous(num_clients: int, parts: int) -> list[list[int]]:
    """Split ``0..num_clients-1`` into ``parts`` contiguous, nearly equal ranges."""
    if not 1 <= parts <= num_clients:
        raise ConfigError(f"--processes must be between 1 and the number of clients ({num_clients}), got {parts}")
    base, extra = divmod(num_clients, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (i < extra)
        out.append(list(range(start, start + size)))
        start += size
    return out


def launch(config: str, overrides: list[str], *, processes: int, out: str | None = None, insecure: bool = False,
           round_timeout: float = 120.0, quiet: bool = False, resume: bool = False, overwrite: bool = False,
           echo=print) -> int:
    from .report import comparison_table, plot_curves, read_rows
    from .run import check_out_dir

    cfg = load_config(config, overrides)
    out = Path(out or os.path.join("runs", f"{cfg.name}-grpc"))
    check_out_dir(out, resume=resume, overwrite=overwrite)
    arms = arm_configs(cfg)
    if FORK:
        _warm(arms.values())
    summaries = {}
    for arm, arm_cfg in arms.items():
        arm_out = out / arm if cfg.arms else out
        code = _launch_one(config, overrides, arm if cfg.arms else None, arm_cfg.data.num_clients, processes,
                           arm_out, insecure, round_timeout, quiet, echo,
                           resume=resume and (arm_out / "checkpoint.pt").exists())
        if code != 0:
            return code
        summaries[arm] = json.loads((arm_out / "summary.json").read_text())
    table = comparison_table(summaries)
    if cfg.arms:
        (out / "comparison.md").write_text(f"# {cfg.name}\n\n{cfg.description}\n\n{table}\n")
        (out / "comparison.json").write_text(json.dumps(summaries, indent=2))
        plot_curves({arm: read_rows(out / arm / "metrics.jsonl") for arm in arms}, out / "curves.png", cfg.name)
    echo(table)
    echo(f"outputs in {out}/")
    return 0


def _launch_one(config, overrides, arm, num_clients, processes, out: Path, insecure, round_timeout, quiet, echo, *,
                resume: bool = False) -> int:
    from ..runtime.security import make_certs, write_tokens

    ranges = contiguous(num_clients, processes)
    work = out / ".launch"
    work.mkdir(parents=True, exist_ok=True)
    fedsim = [sys.executable, "-m", "fedsim"]
    port = _free_port()
    server_cmd = [*fedsim, "server", config, "--address", f"127.0.0.1:{port}", "--out", str(out),
                  "--round-timeout", str(round_timeout), *[a for s in overrides for a in ("--set", s)]]
    if arm:
        server_cmd += ["--arm", arm]
    if quiet:
        server_cmd.append("--quiet")
    server_cmd.append("--resume" if resume else "--overwrite")  # the launcher checked OUT already
    if insecure:
        server_cmd.append("--insecure")
        secure: list[list[str]] = [["--insecure"]] * processes
    else:
        certs = make_certs(work / "certs")
        tokens = write_tokens(certs, processes, ranges)
        server_cmd += ["--tls-dir", str(certs), "--token-file", str(certs / "tokens.txt")]
        secure = [["--tls-dir", str(certs), "--token-file", str(t)] for t in tokens]
    children: list = []
    logs = []
    start = _fork if FORK else _spawn
    try:
        server = start(server_cmd, None)
        children.append(server)
        _forward(server, echo)
        for i, (clients, sec) in enumerate(zip(ranges, secure)):  # they retry until the server is up
            log = open(work / f"node-{i}.log", "w")  # noqa: SIM115 - closed in finally
            logs.append(log)
            cmd = [*fedsim, "client", "--server", f"127.0.0.1:{port}", "--clients", f"{clients[0]}-{clients[-1]}",
                   "--name", f"node-{i}", "--max-wait", str(max(30.0, round_timeout)), *sec]
            children.append(start(cmd, log))
        echo(f"launched server (pid {server.pid}) and {processes} client processes on 127.0.0.1:{port}")
        return _wait(server, children[1:], echo)
    except KeyboardInterrupt:
        echo("fedsim launch: interrupted; stopping the server and clients")
        return 130
    finally:
        _terminate(children)
        for log in logs:
            log.close()


# Linux: the server and nodes are forked from the launcher, which has imported torch and flwr and
# loaded the data already (the children inherit the dataset cache), instead of each starting a new
# interpreter; elsewhere they are separate processes.
FORK = sys.platform.startswith("linux")


def _warm(configs) -> None:
    """What every forked child would otherwise do first: import the server and node code and load the
    data (``load_client_data`` caches it; the children inherit the cache). No gRPC object is created
    here: gRPC must not be live in a process that forks."""
    from . import run, serve  # noqa: F401 - imported for the children
    from ..runtime import node  # noqa: F401
    from .setup import load_client_data

    for arm_cfg in configs:
        load_client_data(arm_cfg)


def _spawn(cmd: list[str], log):
    """``cmd`` as a new process; its output to ``log``, or to a pipe (``log`` None) the launcher echoes."""
    if log is None:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1, preexec_fn=_die_with_parent)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)


class _Forked:
    """A forked child running ``fedsim <args>`` in-process, with the ``subprocess.Popen`` methods the
    launcher uses (``pid``, ``poll``, ``wait``, ``terminate``, ``kill``, ``returncode``, ``stdout``)."""

    def __init__(self, argv: list[str], log):
        read_end = None
        if log is None:
            read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                _die_with_parent()
                out = write_end if log is None else log.fileno()
                if read_end is not None:
                    os.close(read_end)
                os.dup2(out, 1)
                os.dup2(out if log is not None else 2, 2)
                import runpy

                sys.argv = ["fedsim", *argv]  # exactly `python -m fedsim ARGV`, in this warm process
                runpy.run_module("fedsim", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - report and leave with a failure code
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.pid, self.returncode = pid, None
        self.stdout = None
        if read_end is not None:
            os.close(write_end)
            self.stdout = os.fdopen(read_end, "r", buffering=1)

    def poll(self):
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def _fork(cmd: list[str], log) -> _Forked:
    """``cmd`` (``python -m fedsim ...``) in a forked child of this warm process."""
    return _Forked(cmd[3:], log)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies, even by SIGKILL (Linux prctl
    PR_SET_PDEATHSIG); elsewhere a no-op, and the launcher's own cleanup is what stops them."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def _free_port() -> int:
    """A port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _forward(server: subprocess.Popen, echo) -> None:
    """Echo the server's stdout from a thread."""
    def pump():
        for line in server.stdout:
            echo(line.rstrip("\n"))
    threading.Thread(target=pump, daemon=True).start()


def _wait(server: subprocess.Popen, clients: list[subprocess.Popen], echo) -> int:
    reported = set()
    while server.poll() is None:
        for i, c in enumerate(clients):
            if c.poll() not in (None, 0) and i not in reported:
                reported.add(i)
                echo(f"warning: client process {i} (pid {c.pid}) exited with code {c.returncode}; "
                     f"see its log in .launch/node-{i}.log")
        time.sleep(0.2)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(c.poll() is None for c in clients):
        time.sleep(0.1)
    return server.returncode


def _terminate(children: list[subprocess.Popen], grace: float = 5.0) -> None:
    """Stop the children we started, by PID: SIGTERM, then SIGKILL after ``grace`` seconds."""
    alive = [c for c in children if c.poll() is None]
    for c in alive:
        c.terminate()
    deadline = time.monotonic() + grace
    for c in alive:
        try:
            c.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait(5)
