"""Same seed -> identical metrics; checkpoint + resume -> the same run as without interruption."""

import json

import pytest
import torch

from fedsim.experiments.setup import load as load_config
from fedsim.experiments.run import read_checkpoint, run_single

from helpers import run_until


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


UNIFORM = {"name": "uniform", "clients_per_round": 4}


SLOW = {"name": "uniform", "clients_per_round": 4, "slow_classes": [0], "slow_share": 0.4, "slow_factor": 30.0}
WINDOW = {"strategy.round_time": 1.0, "data.alpha": 0.3}
ANARCHIC = {"name": "anarchic", "p": 0.7, "max_steps": 5, "speed_spread": 1.0}


@pytest.mark.parametrize("name, participation, compression, extra", [
    ("fedavg", UNIFORM, {}, {}),
    ("fedau", {"name": "markov", "p": 0.4, "markov_a": 0.3}, {}, {}),
    ("afa-cd", ANARCHIC, {}, {"strategy.m": 2}),
    ("afa-cs", ANARCHIC, {}, {"strategy.m": 2}),
    ("ef21", UNIFORM, {"name": "top-k", "density": 0.1}, {}),      # client g_i and server g restored
    ("ef21", UNIFORM, {"name": "top-k", "density": 0.1}, {"strategy.ef_momentum": 0.5}),  # EF21-SGDM's v_i too
    ("ef14", UNIFORM, {"name": "rand-k", "k": 5}, {}),             # client residuals restored
    pytest.param("dp-mf", {"name": "fixed-epoch", "clients_per_round": 4}, {}, {},  # noise stream and history restored
                 marks=pytest.mark.slow),  # ~4 s; the registry's resume test covers dp-mf by default
    ("fedbuff", SLOW, {}, {**WINDOW, "strategy.buffer_size": 3}),  # a part-filled buffer restored
    ("fedasync", SLOW, {}, WINDOW),                                # model history restored
    ("repair", SLOW, {}, {**WINDOW, "repair.iterations": 3, "repair.samples": 2}),  # history, switch state
    ("fedau", UNIFORM, {}, {"server_optimizer": {"name": "momentum", "momentum": 0.9}}),  # server velocity
    ("fedau", UNIFORM, {}, {"server_optimizer": {"name": "adam", "lr": 0.05}}),  # FedAdam's m and v
    ("scaffold", UNIFORM, {}, {"client.momentum": 0.5, "server_optimizer": {"name": "adam", "lr": 0.05}}),  # c, c_i
    ("fedbuff", SLOW, {}, {**WINDOW, "privacy.user_level": True, "privacy.noise_multiplier": 0.5,
                            "privacy.accountant": "rdp"}),  # DP x async
    ("dp-fedavg", {"name": "bernoulli", "p": 0.5}, {}, {"privacy.adaptive_clip": True, "privacy.clip_norm": 0.05, "privacy.clip_count_noise": 2.0,
                                                       "privacy.accountant": "rdp"}),  # the adaptive clip norm
])
def test_resume_continues_identically(tmp_path, tiny, name, participation, compression, extra):
    raw = tiny(**{"strategy.name": name, "participation": participation,
                  "rounds": 8, "checkpoint_every": 4, "eval_every": 1, "compression": compression,
                  "privacy.mechanism": "blt" if name == "dp-mf" else "identity", **extra})
    cfg = load_config(raw)
    straight = run_single(cfg, tmp_path / "a", progress=False)

    # Crash after round 6 (checkpoint at round 4): resuming drops rows 5-6 and redoes them.
    run_dir = tmp_path / "c"
    run_until(cfg, run_dir, stop_after=6)
    assert read_checkpoint(run_dir / "checkpoint.pt")["round"] == 4
    resumed = run_single(cfg, run_dir, resume=True, progress=False)
    assert _rows(run_dir / "metrics.jsonl") == _rows(tmp_path / "a" / "metrics.jsonl")
    assert resumed["final_accuracy"] == straight["final_accuracy"]


def test_same_seed_twice_gives_identical_metrics(tmp_path, tiny):
    raw = tiny(**{"strategy.name": "fedau", "participation": {"name": "bernoulli", "p": 0.5}})
    run_single(load_config(raw), tmp_path / "a", progress=False)
    run_single(load_config(raw), tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()
    other = tiny(**{"seed": 4, "strategy.name": "fedau", "participation": {"name": "bernoulli", "p": 0.5}})
    run_single(load_config(other), tmp_path / "c", progress=False)
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() != (tmp_path / "c" / "metrics.jsonl").read_bytes()


def test_corrupt_checkpoint_fails_clearly_and_keeps_files(tmp_path, tiny):
    cfg = load_config(tiny())
    run_single(cfg, tmp_path, progress=False)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="unreadable"):
        run_single(cfg, tmp_path, resume=True, progress=False)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_checkpoint_of_another_config_is_refused(tmp_path, tiny):
    run_single(load_config(tiny()), tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="different config"):
        run_single(load_config(tiny(seed=9)), tmp_path, resume=True, progress=False)


def test_virtual_time_budget_stops_the_run_and_resume_does_not_extend_it(tmp_path, tiny):
    raw = tiny(**{"rounds": 50, "max_virtual_time": 1.0,
                  "participation": {"name": "uniform", "clients_per_round": 4, "step_time": 0.05, "comm_time": 0.1}})
    cfg = load_config(raw)
    summary = run_single(cfg, tmp_path, progress=False)
    rows = _rows(tmp_path / "metrics.jsonl")
    assert summary["rounds"] == len(rows) < 50
    assert rows[-1]["virtual_time"] >= 1.0 > rows[-2]["virtual_time"]
    assert rows[-1]["accuracy"] is not None
    again = run_single(cfg, tmp_path, resume=True, progress=False)
    assert again["rounds"] == summary["rounds"] and _rows(tmp_path / "metrics.jsonl") == rows
