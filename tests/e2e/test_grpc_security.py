"""gRPC runtime security on 127.0.0.1: TLS, node tokens, session ownership, size limit (no training)."""

import json
import logging

import grpc
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage

from fedsim.runtime.grpc_grid import GrpcGrid
from fedsim.runtime.grpc_service import SESSION_KEY, FleetStub, open_channel, serve
from fedsim.runtime.node import Node
from fedsim.runtime.security import (TokenBook, channel_credentials, is_loopback, make_certs, parse_clients,
                                     server_credentials, write_tokens)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    make_certs(d)
    write_tokens(d, 2, [[0, 1], [2, 3]])
    return d


@pytest.fixture
def fleet(certs):
    """A TLS server over a 4-client grid; yields (grid, address)."""
    grid = GrpcGrid(4, seed=1, config={}, tokens=TokenBook.load(certs / "tokens.txt"), round_timeout=2.0)
    server, port = serve(grid, "127.0.0.1:0", server_credentials(certs), max_message_bytes=4096)
    yield grid, f"127.0.0.1:{port}"
    grid.close()
    server.stop(0).wait(5)


def _stub(certs, address):
    channel = open_channel(address, channel_credentials(certs))
    return channel, FleetStub(channel)


def _register(stub, certs, i, clients):
    token = (certs / f"node-{i}.token").read_text().strip()
    info = json.loads(stub.register(token, clients, timeout=10))
    return info["session"], {int(c): n for c, n in info["nodes"].items()}


def test_unknown_token_is_refused_with_a_log_line(fleet, certs, caplog):
    grid, address = fleet
    node = Node(address, [0, 1], "not-a-token", credentials=channel_credentials(certs), max_wait=5)
    with caplog.at_level(logging.WARNING):
        assert node.run() == 3
    assert any("unknown token" in r.getMessage() for r in caplog.records)
    assert grid.transport_stats()["unauthenticated"] == 1
    assert list(grid.get_node_ids()) == []


