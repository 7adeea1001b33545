"""Adaptive clipping (Andrew et al., arXiv 1905.03871): the clip norm tracks the target quantile,
the count's privacy cost is accounted (updates + count = one Gaussian of the reported multiplier),
and it composes with any user-level DP mechanism."""

import json

import dp_accounting
import pytest
import torch
from dp_accounting import rdp

from fedsim.config import ConfigError
from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load as load_config
from fedsim.stages.adaptive_clip import QuantileClip, update_noise_multiplier

from conftest import tiny_config
from helpers import train

POISSON = {"name": "bernoulli", "p": 0.5}


def rdp_epsilon(event, delta=1e-5):
    acc = rdp.RdpAccountant()
    acc.compose(event)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("k", [1, 3])
def test_updates_and_count_together_spend_exactly_the_accounted_gaussian(k):
    z, sigma_b = 1.3, 2.0
    z_delta = update_noise_multiplier(z, sigma_b, k)
    assert z_delta > z
    # the count has sensitivity sqrt(k)/2 with noise sigma_b: a Gaussian of multiplier 2 sigma_b / sqrt(k)
    joint = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z_delta),
                                           dp_accounting.GaussianDpEvent(2 * sigma_b / k ** 0.5)])
    assert rdp_epsilon(joint) == pytest.approx(rdp_epsilon(dp_accounting.GaussianDpEvent(z)), rel=1e-9)


def test_a_count_noise_too_small_for_the_budget_is_refused():
    with pytest.raises(ValueError, match="privacy.clip_count_noise"):
        update_noise_multiplier(2.0, 0.9)


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.8])
def test_the_clip_norm_tracks_the_target_quantile(quantile):
    gen = torch.Generator().manual_seed(0)
    clip = QuantileClip(0.01, target_quantile=quantile, lr=0.2, count_noise=1.0, expected_cohort=100, seed=0)
    for t in range(1, 301):
        norms = torch.rand(100, generator=gen, dtype=torch.float64) * 2.0  # quantile q of U(0, 2) is 2q
        clip.observe(t, norms)
    assert clip.norm == pytest.approx(2 * quantile, abs=0.12)


def dp_fedavg(**over):
    return tiny_config(**{"strategy.name": "dp-fedavg", "participation": POISSON, "privacy.noise_multiplier": 1.0,
                          "privacy.accountant": "rdp", "privacy.clip_norm": 0.01, **over})


def test_a_run_reports_the_moving_clip_norm_and_the_same_epsilon(tmp_path):
    fixed = run_single(load_config(dp_fedavg()), tmp_path / "fixed", progress=False)
    adaptive = run_single(load_config(dp_fedavg(**{"privacy.adaptive_clip": True, "privacy.clip_count_noise": 1.0})),
                          tmp_path / "adaptive", progress=False)
    assert adaptive["epsilon"] == fixed["epsilon"] and adaptive["adaptive_clip"] is True
    assert adaptive["update_noise_multiplier"] == pytest.approx(update_noise_multiplier(1.0, 1.0))
    assert adaptive["final_clip_norm"] > 0.01  # every update norm is far above 0.01: the norm grows
    rows = [json.loads(x) for x in (tmp_path / "adaptive" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["dp/clip_norm"] > rows[0]["dp/clip_norm"] == 0.01


@pytest.mark.parametrize("over", [
    {"strategy.name": "dp-mf", "privacy.mechanism": "banded", "participation": {"name": "fixed-epoch", "clients_per_round": 4}},
    {"strategy.name": "dp-mf", "privacy.mechanism": "tree-honaker",
     "participation": {"name": "fixed-epoch", "clients_per_round": 4}},
    {"strategy.name": "dp-mf", "privacy.mechanism": "banded", "participation": {"name": "cyclic-poisson", "groups": 2, "p": 0.5}},
])
def test_adaptive_clipping_composes_with_every_mechanism(over):
    cfg = dp_fedavg(**{"privacy.adaptive_clip": True, "privacy.clip_count_noise": 2.0, **over})
    params, results, strategy = train(cfg)
    dp = strategy.pipeline.stages[0]
    assert torch.isfinite(params).all() and dp.adaptive.norm != 0.01
    k = dp.schema.participations if over["participation"]["name"] == "fixed-epoch" else 1
    assert dp.update_multiplier == pytest.approx(update_noise_multiplier(dp.noise_multiplier, 2.0, k))


def test_noise_zero_adaptive_clip_huge_start_is_the_nonprivate_run():
    plain, _, _ = train(tiny_config(participation=POISSON, **{"strategy.weighting": "fixed"}))
    dp, _, _ = train(dp_fedavg(**{"privacy.noise_multiplier": 0.0, "privacy.clip_norm": 1e30,
                                  "privacy.adaptive_clip": True}))
    assert torch.equal(dp, plain)


@pytest.mark.parametrize("key,value", [("privacy.target_quantile", 1.0), ("privacy.clip_lr", 0.0),
                                       ("privacy.clip_count_noise", -1.0)])
def test_bad_adaptive_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config(dp_fedavg(**{"privacy.adaptive_clip": True, key: value}))
