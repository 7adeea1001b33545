"""fedsim's grpcio service ``fedsim.Fleet``: request/response over raw bytes, no .proto compilation.

Methods (generic handlers, payloads are bytes):

``Register``  one request message. The token in the ``fedsim-token`` metadata entry, the body JSON
              ``{"clients": [ids]}``; reply JSON ``{"session", "nodes": {client: node id}, "run_id",
              "num_clients", "config"}`` (the experiment, so a node needs only the server address,
              its clients and its token).
``Pull``      server streaming, a long poll. Request JSON ``{"wait": s}``; the stream is one JSON
              header ``{"done": bool}`` followed by zero or more serialized Flower
              ``flwr.proto.message_pb2.Message``s (``message_to_proto``) for the session's nodes.
``Push``      one request message: a serialized Flower ``Message`` (a reply); reply JSON ``{"ok": true}``.

Every call but ``Register`` carries the session id in the ``fedsim-session`` metadata entry.
``Register`` and ``Push`` are request-streaming methods carrying exactly one message, so the server
checks the token or session in the metadata *before* it reads the body: an unauthenticated sender's
payload is never buffered beyond gRPC's flow-control window (a unary method would receive the whole
message first).
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
TOKEN_KEY = "fedsim-token"
MAX_WAIT = 10.0
DEFAULT_MAX_MESSAGE_MB = 64.0
CHANNEL_LIMIT = 1 << 30  # what gRPC itself lets through; fedsim's own limit is checked in Push


class FleetServicer:
    def __init__(self, grid: GrpcGrid, max_message_bytes: int):
        self.grid, self.max_message_bytes = grid, int(max_message_bytes)

    def register(self, requests, context: grpc.ServicerContext) -> bytes:
        token = dict(context.invocation_metadata()).get(TOKEN_KEY, "")
        try:
            entry = self.grid.authenticate(token, context.peer())  # before the body is read
        except Refused as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.reason)
        request = _one(requests, context, self.grid)
        try:
            clients = [int(c) for c in json.loads(request)["clients"]]
        except (ValueError, KeyError, TypeError, OverflowError):
            self.grid.count("malformed")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "register: expected JSON {clients: [ids]}")
        try:
            sid, info = self.grid.register(entry, clients, context.peer())
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

    def push(self, requests, context: grpc.ServicerContext) -> bytes:
        sid = _session(context)
        try:
            self.grid.check_session(sid)  # before the body is read
            self.grid.accept(sid, _one(requests, context, self.grid), self.max_message_bytes)
        except Refused as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.reason)
        return b'{"ok": true}'


def _one(requests, context: grpc.ServicerContext, grid: GrpcGrid) -> bytes:
    """The single message of a Register/Push stream."""
    request = next(requests, None)
    if request is None:
        grid.count("malformed")
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected one request message")
    return request


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
        "Register": grpc.stream_unary_rpc_method_handler(svc.register),
        "Pull": grpc.unary_stream_rpc_method_handler(svc.pull),
        "Push": grpc.stream_unary_rpc_method_handler(svc.push),
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
        self._register = channel.stream_unary(f"/{SERVICE}/Register")
        self.pull = channel.unary_stream(f"/{SERVICE}/Pull")
        self._push = channel.stream_unary(f"/{SERVICE}/Push")

    def register(self, token: str, clients: list[int], *, timeout: float | None = None) -> bytes:
        return self._register(iter([json.dumps({"clients": list(clients)}).encode()]),
                              metadata=((TOKEN_KEY, token),), timeout=timeout)

    def push(self, request: bytes, *, metadata=(), timeout: float | None = None) -> bytes:
        return self._push(iter([request]), metadata=metadata, timeout=timeout)


def open_channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", CHANNEL_LIMIT), ("grpc.max_send_message_length", CHANNEL_LIMIT)]
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)