def test_unauthenticated_bodies_are_refused_before_they_are_read(fleet, certs):
    """Register and Push check the token / session in the metadata first; a large body from a sender
    without them is refused at once (measured against a real server process: 4 x 40 MB pre-auth
    Registers raised its peak RSS by 212 MiB before, 1.5 MiB now)."""
    grid, address = fleet
    channel, stub = _stub(certs, address)
    big = b"x" * (8 << 20)
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            stub._register(iter([big]), metadata=(("fedsim-token", "forged"),), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub.push(big, metadata=((SESSION_KEY, "forged"),), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stats = grid.transport_stats()
    assert stats["unauthenticated"] == 1 and stats["unknown_session"] == 1 and not stats.get("malformed")


def test_one_session_cannot_hold_every_server_thread(fleet, certs):
    """Long polls are bounded per session: more than a few at once are refused, so an authenticated
    node opening hundreds cannot starve the others."""
    from concurrent.futures import ThreadPoolExecutor

    grid, address = fleet
    channel, stub = _stub(certs, address)
    with channel:
        sid, _ = _register(stub, certs, 0, [0, 1])

        def poll(_):
            try:
                list(stub.pull(b'{"wait": 2}', metadata=((SESSION_KEY, sid),), timeout=10))
                return "ok"
            except grpc.RpcError as exc:
                return exc.code()

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(poll, range(12)))
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 12 - 4 and codes.count("ok") >= 1
    assert grid.transport_stats()["too_many_polls"] >= 8


def test_a_node_that_keeps_sending_bad_replies_is_disconnected_and_named(fleet, certs, caplog):
    from fedsim.runtime.grpc_grid import MAX_STRIKES

    grid, address = fleet
    channel, stub = _stub(certs, address)
    with channel:
        sid, nodes = _register(stub, certs, 0, [0, 1])
        reply = Message(Error(code=1, reason="x"), reply_to=Message(RecordDict(), dst_node_id=nodes[0],
                                                                     message_type="train"))
        junk = message_to_proto(reply).SerializeToString()  # answers a message the server never sent
        with caplog.at_level(logging.WARNING):
            for _ in range(MAX_STRIKES):
                with pytest.raises(grpc.RpcError):
                    stub.push(junk, metadata=((SESSION_KEY, sid),), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.pull(b'{"wait": 0}', metadata=((SESSION_KEY, sid),), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert grid.transport_stats()["disconnected"] == 1 and list(grid.get_node_ids()) == []
    assert any("disconnected node-0 after" in r.getMessage() for r in caplog.records)


def test_malformed_requests_are_one_refusal_line_not_a_traceback(fleet, certs, capfd, caplog):
    grid, address = fleet
    channel, stub = _stub(certs, address)
    token = (certs / "node-0.token").read_text().strip()
    with channel:
        for body in (b"{not json", b'{"clients": "x"}', b'{"clients": [1e400]}', b"\xff\xfe"):
            with pytest.raises(grpc.RpcError) as err:
                stub._register(iter([body]), metadata=(("fedsim-token", token),), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        sid, _ = _register(stub, certs, 0, [0, 1])
        for wait in (b"{not json", b"[]"):
            header, *_ = list(stub.pull(wait, metadata=((SESSION_KEY, sid),), timeout=20))  # a default wait is used
            assert json.loads(header) == {"done": False}
    assert grid.transport_stats()["malformed"] == 4
    assert "Traceback" not in capfd.readouterr().err and "Traceback" not in caplog.text


def test_token_only_covers_its_own_clients(fleet, certs):
    grid, address = fleet
    channel, stub = _stub(certs, address)
    with channel, pytest.raises(grpc.RpcError) as err:
        _register(stub, certs, 0, [2])  # node-0's token is bound to clients 0-1
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert grid.transport_stats()["unauthorized_clients"] == 1


def test_unknown_session_and_plaintext_are_refused(fleet, certs):
    grid, address = fleet
    channel, stub = _stub(certs, address)
    with channel, pytest.raises(grpc.RpcError) as err:
        list(stub.pull(b'{"wait": 0}', metadata=((SESSION_KEY, "forged"),), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    plain = open_channel(address)  # TLS server, plaintext client
    with plain, pytest.raises(grpc.RpcError):
        FleetStub(plain).register("", [0], timeout=3)


def test_a_node_cannot_answer_another_nodes_message(fleet, certs):
    grid, address = fleet
    channel, stub = _stub(certs, address)
    with channel:
        sid_a, nodes_a = _register(stub, certs, 0, [0, 1])
        sid_b, nodes_b = _register(stub, certs, 1, [2, 3])
        [mid] = grid.push_messages([Message(RecordDict(), dst_node_id=nodes_b[2], message_type=MessageType.QUERY)])
        # B receives its message; A (another session) forges the answer, claiming B's node or its own.
        header, data = list(stub.pull(b'{"wait": 1}', metadata=((SESSION_KEY, sid_b),), timeout=10))
        request = message_from_proto(ProtoMessage.FromString(data))
        forged = Message(RecordDict(), reply_to=request)
        for src in (nodes_b[2], nodes_a[0]):
            forged.metadata.__dict__["_src_node_id"] = src
            with pytest.raises(grpc.RpcError) as err:
                stub.push(message_to_proto(forged).SerializeToString(), metadata=((SESSION_KEY, sid_a),), timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert grid.transport_stats()["foreign"] == 2
        assert list(grid.pull_messages([mid])) == []
        # the rightful node answers; a second answer is refused
        honest = message_to_proto(Message(RecordDict(), reply_to=request)).SerializeToString()
        stub.push(honest, metadata=((SESSION_KEY, sid_b),), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            stub.push(honest, metadata=((SESSION_KEY, sid_b),), timeout=10)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        [reply] = grid.pull_messages([mid])
        assert reply.metadata.src_node_id == nodes_b[2]


def test_oversized_and_undecodable_replies_are_refused_and_counted(fleet, certs):
    grid, address = fleet
    channel, stub = _stub(certs, address)
    with channel:
        sid, nodes = _register(stub, certs, 0, [0, 1])
        [mid] = grid.push_messages([Message(RecordDict(), dst_node_id=nodes[0], message_type=MessageType.TRAIN)])
        _, data = list(stub.pull(b'{"wait": 1}', metadata=((SESSION_KEY, sid),), timeout=10))
        request = message_from_proto(ProtoMessage.FromString(data))
        big = ArrayRecord(array_dict={"update": Array(np.zeros(5000, dtype=np.float32))})
        reply = Message(RecordDict({"update": big}), reply_to=request)
        for payload, code in [(message_to_proto(reply).SerializeToString(), grpc.StatusCode.RESOURCE_EXHAUSTED),
                              (b"\x01garbage", grpc.StatusCode.INVALID_ARGUMENT)]:
            with pytest.raises(grpc.RpcError) as err:
                stub.push(payload, metadata=((SESSION_KEY, sid),), timeout=10)
            assert err.value.code() == code
    stats = grid.transport_stats()
    assert stats["oversized"] == 1 and stats["malformed"] == 1
    [stand_in] = grid.pull_messages([mid])  # the round need not wait: an error reply stands in for it
    assert stand_in.has_error() and "over the 4096-byte limit" in stand_in.error.reason


def test_security_helpers(tmp_path):
    assert parse_clients("0-3,7,5-5") == [0, 1, 2, 3, 5, 7]
    with pytest.raises(ValueError):
        parse_clients("3-1")
    assert is_loopback("127.0.0.1:9400") and is_loopback("localhost:1") and is_loopback("[::1]:5")
    assert not is_loopback("10.0.0.1:9400") and not is_loopback("0.0.0.0:9400")
    write_tokens(tmp_path, 1, [[0, 1]])
    book = TokenBook.load(tmp_path / "tokens.txt")
    assert book.check((tmp_path / "node-0.token").read_text().strip()).clients == {0, 1}
    assert book.check("nope") is None
    assert (tmp_path / "node-0.token").stat().st_mode & 0o077 == 0


def test_tokens_are_always_bound_to_client_ranges(tmp_path):
    from fedsim.cli import main

    assert main(["certs", "--out", str(tmp_path / "c"), "--tokens", "2"]) == 2  # no --num-clients: refused
    (tmp_path / "tokens.txt").write_text("node-0 secret\n")  # a hand-written unbound token
    with pytest.raises(ValueError, match="NAME TOKEN CLIENTS"):
        TokenBook.load(tmp_path / "tokens.txt")
    with pytest.raises(ValueError, match="client range"):
        write_tokens(tmp_path / "d", 2, [[0, 1]])


def test_rewriting_secrets_replaces_symlinks_and_wide_modes(tmp_path):
    from fedsim.cli import main

    out = tmp_path / "c"
    out.mkdir()
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("keep me")
    (out / "server.key").symlink_to(victim)  # a planted symlink is not written through
    (out / "node-0.token").write_text("old")
    (out / "node-0.token").chmod(0o644)
    assert main(["certs", "--out", str(out), "--tokens", "2", "--num-clients", "4", "--days", "365"]) == 0
    assert victim.read_text() == "keep me" and not (out / "server.key").is_symlink()
    for name in ("server.key", "node-0.token", "node-1.token", "tokens.txt"):
        assert (out / name).stat().st_mode & 0o077 == 0, name
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 365


def test_a_replaced_session_is_told_so(fleet, certs):
    grid, address = fleet
    channel, stub = _stub(certs, address)
    with channel:
        old, _ = _register(stub, certs, 0, [0, 1])
        new, _ = _register(stub, certs, 0, [0, 1])  # e.g. the node process was restarted
        with pytest.raises(grpc.RpcError) as err:
            list(stub.pull(b'{"wait": 0}', metadata=((SESSION_KEY, old),), timeout=10))
        assert err.value.code() == grpc.StatusCode.ABORTED
        header, *_ = list(stub.pull(b'{"wait": 0}', metadata=((SESSION_KEY, new),), timeout=10))
        assert json.loads(header) == {"done": False}


def test_cli_refuses_plaintext_off_loopback_and_a_server_without_tls(tmp_path, capsys):
    from fedsim.cli import main

    assert main(["server", "digits-smoke", "--address", "0.0.0.0:0", "--insecure"]) == 2
    assert "only allowed on a loopback address" in capsys.readouterr().err
    assert main(["server", "digits-smoke", "--address", "127.0.0.1:0"]) == 2
    assert "needs --tls-dir and --token-file" in capsys.readouterr().err
    assert main(["client", "--server", "10.1.2.3:9400", "--clients", "0-3", "--insecure"]) == 2
    assert main(["certs", "--out", str(tmp_path), "--tokens", "2", "--num-clients", "10"]) == 0
    lines = (tmp_path / "tokens.txt").read_text().split("\n")
    assert lines[0].endswith(" 0-4") and lines[1].endswith(" 5-9")
    assert {"ca.pem", "server.pem", "server.key", "node-0.token", "node-1.token"} <= {p.name for p in tmp_path.iterdir()}
