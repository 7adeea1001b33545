"""fedsim's grpcio service ``fedsim.Fleet``: request/response over raw bytes, no .proto compilation.

Methods (generic handlers, payloads are bytes):

``Register``  unary. Request JSON ``{"token", "clients": [ids]}``; reply JSON ``{"session", "nodes":
              {client: node id}, "run_id", "num_clients", "config"}`` (the experiment, so a node
              needs only the server address, its clients and its token).
``Pull``      server streaming, a long poll. Request JSON ``{"wait": s}``; the stream is one JSON
              header ``{"done": bool}`` followed by zero or more serialized Flower
              ``flwr.proto.message_pb2.Message``s (``message_to_proto``) for the session's nodes.
``Push``      unary. Request: one serialized Flower ``Message`` (a reply); reply JSON ``{"ok": true}``.

Every call but ``Register`` carries the session id in the ``fedsim-session`` metadata entry.
Refusals are gRPC status codes with a reason (UNAUTHENTICATED, PERMISSION_DENIED,
RESOURCE_EXHAUSTED for a reply over ``max_message_bytes``, ...); the grid counts and logs them.
Request/response keeps the node simple to restart; a long poll costs one round trip per batch.
"""

from __future__ import annotations

import json
from concurrent import futures

import grpc

from .grpc_grid import GrpcGrid, Refused

SERVICE = "fedsim.Fleet"
SESSION_KEY = "fedsim-session"
MAX_WAIT = 10.0
DEFAULT_MAX_MESSAGE_MB = 64.0
CHANNEL_LIMIT = 1 << 30  # what gRPC itself lets through; fedsim's own limit is checked in Push


class FleetServicer:
    def __init__(self, grid: GrpcGrid, max_message_bytes: int):
        self.grid, self.max_message_bytes = grid, int(max_message_bytes)

    def register(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            body = json.loads(request)
            clients = [int(c) for c in body["clients"]]
            token = str(body.get("token", ""))
        except (ValueError, KeyError, TypeError):
            self.grid.count("malformed")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "register: expected JSON {token, clients}")
        try:
            sid, info = self.grid.register(token, clients, context.peer())
        except Refused as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.reason)
        return json.dumps({"session": sid, **info}).encode()

    def pull(self, request: bytes, context: grpc.ServicerContext):
        sid = _session(context)
        try:
            wait = min(MAX_WAIT, max(0.0, float(json.loads(request or b"{}").get("wait", 1.0))))
        except (ValueError, TypeError, AttributeError):
            wait = 1.0
        try:
            done, messages = self.grid.take(sid, wait)
        except Refused as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.reason)
        yield json.dumps({"done": done}).encode()
        yield from messages

    def push(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        sid = _session(context)
        try:
            self.grid.accept(sid, request, self.max_message_bytes)
        except Refused as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.reason)
        return b'{"ok": true}'


def _session(context: grpc.ServicerContext) -> str:
    return dict(context.invocation_metadata()).get(SESSION_KEY, "")


def serve(grid: GrpcGrid, address: str, credentials: grpc.ServerCredentials | None = None, *,
          max_message_bytes: int = int(DEFAULT_MAX_MESSAGE_MB * 2**20), workers: int = 128) -> tuple[grpc.Server, int]:
    """Start the service on ``address`` (port 0 picks a free one); returns ``(server, port)``.

    ``credentials`` None means plaintext (loopback test mode only; the CLI enforces that). Each
    polling node holds a worker thread for up to ``MAX_WAIT`` s, hence the generous ``workers``.
    """
    limit = min(CHANNEL_LIMIT, 2 * int(max_message_bytes) + (1 << 20))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet"),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", CHANNEL_LIMIT)])
    svc = FleetServicer(grid, max_message_bytes)
    handlers = {
        "Register": grpc.unary_unary_rpc_method_handler(svc.register),
        "Pull": grpc.unary_stream_rpc_method_handler(svc.pull),
        "Push": grpc.unary_unary_rpc_method_handler(svc.push),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port


class FleetStub:
    """Client side of ``fedsim.Fleet`` on a channel (bytes in, bytes out)."""

    def __init__(self, channel: grpc.Channel):
        self.register = channel.unary_unary(f"/{SERVICE}/Register")
        self.pull = channel.unary_stream(f"/{SERVICE}/Pull")
        self.push = channel.unary_unary(f"/{SERVICE}/Push")


def open_channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", CHANNEL_LIMIT), ("grpc.max_send_message_length", CHANNEL_LIMIT)]
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)
