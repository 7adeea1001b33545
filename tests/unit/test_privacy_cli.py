"""`fedsim privacy ...` through fedsim.cli.main."""

import json
import math

import pytest

from fedsim.cli import main


def run_json(capsys, *args):
    assert main(["privacy", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_identity_and_optimal(capsys):
    out = run_json(capsys, "plan", "--steps", "64", "--participations", "4", "--separation", "16",
                   "--pattern", "fixed-epoch", "--mechanism", "identity")
    assert out["loss"] == pytest.approx(4 * 65 / 2) and out["sensitivity"] == pytest.approx(2.0)
    assert {"rmse", "max_error", "solver"} <= set(out) and out["solver"]["iterations"] == 0
    out = run_json(capsys, "plan", "--steps", "16", "--mechanism", "optimal")
    assert out["rmse"] == pytest.approx(1.689404, rel=1e-6)
    assert out["solver"]["converged"] and out["solver"]["iterations"] > 0
    assert out["solver"]["grad_norm"] >= 0 and out["solver"]["seconds"] >= 0


def test_plan_noise_multiplier_save_and_load(capsys, tmp_path):
    path = str(tmp_path / "f.npz")
    out = run_json(capsys, "plan", "--steps", "24", "--participations", "3", "--pattern", "min-separation",
                   "--separation", "8", "--mechanism", "banded", "--bands", "4", "--epsilon", "4",
                   "--delta", "1e-5", "--save", path)
    assert out["sensitivity"] == pytest.approx(math.sqrt(3)) and out["bands"] == 4
    assert out["epsilon_pld"] <= 4.0 and out["noise_multiplier"] == pytest.approx(1.0812, abs=1e-3)
    loaded = run_json(capsys, "plan", "--load", path)
    assert loaded["fingerprint"] == out["fingerprint"] and loaded["rmse"] == out["rmse"]


def test_plan_readable_summary(capsys):
    assert main(["privacy", "plan", "--steps", "16", "--mechanism", "sqrt-toeplitz"]) == 0
    text = capsys.readouterr().out
    assert "sensitivity 1.394231" in text and "rmse        1.796814" in text


def test_epsilon_command(capsys):
    out = run_json(capsys, "epsilon", "--noise-multiplier", "1.0", "--delta", "1e-5")
    assert out["epsilon_rdp"] == pytest.approx(4.7285, abs=1e-4)
    assert out["epsilon_pld"] == pytest.approx(4.3772, abs=1e-4)
    out = run_json(capsys, "epsilon", "--noise-multiplier", "3.0", "--delta", "1e-5", "--steps", "2",
                   "--sampling", "0.2")
    assert out["epsilon_pld"] < out["epsilon_rdp"] < 1.5


@pytest.mark.parametrize("args,names", [
    (["plan", "--steps", "64", "--participations", "4", "--separation", "15", "--mechanism", "optimal"], "--separation"),
    (["plan", "--steps", "0", "--mechanism", "tree"], "--steps"),
    (["plan", "--steps", "16"], "--mechanism"),
    (["plan", "--steps", "16", "--mechanism", "tree", "--bands", "3"], "--bands"),
    (["plan", "--steps", "16", "--mechanism", "svd"], "--mechanism"),
    (["plan", "--steps", "16", "--mechanism", "tree", "--epsilon", "2"], "--epsilon"),
    (["plan", "--load", "/nonexistent/f.npz"], "--load"),
    (["plan", "--steps", "20", "--participations", "5", "--separation", "6", "--pattern", "min-separation",
      "--mechanism", "identity"], "--participations"),
    (["epsilon", "--noise-multiplier", "-1", "--delta", "1e-5"], "--noise-multiplier"),
    (["epsilon", "--noise-multiplier", "1", "--delta", "2"], "--delta"),
    (["epsilon", "--noise-multiplier", "1", "--delta", "1e-5", "--sampling", "0.5", "--correlated"], "--correlated"),
])
def test_bad_arguments_exit_2_naming_the_argument(capsys, args, names):
    with pytest.raises(SystemExit) as exc:
        main(["privacy", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert names in err and "Traceback" not in err
