"""``fedsim client``: a long-lived node process hosting one or many virtual clients.

The node registers its client ids with a token, receives the experiment config from the server and
builds one warm ``ClientHandler`` (data and model stay loaded). It long-polls for messages; all
TRAIN messages of one poll (a round's work for its clients) go to the handler as one cohort, exactly
as the in-process runtime does, and every reply is pushed back as a Flower protobuf ``Message``.
Each hosted client has its own ``Context`` (``partition-id``) and Flower node id.

Losing the server (restart, network) makes the node reconnect with exponential backoff for up to
``max_wait`` seconds and re-register; its handler and client-side state (EF21/EF14 vectors,
SCAFFOLD's c_i) survive that. The handler also keeps the earlier versions of that state a resumed
server may ask for (``StateVersions``). A restarted node *process* has its clients' state only with
``state_dir`` (saved before every batch of answers leaves); without it the server refuses its
stateful clients by name.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import grpc
import torch
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module

from . import protocol as P
from .grpc_service import SESSION_KEY, FleetStub, open_channel

log = logging.getLogger("fedsim.node")
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


class NodeRefused(RuntimeError):
    """The server turned this node away (bad token, clients it may not host)."""


class Node:
    def __init__(self, server: str, clients: list[int], token: str = "", *, credentials=None, max_wait: float = 60.0,
                 poll: float = 2.0, name: str = "node", build_handler=None, state_dir: str | None = None):
        self.server, self.clients, self.token = server, list(clients), token
        # client-side state (error-feedback vectors, SCAFFOLD's c_i, their update counts) saved after every
        # batch of answers, so a restarted node picks its clients up where they were
        self.state_path = None if state_dir is None else Path(state_dir) / f"{name}.state.pt"
        self.build_handler = build_handler  # experiment config dict -> warm client handler (the composition root's)
        self.credentials, self.max_wait, self.poll, self.name = credentials, max_wait, poll, name
        self.handler = None
        self._config_key = None
        self.contexts: dict[int, Context] = {}
        self.stop_event = threading.Event()
        self.answered = 0

    # --- main loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until the server says the run is over (0), the node is refused (3), another node takes
        over its clients (4), the server stays away for ``max_wait`` s (1) or ``stop()`` is called (0)."""
        backoff, lost_since = 0.2, None
        while not self.stop_event.is_set():
            channel = open_channel(self.server, self.credentials)
            try:
                stub = FleetStub(channel)
                session = self._register(stub)
                backoff, lost_since = 0.2, None
                if self._serve(stub, session):
                    return 0
            except NodeRefused as exc:
                log.error("%s: refused by the server: %s", self.name, exc)
                return 3
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.ABORTED:  # a newer node registered our clients
                    log.error("%s: %s; exiting", self.name, exc.details())
                    return 4
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > self.max_wait:
                    log.error("%s: no server at %s for %.0f s (%s); giving up", self.name, self.server,
                              self.max_wait, exc.code())
                    return 1
                log.info("%s: server unavailable (%s); retrying in %.1f s", self.name, exc.code(), backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                channel.close()
        return 0

    def stop(self) -> None:
        self.stop_event.set()

    def _register(self, stub: FleetStub) -> str:
        try:
            raw = stub.register(self.token, self.clients, timeout=30)
        except grpc.RpcError as exc:
            if exc.code() in REFUSED:
                raise NodeRefused(exc.details()) from None
            raise
        info = json.loads(raw)
        self._prepare(info)
        log.info("%s: registered %d clients", self.name, len(self.clients))
        return info["session"]

    def _serve(self, stub: FleetStub, session: str) -> bool:
        meta = ((SESSION_KEY, session),)
        while not self.stop_event.is_set():
            stream = stub.pull(json.dumps({"wait": self.poll}).encode(), metadata=meta, timeout=self.poll + 30)
            header, *batch = list(stream)
            if json.loads(header)["done"]:
                log.info("%s: the run is over", self.name)
                return True
            if not batch:
                continue
            messages = [message_from_proto(ProtoMessage.FromString(b)) for b in batch]
            replies = self.answer(messages)
            self._save_state()  # before the answers leave: the server never counts an update the node could lose
            for reply in replies:
                self._push(stub, meta, reply)
        return True

    def _save_state(self) -> None:
        if self.state_path is None or self.handler is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save({"config": self._config_key, "clients": self.clients, "state": self.handler.state_dict()}, tmp)
        os.replace(tmp, self.state_path)

    def _load_state(self) -> None:
        """Restore the saved client state when it belongs to this experiment and these clients."""
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            saved = torch.load(self.state_path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file: start afresh, and the server will refuse
            log.warning("%s: cannot read %s (%s); its clients start without state", self.name, self.state_path, exc)
            return
        if saved.get("config") != self._config_key or saved.get("clients") != self.clients:
            log.warning("%s: %s belongs to another experiment or client range; not restored", self.name,
                        self.state_path)
            return
        self.handler.load_state_dict(saved["state"])
        log.info("%s: client state restored from %s", self.name, self.state_path)

    def _push(self, stub: FleetStub, meta, reply: Message) -> None:
        data = message_to_proto(reply).SerializeToString()
        try:
            stub.push(data, metadata=meta, timeout=60)
            self.answered += 1
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:  # our session was replaced: re-register
                raise
            log.warning("%s: reply to %s refused: %s", self.name, reply.metadata.reply_to_message_id, exc.details())
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not reply.has_error():
                # too large for the transport: say so in a small error reply, so the round need not wait for it
                reason = f"the reply of {len(data)} bytes was refused as too large ({exc.details()})"
                self._push(stub, meta, Message(metadata=reply.metadata, error=Error(code=413, reason=reason)))

    # --- answering -------------------------------------------------------------------------------
    def _prepare(self, info: dict) -> None:
        key = json.dumps(info["config"], sort_keys=True)
        if key != self._config_key:  # first registration or a new experiment: build the warm handler
            if self.build_handler is None:
                raise RuntimeError(f"{self.name}: no build_handler to build clients from the server's config")
            self.handler = self.build_handler(info["config"])
            if hasattr(self.handler, "keep_versions"):  # the server may resume an older checkpoint
                self.handler.keep_versions()
            self._config_key = key
            self.contexts = {}
            self._load_state()
        n = int(info["num_clients"])
        for cid, nid in info["nodes"].items():
            nid = int(nid)
            if nid not in self.contexts:
                self.contexts[nid] = Context(run_id=int(info["run_id"]), node_id=nid, state=RecordDict(), run_config={},
                                             node_config={"partition-id": int(cid), "num-partitions": n})

    def answer(self, messages: list[Message]) -> list[Message]:
        """Replies for one batch: TRAIN messages go to the handler as one cohort."""
        replies, train = [], []
        for msg in messages:
            context = self.contexts.get(msg.metadata.dst_node_id)
            kind = msg.metadata.message_type
            if context is None:
                replies.append(Message(Error(code=404, reason="node not hosted here"), reply_to=msg))
            elif kind.startswith(MessageType.TRAIN):
                train.append(msg)
            elif kind.startswith(MessageType.QUERY):
                replies.append(self.handler.query(msg, context))
            elif kind.startswith(MessageType.EVALUATE):  # a Flower strategy's federated evaluation
                replies.extend(self.handler.evaluate([msg], [context]))
            else:
                replies.append(Message(Error(code=400, reason=f"unsupported message type '{kind}'"), reply_to=msg))
        if train:
            _share_arrays(train)
            replies.extend(self.handler.train(train, [self.contexts[m.metadata.dst_node_id] for m in train]))
        return replies


def _share_arrays(messages: list[Message]) -> None:
    """Messages of one round carry the same global model; let them share one record so the handler
    decodes it once (as in-process, where they share one object)."""
    seen: dict[str, object] = {}
    for msg in messages:
        record = msg.content.array_records.get(P.ARRAYS)
        if record is None:
            continue
        key = record.object_id
        if key in seen:
            msg.content[P.ARRAYS] = seen[key]
        else:
            seen[key] = record
