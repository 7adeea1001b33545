"""Robust aggregation rows (Flower's rules on fedsim's updates): they train, and one outlier
among eight does not move them the way it moves FedAvg."""

import pytest
import torch

from fedsim.config import ConfigError
from fedsim.experiments.setup import load as load_config
from fedsim.strategies.replies import Cohort

from conftest import tiny_config
from helpers import federation, train


def cohort(updates):
    k = len(updates)
    ones = torch.ones(k, dtype=torch.int64)
    return Cohort(torch.arange(k), torch.stack(updates), torch.full((k,), 10.0, dtype=torch.float64), ones, ones, ones)


@pytest.mark.parametrize("name,extra", [("fedmedian", {}), ("fedtrimmedavg", {"strategy.trim": 0.2}),
                                        ("krum", {"strategy.byzantine": 1}), ("krum", {"strategy.byzantine": 1, "strategy.keep": 3})])
def test_one_outlier_does_not_move_the_robust_rules(name, extra):
    _, strategy, _, _ = federation(tiny_config(**{"strategy.name": name, **extra}))
    gen = torch.Generator().manual_seed(0)
    honest = [torch.full((5,), 1.0) + 0.01 * torch.randn(5, generator=gen) for _ in range(7)]
    params = torch.zeros(5)
    new, _, _ = strategy.server_update(1, params, cohort(honest + [torch.full((5,), 1e6)]), {})
    assert (new - 1.0).abs().max() < 0.05  # FedAvg would land near 1.25e5


def test_median_of_identical_updates_is_that_update():
    _, strategy, _, _ = federation(tiny_config(**{"strategy.name": "fedmedian"}))
    u = torch.arange(5.0)
    new, _, _ = strategy.server_update(1, torch.ones(5), cohort([u] * 4), {})
    assert torch.allclose(new, 1 + u)


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "krum"])
def test_robust_rows_train(name):
    params, results, _ = train(tiny_config(rounds=4, **{"strategy.name": name}))
    assert torch.isfinite(params).all() and results[-1].participants == 4


def test_robust_keys_belong_to_their_rows():
    with pytest.raises(ConfigError, match="strategy.trim"):
        load_config(tiny_config(**{"strategy.name": "fedavg", "strategy.trim": 0.3}))
    with pytest.raises(ConfigError, match="strategy.trim"):
        federation(tiny_config(**{"strategy.name": "fedtrimmedavg", "strategy.trim": 0.6}))
