"""Every epsilon a run reports is the dp_accounting value for the sampling that happened, with the
run's accountant; a sampling fedsim cannot account is refused naming the key."""

import logging

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedsim.config import ConfigError
from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load
from fedsim.privacy import noise_multiplier_for

from conftest import tiny_config
from helpers import federation

logging.getLogger("absl").setLevel(logging.ERROR)
ACCOUNTANT = {"rdp": rdp.RdpAccountant, "pld": lambda: pld.PLDAccountant(value_discretization_interval=1e-4)}


def _reference(event, delta, accountant):
    acc = ACCOUNTANT[accountant]()
    acc.compose(event)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("rounds", [5, pytest.param(50, marks=pytest.mark.slow)])  # 50: the case
def test_uniform_fixed_size_cohorts_are_accounted_without_replacement(tmp_path, rounds):
    """The issue's case: 10 of 100 clients uniformly, sigma 1.5, 50 rounds. Poisson accounting would
    say 2.85, which is not valid for sampling without replacement; the run reports dp_accounting's
    without-replacement RDP value for replace-one neighbours, where one client moves the clipped sum
    by up to 2S (multiplier 1.5 / 2)."""
    raw = tiny_config(rounds=rounds, eval_every=rounds, **{"strategy.name": "dp-fedavg", "privacy.noise_multiplier": 1.5,
                                                   "data.num_clients": 100,
                                                   "data.options": {"n": 3000, "dim": 10, "classes": 4},
                                                   "participation": {"name": "uniform", "clients_per_round": 10}})
    summary = run_single(load(raw), tmp_path, progress=False)
    step = dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(0.75))
    acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SelfComposedDpEvent(step, rounds))
    assert summary["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert summary["epsilon_pld"] is None and (rounds < 50 or summary["epsilon"] > 2.85)
    assert (summary["accountant"], summary["neighbouring"]) == ("rdp", "replace one client")
    assert summary["sampling_scheme"] == "without replacement (10 of 100)"


@pytest.mark.slow  # ~3.5 s: a calibration search
def test_without_replacement_calibration_reaches_its_target():
    from fedsim.privacy.accounting import wor_epsilon, wor_noise_multiplier_for

    sigma = wor_noise_multiplier_for(8.0, 1e-5, 50, 100, 10)
    assert wor_epsilon(50, sigma, 1e-5, 100, 10) <= 8.0 < wor_epsilon(50, sigma * 0.999, 1e-5, 100, 10)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize("participation, event", [
    ({"name": "bernoulli", "p": 0.25},
     lambda z, t: dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
         0.25, dp_accounting.GaussianDpEvent(z)), t)),
    ({"name": "full"}, lambda z, t: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), t)),
])
def test_reported_epsilon_is_dp_accountings_for_the_sampling_used(tmp_path, accountant, participation, event):
    raw = tiny_config(rounds=4, eval_every=4, participation=participation,
                      **{"strategy.name": "dp-fedavg", "privacy.noise_multiplier": 1.3, "privacy.accountant": accountant})
    summary = run_single(load(raw), tmp_path, progress=False)
    assert summary["accountant"] == accountant and summary["neighbouring"] == "add/remove one client"
    assert summary["epsilon"] == pytest.approx(_reference(event(1.3, 4), 1e-5, accountant), rel=1e-3)
    assert summary["epsilon"] == summary[f"epsilon_{accountant}"]


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_a_run_calibrates_like_the_privacy_planner(accountant):
    """One calibration everywhere: the same target gives the same noise multiplier as
    `fedsim privacy plan --epsilon ... --accountant ...` (both call noise_multiplier_for)."""
    raw = tiny_config(rounds=6, participation={"name": "fixed-epoch", "clients_per_round": 4},
                      **{"strategy.name": "dp-mf", "privacy.mechanism": "banded", "privacy.epsilon": 6.0,
                         "privacy.accountant": accountant})
    _, strategy, _, _ = federation(raw)
    dp = strategy.pipeline.stages[0]
    assert dp.noise_multiplier == noise_multiplier_for(6.0, 1e-5, correlated=True, accountant=accountant)
    assert dp.summary(6)["epsilon"] <= 6.0


def test_unknown_accountant_is_named():
    with pytest.raises(ConfigError, match="config key 'privacy.accountant' must be one of"):
        load(tiny_config(**{"privacy.accountant": "moments"}))


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize("mechanism", ["banded", "tree-honaker"])
def test_fixed_epoch_dp_mf_is_one_gaussian_release(tmp_path, accountant, mechanism):
    """(k, b) = (2, 2) fixed-epoch order over all 4 rounds: the whole correlated release is one
    Gaussian with multiplier z relative to C's sensitivity (no composition, no amplification)."""
    raw = tiny_config(rounds=4, eval_every=4, participation={"name": "fixed-epoch", "clients_per_round": 4},
                      **{"strategy.name": "dp-mf", "privacy.mechanism": mechanism, "privacy.noise_multiplier": 1.3,
                         "privacy.accountant": accountant})
    summary = run_single(load(raw), tmp_path, progress=False)
    assert summary["sampling_scheme"] == "fixed-epoch (k=2, b=2)"
    assert summary["epsilon"] == pytest.approx(_reference(dp_accounting.GaussianDpEvent(1.3), 1e-5, accountant),
                                               rel=1e-3)
