"""The `fedsim` command line, end to end on small configs."""

import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_config

ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def fedsim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def _toml(raw: dict) -> str:
    import tomli_w
    return tomli_w.dumps(raw)


@pytest.fixture
def config_file(tmp_path):
    def write(raw):
        path = tmp_path / "exp.toml"
        path.write_text(_toml(raw))
        return path
    return write


def test_presets_lists_every_packaged_preset():
    res = fedsim("presets")
    assert res.returncode == 0, res.stderr
    names = [line.split()[0] for line in res.stdout.splitlines()]
    for preset in ("quickstart", "fedau-vs-fedavg", "anarchic-afa", "digits-smoke"):
        assert preset in names


def test_run_writes_metrics_summary_and_plot(tmp_path, config_file):
    path = config_file(tiny_config())
    out = tmp_path / "out"
    res = fedsim("run", str(path), "--set", "rounds=4", "--set", "strategy.name=afa-cs", "--set", "seed=3",
                 "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    for key in ("round", "accuracy", "loss", "virtual_time", "participants", "bytes_up", "bytes_down",
                "afa/grad_norm"):
        assert key in rows[0]
    assert rows[1]["accuracy"] is not None and rows[0]["accuracy"] is None  # eval_every = 2
    summary = json.loads((out / "summary.json").read_text())
    for key in ("final_accuracy", "best_accuracy", "rounds", "wall_seconds", "virtual_time", "bytes_up",
                "bytes_down", "seed", "config"):
        assert key in summary
    assert summary["config"]["strategy"]["name"] == "afa-cs" and summary["seed"] == 3
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows) > 0
    assert (out / "curves.png").stat().st_size > 10_000
    assert "round 4/4" in res.stderr  # quiet progress lines when not on a terminal


@pytest.mark.parametrize("override, message", [
    ("strategy.nmae=fedau", "unknown config key 'strategy.nmae'"),
    ("strategy.name=fedfancy", "config key 'strategy.name' must be one of"),
    ("rounds=zero", "config key 'rounds' must be an integer"),
    ("data.partition=weird", "config key 'data.partition' must be one of"),
    ("participation.name=sometimes", "config key 'participation.name' must be one of"),
    ("participation.period=0", "participation"),
    ("data.options.foo=1", "data.options for 'synthetic'"),
    ("client.lr=-1", "config key 'client.lr' must be > 0"),
])
def test_bad_config_fails_before_training_naming_the_key(tmp_path, config_file, capsys, override, message):
    from fedsim.cli import main

    path = config_file(tiny_config())
    out = tmp_path / "out"
    assert main(["run", str(path), "--set", override, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists()


def test_malformed_toml_and_bad_checkpoint_are_reported(tmp_path, capsys):
    from fedsim.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [1,\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "malformed TOML" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    good.write_text(_toml(tiny_config(rounds=1)))
    assert main(["run", str(good), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    (tmp_path / "o" / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["run", str(good), "--out", str(tmp_path / "o"), "--resume"]) == 2
    assert "unreadable" in capsys.readouterr().err


@pytest.mark.slow  # ~7 s: a whole comparison; seeds and arms are also covered by tests/unit/test_seeds.py
def test_comparison_runs_every_arm_and_one_arm_on_request(tmp_path, config_file):
    raw = tiny_config(rounds=3)
    raw["arms"] = {"fedavg": {"strategy": {"name": "fedavg"}}, "fedau": {"strategy": {"name": "fedau"}}}
    path = config_file(raw)
    res = fedsim("run", str(path), "--out", str(tmp_path / "both"))
    assert res.returncode == 0, res.stderr
    assert "| fedavg |" in res.stdout and "| fedau |" in res.stdout
    for arm in ("fedavg", "fedau"):
        assert (tmp_path / "both" / arm / "summary.json").exists()
    assert (tmp_path / "both" / "curves.png").exists() and (tmp_path / "both" / "comparison.md").exists()
    res = fedsim("run", str(path), "--set", "strategy.name=fedau", "--out", str(tmp_path / "one"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["strategy"] == "fedau" and summary["config"]["data"] == raw["data"] | summary["config"]["data"]
    assert not (tmp_path / "one" / "fedavg").exists()


@pytest.mark.slow  # the preset also runs in-process in tests/unit/test_export.py; this is the subprocess path
def test_digits_preset_runs(tmp_path):
    res = fedsim("run", "digits-smoke", "--set", "rounds=2", "--out", str(tmp_path / "d"), "--quiet")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["rounds"] == 2


def test_an_existing_run_is_never_silently_replaced(tmp_path, capsys):
    from fedsim.cli import main

    good = tmp_path / "good.toml"
    good.write_text(_toml(tiny_config(rounds=1)))
    out = str(tmp_path / "o")
    assert main(["run", str(good), "--out", out, "--quiet"]) == 0
    rows = (tmp_path / "o" / "metrics.jsonl").read_bytes()
    assert main(["run", str(good), "--out", out, "--quiet"]) == 2
    assert "--overwrite replaces it" in capsys.readouterr().err
    assert (tmp_path / "o" / "metrics.jsonl").read_bytes() == rows
    assert main(["run", str(good), "--out", out, "--quiet", "--overwrite"]) == 0
    assert main(["run", str(good), "--out", out, "--resume", "--overwrite"]) == 2


def test_version(capsys):
    from fedsim.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("fedsim ")
