"""`fedsim attack` end to end on tiny budgets (seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fedsim.attacks.config import load_attack_config
from fedsim.attacks.evaluate import evaluate

ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
ROW_KEYS = ("attack", "defense", "batch_size", "clients", "threat", "model", "psnr_mean", "psnr_std",
            "psnr_median", "psnr_max", "ssim_mean", "label_accuracy", "utility_accuracy", "runtime",
            "floor_psnr", "floor_psnr_dataset", "frac_above_floor6", "epsilon", "labels", "seed")
SMALL = ['grid.attacks=["dlg", "idlg", "cpa", "analytic"]', "grid.batch_sizes=[1]",
         'grid.defenses=[{name="none"}, {name="dp", noise_multiplier=0.1}, {name="secagg", clients=2}]']


def fedsim(*args):
    return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=600)


def test_attack_grid_writes_results_table_and_grid_image(tmp_path):
    out = tmp_path / "grid"
    sets = [a for s in SMALL for a in ("--set", s)]
    res = fedsim("attack", "grid-smoke", *sets, "--out", str(out))
    assert res.returncode == 0, res.stderr
    # stderr is a pipe here, as in CI logs: one plain line per cell, no progress-bar carriage returns
    assert "\r" not in res.stderr and res.stderr.count("attacks: cell ") == 12
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert len(rows) == 4 * 3
    for key in ROW_KEYS:
        assert key in rows[0], key
    assert {r["defense"] for r in rows} == {"none", "dp(C=1,z=0.1)", "secagg(2)"}
    analytic = [r for r in rows if r["attack"] == "analytic" and r["defense"] == "none"][0]
    assert analytic["psnr_mean"] > 90 and analytic["label_accuracy"] == 1.0  # exact at B = 1
    assert all(r["floor_psnr"] > 5 for r in rows) and data["meta"]["floor_psnr_dataset"] > 5
    table = (out / "results.md").read_text()
    assert "| analytic |" in table and "floor" in table
    assert (out / "grid.png").stat().st_size > 5_000
    from PIL import Image

    width, height = Image.open(out / "grid.png").size  # B = 1: tiles in rows, not one tall column
    assert width >= 600 and height < 2 * width


@pytest.mark.slow  # ~5 s; the grid test above runs the same command line
def test_single_cell_from_a_toml_with_overrides(tmp_path):
    path = tmp_path / "my-attack.toml"
    path.write_text('name = "mine"\n[data]\nname = "mnist5k"\npool = 50\n'
                    '[attack]\nname = "idlg"\n[attack.idlg]\nevals = 5\n')
    out = tmp_path / "b"
    res = fedsim("attack", str(path), "--set", "attack.batch_size=2", "--set", "defense.name=dp",
                 "--set", "defense.noise_multiplier=0.01", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["attack"] == "idlg" and row["batch_size"] == 2 and row["defense_name"] == "dp"
    assert row["epsilon"] > 0 and row["labels"] == "counts"


def test_bad_key_exits_2_naming_the_key(tmp_path, capsys):
    from fedsim.cli import main

    path = tmp_path / "my-attack.toml"
    path.write_text('[attack]\nname = "idlg"\n')
    assert main(["attack", str(path), "--set", "defense.nois=1", "--out", str(tmp_path / "x")]) == 2
    assert "defense.nois" in capsys.readouterr().err


def test_attack_evaluation_is_seeded_and_reproducible():
    cfg = load_attack_config("grid-smoke", ['grid.attacks=["idlg", "ig", "unrolled", "cpa"]', "grid.batch_sizes=[2]",
                                            'grid.defenses=[{name="dp", noise_multiplier=0.01}]',
                                            "utility.rounds=0", "attack.unrolled.steps=5"])
    first, _, _ = evaluate(cfg, progress=False)
    second, _, _ = evaluate(cfg, progress=False)
    strip = [{k: v for k, v in r.items() if k != "runtime"} for r in first]
    assert strip == [{k: v for k, v in r.items() if k != "runtime"} for r in second]


@pytest.mark.slow  # ~9 s: two small federations on Fashion-MNIST
def test_trained_state_attacks_the_round_r_model_and_reports_that_runs_utility():
    from fedsim.attacks.config import ConfigError
    from fedsim.attacks.defenses import DefenseConfig
    from fedsim.attacks.utility import train_federation

    over = ['grid.attacks=["idlg"]', "grid.batch_sizes=[1]", 'grid.defenses=[{name="none"}]', "trials=2",
            "attack.dlg.evals=20", "utility.rounds=2", "utility.clients=2", "utility.samples_per_client=32"]
    cfg = load_attack_config("dlg-fmnist", over + ["state=round-2"])
    (row,), _, _ = evaluate(cfg, progress=False)
    assert row["state"] == "round-2" and row["utility_accuracy"] is not None and row["error"] is None
    assert len(row["psnr_trial_means"]) == 2 and row["psnr_ci95"][0] <= row["psnr_mean"] <= row["psnr_ci95"][1]
    init_row, = evaluate(load_attack_config("dlg-fmnist", over), progress=False)[0]
    assert init_row["state"] == "init" and init_row["psnr_mean"] != row["psnr_mean"]
    acc, params = train_federation("fashion-mnist", None, "lenet-sigmoid", DefenseConfig(), rounds=2, clients=2,
                                   samples_per_client=32, local_steps=1, batch_size=8, lr=0.1, eval_samples=64,
                                   seed=0, keep_round=1)
    assert acc is not None and params is not None and params.ndim == 1
    with pytest.raises(ConfigError, match="'round-R'"):
        load_attack_config("dlg-fmnist", ["state=trained"])
