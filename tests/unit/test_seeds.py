"""Multi-seed runs: every arm once per seed, mean ± sample std, each seed equal to its own run."""

import json
import statistics

import pytest

from fedsim.cli import main
from fedsim.config import ConfigError
from fedsim.experiments.run import run_config, run_single
from fedsim.experiments.setup import load as load_config

from conftest import tiny_config


def test_each_seed_is_its_own_run_and_the_table_is_mean_and_std(tmp_path):
    raw = tiny_config(rounds=3, eval_every=1, seeds=[3, 5],
                      arms={"fedavg": {"strategy": {"name": "fedavg"}}, "fedau": {"strategy": {"name": "fedau"}}})
    lines = []
    agg = run_config(load_config(raw), tmp_path, progress=False, echo=lines.append)
    saved = json.loads((tmp_path / "comparison.json").read_text())
    for arm in ("fedavg", "fedau"):
        finals = [saved["per_seed"][arm][str(s)]["final_accuracy"] for s in (3, 5)]
        assert agg[arm]["final_accuracy"]["values"] == finals
        assert agg[arm]["final_accuracy"]["mean"] == pytest.approx(statistics.mean(finals))
        assert agg[arm]["final_accuracy"]["std"] == pytest.approx(statistics.stdev(finals))
    alone = run_single(load_config(tiny_config(rounds=3, eval_every=1, seed=5, **{"strategy.name": "fedau"})),
                       tmp_path / "alone", progress=False)
    assert alone["final_accuracy"] == agg["fedau"]["final_accuracy"]["values"][1]
    assert (tmp_path / "fedau" / "seed-5" / "metrics.jsonl").exists() and (tmp_path / "curves.png").exists()
    assert " ± " in lines[-1] and "mean ± sample std" in (tmp_path / "comparison.md").read_text()
    lo, hi = agg["fedau"]["final_accuracy"]["ci95"]
    assert lo <= agg["fedau"]["final_accuracy"]["mean"] <= hi


def test_seeds_flag_and_bad_seeds(tmp_path, capsys):
    with pytest.raises(ConfigError, match="seeds"):
        load_config(tiny_config(seeds=[1, 1]))
    with pytest.raises(SystemExit):
        main(["run", "quickstart", "--seeds", "1,x"])
    assert "--seeds" in capsys.readouterr().err


def test_a_single_seed_reaches_every_arm(tmp_path):
    """seeds = [s] runs each arm once with seed s (arms are resolved at load time, before the seed)."""
    raw = tiny_config(rounds=2, eval_every=1, seeds=[5],
                      arms={"fedavg": {"strategy": {"name": "fedavg"}}, "fedau": {"strategy": {"name": "fedau"}}})
    summaries = run_config(load_config(raw), tmp_path, progress=False, echo=lambda _: None)
    assert {arm: s["seed"] for arm, s in summaries.items()} == {"fedavg": 5, "fedau": 5}


def test_a_diverging_arm_is_reported_and_the_others_still_run(tmp_path):
    """In a comparison (and per seed) a diverged arm stops where it diverged, says so in every table,
    and does not stop the arms after it."""
    from fedsim.experiments.run import run_config

    raw = tiny_config(rounds=4, seeds=[0, 1])
    # every client answers with noise of norm ~1e10: each answer is rejected, the arm cannot go on
    raw["arms"] = {"blows-up": {"adversary": {"behaviour": "noise", "fraction": 0.99, "noise_std": 1e9}}, "fine": {}}
    agg = run_config(load_config(raw), tmp_path, progress=False, echo=lambda *_: None)
    assert set(agg["blows-up"]["failed_seeds"]) == {"0", "1"} and "failed_seeds" not in agg["fine"]
    table = (tmp_path / "comparison.md").read_text()
    assert "blows-up (2 failed)" in table and "seed 0 failed: round" in table
    assert json.loads((tmp_path / "fine" / "seed-1" / "summary.json").read_text())["rounds"] == 4
