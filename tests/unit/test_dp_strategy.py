"""User-level DP strategies: noise 0 is the non-DP run, the noise added is the factorization's
streamed noise, seeds reproduce, the participation pattern is enforced, epsilon is reported."""

import json

import numpy as np
import pytest
import torch

from fedsim.config import ConfigError
from fedsim.experiments.setup import load as load_config
from fedsim.experiments.run import run_single
from fedsim.privacy import ParticipationViolation, dense_noise, gaussian_row

from conftest import tiny_config
from helpers import everyone_shows_up_in_round_2, federation, train

EPOCHS = {"name": "fixed-epoch", "clients_per_round": 4}  # 8 clients: b = 2 rounds per epoch
POISSON = {"name": "bernoulli", "p": 0.5}  # every client joins each round independently


def test_noise_multiplier_zero_and_a_huge_clip_is_fedavg_exactly():
    plain, _, _ = train(tiny_config(participation=POISSON, **{"strategy.weighting": "fixed"}))
    dp, _, _ = train(tiny_config(participation=POISSON, **{"strategy.name": "dp-fedavg", "privacy.noise_multiplier": 0.0,
                                    "privacy.clip_norm": 1e9}))
    assert torch.equal(dp, plain)


@pytest.mark.parametrize("mechanism", ["identity", "tree", "tree-honaker", "sqrt-toeplitz", "optimal", "banded", "blt"])
def test_noise_zero_and_a_huge_clip_is_the_nonprivate_run_for_every_mechanism(mechanism):
    plain, _, _ = train(tiny_config(participation=EPOCHS, **{"strategy.weighting": "fixed"}))
    dp, _, _ = train(tiny_config(participation=EPOCHS, **{"strategy.name": "dp-mf", "privacy.mechanism": mechanism,
                                                          "privacy.noise_multiplier": 0.0, "privacy.clip_norm": 1e9}))
    assert torch.equal(dp, plain)


@pytest.mark.parametrize("mechanism", ["identity", "banded", "blt", "optimal", "tree", "tree-honaker"])
def test_first_round_noise_is_row_0_of_the_factorizations_noise(mechanism):
    """Round 1 of a DP run minus round 1 of the noiseless run = std * (C^-1 Z)[0] / K."""
    over = {"strategy.name": "dp-mf", "privacy.mechanism": mechanism, "privacy.clip_norm": 1e9,
            "participation": EPOCHS}
    quiet, _, _ = train(tiny_config(rounds=1, **over, **{"privacy.noise_multiplier": 0.0}))
    noisy, _, strategy = train(tiny_config(rounds=1, **over, **{"privacy.noise_multiplier": 0.7}))
    dp = strategy.pipeline.stages[0]
    f, dim = dp.factorization, strategy.spec.dim
    Z = torch.stack([gaussian_row(strategy.seed, t, dim) for t in range(f.C.shape[0])]).numpy()
    expected = dp.std * dense_noise(f, Z)[0] / 4
    assert np.allclose((noisy - quiet).double().numpy(), expected, atol=1e-5)


def test_same_seed_same_noise_other_seed_other_noise():
    over = {"strategy.name": "dp-mf", "privacy.mechanism": "banded", "participation": EPOCHS}
    a, _, _ = train(tiny_config(**over))
    b, _, _ = train(tiny_config(**over))
    c, _, _ = train(tiny_config(seed=4, **over))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dp_mf_refuses_a_participation_it_cannot_account_for():
    with pytest.raises(ConfigError, match="fixed-epoch"):  # correlated noise under uniform sampling
        load_config_and_build(tiny_config(**{"strategy.name": "dp-mf", "privacy.mechanism": "banded"}))


def load_config_and_build(raw):
    return federation(raw)


def test_a_client_breaking_the_planned_pattern_stops_the_run():
    send = everyone_shows_up_in_round_2(tiny_config(**{"strategy.name": "dp-mf", "participation": EPOCHS}))
    with pytest.raises(ParticipationViolation, match="round 2: client"):
        send()


def test_epsilon_is_reported_per_round_and_in_the_summary(tmp_path):
    raw = tiny_config(**{"strategy.name": "dp-mf", "privacy.mechanism": "banded", "privacy.epsilon": 8.0,
                         "participation": EPOCHS, "eval_every": 3})
    summary = run_single(load_config(raw), tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    eps = [r["epsilon"] for r in rows]
    assert all(r["mechanism"] == "banded" and r["delta"] == 1e-5 for r in rows)
    assert all(b >= a for a, b in zip(eps, eps[1:]))
    assert eps[-1] <= 8.0 and eps[-1] > 7.0  # calibrated to the target (RDP), then fully spent
    assert summary["epsilon"] == pytest.approx(eps[-1])
    assert summary["epsilon_pld"] <= summary["epsilon"]
    assert summary["mechanism"] == "banded" and summary["delta"] == 1e-5


def test_a_saved_factorization_is_reused_and_a_mismatched_one_refused(tmp_path):
    from fedsim.privacy import ParticipationSchema, plan_factorization

    over = {"strategy.name": "dp-mf", "privacy.mechanism": "banded", "participation": EPOCHS}
    planned, _, _ = train(tiny_config(**over))
    plan_factorization("banded", ParticipationSchema("fixed-epoch", 6, 3, 2)).save(tmp_path / "f.npz")
    loaded, _, _ = train(tiny_config(**over, **{"privacy.factorization": str(tmp_path / "f.npz")}))
    assert torch.equal(planned, loaded)
    plan_factorization("banded", ParticipationSchema("fixed-epoch", 8, 4, 2)).save(tmp_path / "g.npz")
    with pytest.raises(ConfigError, match="was planned for"):
        federation(tiny_config(**over, **{"privacy.factorization": str(tmp_path / "g.npz")}))
    (tmp_path / "bad.npz").write_bytes(b"not a factorization")
    with pytest.raises(ConfigError, match="cannot read privacy.factorization"):
        federation(tiny_config(**over, **{"privacy.factorization": str(tmp_path / "bad.npz")}))
