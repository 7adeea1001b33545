"""``fedsim server``: one federation served over gRPC.

Runs the same round loop, strategies and outputs as ``fedsim run`` (``run_single``) on a
``GrpcGrid``: waits until every virtual client is registered, runs the rounds, checkpoints the global
model, strategy state and grid state atomically (``checkpoint.pt``), then tells the nodes the run is
over and stops the service.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, ExperimentConfig
from ..runtime.grpc_grid import GrpcGrid
from ..runtime.grpc_service import DEFAULT_MAX_MESSAGE_MB, serve
from ..runtime.security import TokenBook, is_loopback, server_credentials
from .setup import load_client_data, make_strategy

log = logging.getLogger("fedsim.grpc")


@dataclass
class ServerOptions:
    address: str = "127.0.0.1:0"
    tls_dir: str | None = None
    token_file: str | None = None
    insecure: bool = False          # plaintext, no tokens: only on a loopback address
    round_timeout: float = 120.0    # wall seconds a round waits for missing answers
    wait_nodes: float = 300.0       # wall seconds to wait for every client to register
    arrival: str = "virtual"
    max_message_mb: float = DEFAULT_MAX_MESSAGE_MB
    health_port: int | None = None  # plaintext grpc.health.v1 on this port (Kubernetes `grpc:` probes)


def check_options(opts: ServerOptions) -> None:
    if opts.insecure:
        if not is_loopback(opts.address):
            raise ConfigError(f"--insecure is only allowed on a loopback address, not {opts.address}; "
                              "use --tls-dir (see `fedsim certs`)")
        return
    if not opts.tls_dir or not opts.token_file:
        raise ConfigError("the gRPC server needs --tls-dir and --token-file (or --insecure on 127.0.0.1 for tests)")
    for name in ("server.pem", "server.key"):
        if not (Path(opts.tls_dir) / name).is_file():
            raise ConfigError(f"--tls-dir {opts.tls_dir} has no {name} (create one with `fedsim certs`)")


def make_grid(cfg: ExperimentConfig, opts: ServerOptions) -> GrpcGrid:
    """The gRPC grid of ``cfg``; it knows every client's shard size from the experiment's partition."""
    tokens = TokenBook.load(opts.token_file) if opts.token_file else None
    sizes = [len(p) for p in load_client_data(cfg).parts]
    return GrpcGrid(cfg.data.num_clients, seed=cfg.seed, config=cfg.to_dict(), tokens=tokens, arrival=opts.arrival,
                    round_timeout=opts.round_timeout, sizes=sizes)


def run_server(cfg: ExperimentConfig, out: str | Path, opts: ServerOptions, *, resume: bool = False,
               progress: bool = True, on_listen=None, grid: GrpcGrid | None = None) -> dict:
    """Serve one run to completion; ``on_listen(port)`` is called once the port is bound."""
    from .run import run_single

    check_options(opts)
    if cfg.staleness_oracle:
        raise ConfigError("config key 'staleness_oracle' is an experiment-only bound (it needs every client's data "
                          "on the server); run it in-process with fedsim run")
    if cfg.stale_model_delay:
        raise ConfigError("config key 'stale_model_delay' is an experiment-only scenario (the in-process grid hands "
                          "slow clients an old model); run it in-process with fedsim run")
    make_strategy(cfg, load_client_data(cfg))  # every setting (participation, DP plan, ...) checked before anyone waits
    grid = grid or make_grid(cfg, opts)
    creds = None if opts.insecure else server_credentials(opts.tls_dir)
    server, port = serve(grid, opts.address, creds, max_message_bytes=int(opts.max_message_mb * 2**20))
    health = None
    try:
        if opts.health_port is not None:
            health = serve_health(f"{opts.address.rsplit(':', 1)[0]}:{opts.health_port}")
        if on_listen is not None:
            on_listen(port)
        if not grid.wait_for_nodes(opts.wait_nodes):
            missing = cfg.data.num_clients - len(list(grid.get_node_ids()))
            raise TimeoutError(f"{missing} of {cfg.data.num_clients} clients did not register "
                               f"within {opts.wait_nodes:.0f} s")
        summary = run_single(cfg, out, resume=resume, progress=progress, grid=grid)
        grid.close()  # only a finished run dismisses the nodes; after a crash they wait for --resume
        _drain(grid, seconds=min(3.0, opts.round_timeout))
        return summary
    finally:
        if health is not None:
            health.stop(grace=None)
        server.stop(grace=1.0).wait(5)


def serve_health(address: str):
    """The standard ``grpc.health.v1.Health`` service (``grpcio-health-checking``, a Flower dependency)
    on its own plaintext gRPC server: the kubelet's native ``grpc:`` probe speaks plaintext only, and
    the fleet port is TLS. This server hosts nothing else; it answers SERVING for ``""`` and
    ``fedsim.Fleet`` while the fleet service listens and stops with it."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from ..runtime.grpc_service import SERVICE

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    servicer = health.HealthServicer()
    for name in ("", SERVICE):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address} (health)")
    server.start()
    return server


def _drain(grid: GrpcGrid, seconds: float) -> None:
    """Give polling nodes a moment to hear that the run is over."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and grid.polling_sessions():
        time.sleep(0.05)
