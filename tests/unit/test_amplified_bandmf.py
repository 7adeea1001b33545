"""Amplified BandMF (arXiv 2306.08153, Thm 4): b-cyclic Poisson participation, its accounting as
DP-SGD with Poisson sampling over ceil(n/b) steps (checked against dp_accounting directly), the
client-by-client check, the CLI and the planner's choice of bands."""

import json

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp

from fedsim.cli import main
from fedsim.config import ConfigError
from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load as load_config
from fedsim.participation import build_participation
from fedsim.privacy import ParticipationViolation

from conftest import tiny_config
from helpers import everyone_shows_up_in_round_2, federation, train

CYCLIC = {"name": "cyclic-poisson", "groups": 2, "p": 0.5}  # 8 clients: 2 groups of 4


def dp_sgd_epsilon(sigma, q, steps, delta, accountant="pld"):
    """DP-SGD with Poisson sampling, straight from dp_accounting (the reduction's right-hand side)."""
    acc = pld.PLDAccountant(value_discretization_interval=1e-4) if accountant == "pld" else rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


def test_cyclic_poisson_samples_only_the_eligible_group_at_rate_q():
    model = build_participation("cyclic-poisson", 400, seed=1, groups=4, p=0.3)
    counts = np.zeros(400)
    for t in range(1, 201):
        plan = model.sample(t)
        assert np.all(model.group[plan.clients] == (t - 1) % 4)
        counts[plan.clients] += 1
    assert np.bincount(model.group).tolist() == [100] * 4
    assert counts.mean() / 50 == pytest.approx(0.3, abs=0.02)  # each client is eligible 50 times
    resumed = build_participation("cyclic-poisson", 400, seed=1, groups=4, p=0.3)
    resumed.load_state_dict(model.state_dict())
    follow = build_participation("cyclic-poisson", 400, seed=1, groups=4, p=0.3)
    for t in range(1, 202):
        last = follow.sample(t)
    assert np.array_equal(resumed.sample(201).clients, last.clients)


@pytest.mark.parametrize("bad,match", [({"groups": 2}, "participation.p"), ({"groups": 0, "p": 0.5}, "groups"),
                                       ({"groups": 2, "p": 1.5}, "participation.p")])
def test_cyclic_poisson_rejects_bad_parameters(bad, match):
    with pytest.raises(ValueError, match=match):
        build_participation("cyclic-poisson", 8, seed=0, **bad)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_one_band_is_dp_sgd_with_poisson_sampling(capsys, accountant):
    assert main(["privacy", "epsilon", "--mechanism", "banded-amplified", "--bands", "1", "--steps", "50",
                 "--sampling", "0.05", "--noise-multiplier", "0.9", "--delta", "1e-5", "--accountant", accountant,
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epsilon"] == pytest.approx(dp_sgd_epsilon(0.9, 0.05, 50, 1e-5, accountant), rel=1e-9)
    assert out["accountant"] == accountant and "1-cyclic poisson" in out["sampling_scheme"]


def test_b_bands_compose_ceil_n_over_b_steps(capsys):
    assert main(["privacy", "epsilon", "--mechanism", "banded-amplified", "--bands", "8", "--steps", "50",
                 "--sampling", "0.4", "--noise-multiplier", "1.2", "--delta", "1e-6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dp_sgd_steps"] == 7 and out["epsilon"] == pytest.approx(dp_sgd_epsilon(1.2, 0.4, 7, 1e-6), rel=1e-9)


@pytest.mark.parametrize("args,name", [
    (["--mechanism", "banded-amplified"], "--bands"),
    (["--bands", "4"], "--bands"),
    (["--mechanism", "banded-amplified", "--bands", "90", "--steps", "50"], "--bands"),
])
def test_epsilon_cli_argument_errors(capsys, args, name):
    with pytest.raises(SystemExit) as exc:
        main(["privacy", "epsilon", "--noise-multiplier", "1", "--delta", "1e-5", *args])
    assert exc.value.code == 2 and name in capsys.readouterr().err


def test_planner_picks_the_bands_with_least_error(capsys):
    assert main(["privacy", "plan", "--mechanism", "banded-amplified", "--steps", "12", "--cohort-fraction", "0.25",
                 "--epsilon", "4", "--delta", "1e-5", "--accountant", "rdp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["bands"] for c in out["candidates"]] == [1, 2, 4]
    assert out["rmse"] == min(c["rmse"] for c in out["candidates"])
    one = out["candidates"][0]  # b = 1: the identity factor, DP-SGD's error sigma * sqrt(mean_t t+1)
    assert one["rmse_per_unit_noise"] == pytest.approx(np.sqrt(np.mean(np.arange(1, 13))), rel=1e-9)
    assert dp_sgd_epsilon(one["noise_multiplier"], 0.25, 12, 1e-5, "rdp") <= 4.0


def dp_mf(**over):
    return tiny_config(**{"strategy.name": "dp-mf", "privacy.mechanism": "banded", "participation": CYCLIC, **over})


def test_a_run_is_accounted_as_dp_sgd_over_ceil_n_over_b_steps(tmp_path):
    summary = run_single(load_config(dp_mf(**{"privacy.noise_multiplier": 1.1, "rounds": 5})), tmp_path,
                         progress=False)
    dp = summary  # the DP stage's fields are top-level in summary.json
    assert dp["sampling_scheme"] == "2-cyclic poisson (q=0.5), amplified BandMF" and dp["accountant"] == "pld"
    assert dp["epsilon"] == pytest.approx(dp_sgd_epsilon(1.1, 0.5, 3, 1e-5), rel=1e-6)
    assert dp["epsilon_rdp"] == pytest.approx(dp_sgd_epsilon(1.1, 0.5, 3, 1e-5, "rdp"), rel=1e-6)
    assert dp["noise_std"] == pytest.approx(1.1 * dp["clip_norm"])  # one participation: sensitivity 1


def test_epsilon_target_is_calibrated_with_the_amplified_accounting():
    _, _, strategy = train(dp_mf(**{"privacy.epsilon": 6.0, "privacy.accountant": "rdp", "rounds": 4}))
    sigma = strategy.pipeline.stages[0].noise_multiplier
    assert dp_sgd_epsilon(sigma, 0.5, 2, 1e-5, "rdp") <= 6.0 < dp_sgd_epsilon(sigma * 0.999, 0.5, 2, 1e-5, "rdp")


def test_a_client_outside_the_eligible_group_stops_the_run():
    with pytest.raises(ParticipationViolation, match="cyclic group"):
        everyone_shows_up_in_round_2(dp_mf())()


@pytest.mark.parametrize("over,match", [({"privacy.mechanism": "blt"}, "cyclic-poisson"),
                                        ({"privacy.bands": 3}, "at most 2 bands")])
def test_amplification_needs_a_banded_factor_within_the_cycle(over, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        federation(dp_mf(**over))


def test_noise_zero_and_unbounded_clip_is_the_nonprivate_run():
    plain, _, _ = train(tiny_config(participation=CYCLIC, **{"strategy.weighting": "fixed"}))
    dp, _, _ = train(dp_mf(**{"privacy.noise_multiplier": 0.0, "privacy.clip_norm": 1e9}))
    assert torch.equal(dp, plain)
