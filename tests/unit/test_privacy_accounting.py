"""Accounting with dp_accounting: a known row, calibration, the per-round ledger."""

import math

import dp_accounting
import pytest
from dp_accounting import rdp

from fedsim.privacy import (ParticipationSchema, epsilon, epsilon_after, noise_multiplier_for,
                            plan_factorization, zcdp_epsilon_bound)


def test_one_gaussian_release_sigma_1():
    eps = epsilon(1.0, 1e-5)
    assert eps["epsilon_rdp"] == pytest.approx(4.7285, abs=1e-4)
    assert eps["epsilon_pld"] == pytest.approx(4.3772, abs=1e-4)
    assert zcdp_epsilon_bound(1.0, 1e-5) == pytest.approx(5.2985, abs=1e-4)
    # never composed over steps
    assert epsilon(1.0, 1e-5, steps=50, correlated=True, accountants=("rdp",)) == {"epsilon_rdp": eps["epsilon_rdp"]}


def test_zcdp_event_gives_the_gaussian_rdp_epsilon():
    sigma = 1.7
    a, b = rdp.RdpAccountant(), rdp.RdpAccountant()
    a.compose(dp_accounting.ZCDpEvent(1 / (2 * sigma ** 2)))
    b.compose(dp_accounting.GaussianDpEvent(sigma))
    assert a.get_epsilon(1e-6) == pytest.approx(b.get_epsilon(1e-6), rel=1e-9)


def test_full_participation_steps_compose_like_one_gaussian():
    assert epsilon(2.0, 1e-5, steps=4, accountants=("rdp",)) == epsilon(1.0, 1e-5, accountants=("rdp",))


def test_poisson_sampling_amplifies():
    plain = epsilon(3.0, 1e-5, steps=2)["epsilon_rdp"]
    sampled = epsilon(3.0, 1e-5, steps=2, sampling=0.2)
    assert sampled["epsilon_pld"] < sampled["epsilon_rdp"] < plain


def test_noise_multiplier_for_is_the_smallest_achieving_sigma():
    sigma = noise_multiplier_for(4.0, 1e-5, correlated=True, rtol=1e-4)
    assert epsilon(sigma, 1e-5, accountants=("pld",))["epsilon_pld"] <= 4.0 + 1e-5
    assert epsilon(sigma * (1 - 2e-4), 1e-5, accountants=("pld",))["epsilon_pld"] > 4.0
    s_rdp = noise_multiplier_for(4.0, 1e-5, correlated=True, accountant="rdp")
    assert s_rdp > sigma and epsilon(s_rdp, 1e-5, accountants=("rdp",))["epsilon_rdp"] <= 4.0
    assert epsilon(s_rdp * (1 - 2e-4), 1e-5, accountants=("rdp",))["epsilon_rdp"] > 4.0


def test_amplification_is_refused_for_correlated_noise():
    with pytest.raises(ValueError, match="no amplification"):
        epsilon(1.0, 1e-5, sampling=0.1, correlated=True)


def test_epsilon_after_independent_rounds():
    assert epsilon_after(0, 1.0, 1e-5) == 0.0
    assert epsilon_after(9, 3.0, 1e-5) == pytest.approx(epsilon(1.0, 1e-5, accountants=("rdp",))["epsilon_rdp"])
    per_round = [epsilon_after(t, 1.0, 1e-5, sampling=0.1) for t in (1, 5, 10)]
    assert per_round == sorted(per_round)


def test_epsilon_after_correlated_rounds():
    for mechanism in ("identity", "optimal"):
        f = plan_factorization(mechanism, ParticipationSchema("fixed-epoch", 16, 2, 8))
        spent = [epsilon_after(t, 1.0, 1e-5, factorization=f) for t in range(1, 17)]
        assert all(a <= b + 1e-9 for a, b in zip(spent, spent[1:]))
        assert spent[-1] == pytest.approx(epsilon(1.0, 1e-5, accountants=("rdp",))["epsilon_rdp"])
    # identity: one participation (t <= 8) has sensitivity 1 of sqrt(2): sigma_eff = sqrt(2)
    f = plan_factorization("identity", ParticipationSchema("fixed-epoch", 16, 2, 8))
    assert epsilon_after(8, 1.0, 1e-5, factorization=f, accountant="pld") == pytest.approx(
        epsilon(math.sqrt(2), 1e-5)["epsilon_pld"])


@pytest.mark.slow
def test_opacus_rdp_agrees_for_one_full_batch_step():
    analysis = pytest.importorskip("opacus.accountants.analysis.rdp")
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp_vec = analysis.compute_rdp(q=1.0, noise_multiplier=1.0, steps=1, orders=orders)
    eps, _ = analysis.get_privacy_spent(orders=orders, rdp=rdp_vec, delta=1e-5)
    assert eps == pytest.approx(epsilon(1.0, 1e-5, accountants=("rdp",))["epsilon_rdp"], abs=1e-3)
