"""Checkpoints are data: checksummed, loaded without running code, never silently replaced or
ignored; write failures (a full disk) are named and keep the previous checkpoint."""

import errno
import hashlib
import io

import pytest
import torch

from fedsim.config import ConfigError
from fedsim.experiments.run import MAGIC, CheckpointError, read_checkpoint, run_single, write_checkpoint
from fedsim.experiments.setup import load as load_config

from conftest import tiny_config


@pytest.fixture
def finished(tmp_path):
    cfg = load_config(tiny_config())
    run_single(cfg, tmp_path, progress=False)
    return cfg, tmp_path


def test_a_flipped_byte_is_refused_and_the_rows_kept(finished):
    cfg, out = finished
    blob = bytearray((out / "checkpoint.pt").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (out / "checkpoint.pt").write_bytes(bytes(blob))
    rows = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="damaged"):
        run_single(cfg, out, resume=True, progress=False)
    assert (out / "metrics.jsonl").read_bytes() == rows


class _Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_crafted_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    torch.save({"version": 3, "evil": _Payload()}, buf)
    payload = buf.getvalue()  # a valid envelope around a pickle that would run code
    (tmp_path / "checkpoint.pt").write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(tmp_path / "checkpoint.pt")
    assert not (tmp_path / "PWNED").exists()


def test_resume_without_a_checkpoint_is_an_error_that_keeps_the_rows(finished):
    cfg, out = finished
    (out / "checkpoint.pt").unlink()
    rows = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="no checkpoint.pt"):
        run_single(cfg, out, resume=True, progress=False)
    assert (out / "metrics.jsonl").read_bytes() == rows


def test_a_changed_config_is_refused_naming_the_keys(finished):
    _, out = finished
    with pytest.raises(CheckpointError, match=r"differs in client\.lr, seed"):
        run_single(load_config(tiny_config(seed=9, **{"client.lr": 0.2})), out, resume=True, progress=False)


def test_a_full_disk_is_named_and_the_previous_checkpoint_kept(finished, monkeypatch):
    _, out = finished
    before = (out / "checkpoint.pt").read_bytes()

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("fedsim.experiments.run.os.fsync", full)
    with pytest.raises(CheckpointError, match="no space left on device"):
        write_checkpoint(out / "checkpoint.pt", {"version": 3})
    assert (out / "checkpoint.pt").read_bytes() == before and not (out / "checkpoint.tmp").exists()


@pytest.mark.parametrize("key,value", [("client.lr", float("inf")), ("strategy.server_lr", float("nan"))])
def test_non_finite_settings_are_refused_at_load(key, value):
    with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
        load_config(tiny_config(**{key: value}))


def test_resume_can_extend_rounds_and_matches_a_longer_run(tmp_path):
    short, longer = load_config(tiny_config(rounds=4)), load_config(tiny_config(rounds=7))
    run_single(short, tmp_path / "ext", progress=False)
    extended = run_single(longer, tmp_path / "ext", resume=True, progress=False)
    straight = run_single(longer, tmp_path / "straight", progress=False)
    assert extended["rounds"] == 7 and extended["final_accuracy"] == straight["final_accuracy"]
    assert (tmp_path / "ext" / "metrics.jsonl").read_text() == (tmp_path / "straight" / "metrics.jsonl").read_text()
    cosine = {"client.lr_schedule": "cosine"}  # its rates depend on the planned number of rounds
    run_single(load_config(tiny_config(rounds=4, **cosine)), tmp_path / "cos", progress=False)
    with pytest.raises(CheckpointError, match="planned for the original number of rounds"):
        run_single(load_config(tiny_config(rounds=9, **cosine)), tmp_path / "cos", resume=True, progress=False)


def test_a_grpc_checkpoint_resumed_in_process_is_a_named_error(tmp_path):
    from grpc_harness import NodeThread, ServerThread, split

    raw = tiny_config(rounds=3)
    server = ServerThread(raw, tmp_path / "grpc")
    threads = [NodeThread(server.address, r) for r in split(raw["data"]["num_clients"], 2)]
    server.result(90)
    [t.join(20) for t in threads]
    with pytest.raises(CheckpointError, match="resumes on the runtime that wrote it"):
        run_single(load_config(raw), tmp_path / "grpc", resume=True, progress=False)
