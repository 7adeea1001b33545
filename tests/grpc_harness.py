"""Run a fedsim gRPC server and client nodes in threads of the test process (127.0.0.1 only).

Every wait is bounded: servers get a short ``wait_nodes`` and ``round_timeout``, nodes a short
``max_wait``, and ``ServerThread.result`` joins with a timeout.
"""

from __future__ import annotations

import threading

from fedsim.experiments.setup import handler_for_config, load as load_config
from fedsim.runtime.node import Node
from fedsim.experiments.serve import ServerOptions, make_grid, run_server


class ServerThread:
    def __init__(self, raw_or_cfg, out, *, resume: bool = False, grid=None, **opts):
        self.cfg = load_config(raw_or_cfg) if isinstance(raw_or_cfg, dict) else raw_or_cfg
        defaults = dict(address="127.0.0.1:0", insecure=True, round_timeout=20.0, wait_nodes=30.0)
        self.opts = ServerOptions(**{**defaults, **opts})
        self.grid = grid or make_grid(self.cfg, self.opts)
        self.port = None
        self.summary = None
        self.error: BaseException | None = None
        self._bound = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(out, resume), daemon=True)
        self.thread.start()
        if not self._bound.wait(30):
            raise TimeoutError("server did not bind")
        if self.error is not None:
            raise self.error

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _main(self, out, resume):
        def bound(port):
            self.port = port
            self._bound.set()
        try:
            self.summary = run_server(self.cfg, out, self.opts, resume=resume, progress=False, on_listen=bound,
                                      grid=self.grid)
        except BaseException as exc:  # noqa: BLE001 - reported by result()
            self.error = exc
            self._bound.set()

    def result(self, timeout: float = 60.0) -> dict:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError("server did not finish in time")
        if self.error is not None:
            raise self.error
        return self.summary


class NodeThread:
    def __init__(self, address: str, clients, token: str = "", node_cls=Node, **kw):
        kw.setdefault("max_wait", 10.0)
        kw.setdefault("poll", 0.5)
        kw.setdefault("build_handler", handler_for_config)
        self.node = node_cls(address, list(clients), token, **kw)
        self.code = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self):
        self.code = self.node.run()

    def join(self, timeout: float = 30.0) -> int | None:
        self.thread.join(timeout)
        return self.code

    def stop(self):
        self.node.stop()
        self.thread.join(15)


def split(num_clients: int, parts: int) -> list[range]:
    step = -(-num_clients // parts)
    return [range(i, min(i + step, num_clients)) for i in range(0, num_clients, step)]
