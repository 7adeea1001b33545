"""Client optimizers through the federation: the lr schedule in every TRAIN message, FedProx, local
momentum and weight decay with both trainers, and the strategies that refuse them."""

import math

import pytest
import torch
from flwr.app import ConfigRecord

from fedsim.config import ConfigError
from fedsim.experiments.setup import load as load_config
from fedsim.local.optimizer import lr_at
from fedsim.runtime import protocol as P

from conftest import tiny_config
from helpers import federation, train


def test_the_schedule_sets_each_rounds_lr():
    assert [lr_at(0.1, "exponential", 0.5, t, 4) for t in (1, 2, 3)] == [0.1, 0.05, 0.025]
    assert lr_at(0.1, "cosine", 0.99, 1, 10) == 0.1
    assert lr_at(0.1, "cosine", 0.99, 6, 10) == pytest.approx(0.05)
    cfg, strategy, grid, arrays = federation(tiny_config(**{"client.lr_schedule": "cosine", "rounds": 10}))
    for t in (1, 2, 3):
        message = next(iter(strategy.configure_train(t, arrays, ConfigRecord({}), grid)))
        assert message.content[P.CONFIG]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (t - 1) / 10)))
        strategy.in_flight.clear()


def test_fedprox_with_mu_zero_is_fedavg_and_mu_changes_the_run():
    fedavg, _, _ = train(tiny_config())
    prox0, _, _ = train(tiny_config(**{"strategy.name": "fedprox", "strategy.mu": 0.0}))
    prox, _, strategy = train(tiny_config(**{"strategy.name": "fedprox", "strategy.mu": 1.0}))
    assert torch.equal(prox0, fedavg) and not torch.allclose(prox, fedavg, atol=1e-5)
    assert strategy.client_optimizer.prox_mu == 1.0
    # the proximal term pulls each client towards the model it started from: smaller local moves
    assert (prox - fedavg).norm() > 0


@pytest.mark.parametrize("extra", [{"client.momentum": 0.9, "client.nesterov": True},
                                   {"client.weight_decay": 0.01, "client.momentum": 0.5},
                                   {"strategy.name": "fedprox", "strategy.mu": 0.1, "client.momentum": 0.9}])
def test_federated_runs_with_optimizers_match_across_trainers(extra):
    seq, _, _ = train(tiny_config(**extra, **{"client.trainer": "sequential"}))
    vec, _, _ = train(tiny_config(**extra, **{"client.trainer": "vectorized"}))
    assert torch.allclose(vec, seq, atol=1e-5)


@pytest.mark.parametrize("name,key,value", [("afa-cd", "client.momentum", 0.9), ("ef21", "client.lr_schedule", "cosine"),
                                            ("repair", "client.weight_decay", 0.1)])
def test_strategies_that_assume_plain_sgd_refuse_an_optimizer(name, key, value):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(tiny_config(**{"strategy.name": name, key: value}))


@pytest.mark.parametrize("key,value,match", [("client.momentum", 1.0, "client.momentum"),
                                             ("client.nesterov", True, "client.nesterov"),
                                             ("client.lr_schedule", "step", "client.lr_schedule"),
                                             ("strategy.mu", -1.0, "strategy.mu")])
def test_bad_optimizer_settings_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tiny_config(**{"strategy.name": "fedprox", key: value}))


def test_example_dp_refuses_the_proximal_term():
    with pytest.raises(ConfigError, match="strategy.mu"):
        load_config(tiny_config(**{"strategy.name": "fedprox", "privacy.example_dp": True}))


def test_a_bad_momentum_in_a_message_is_answered_with_an_error():
    cfg, strategy, grid, arrays = federation(tiny_config())
    msg = next(iter(strategy.configure_train(1, arrays, ConfigRecord({P.MOMENTUM: 1.5}), grid)))
    reply = grid.handler.train([msg], [grid.contexts[msg.metadata.dst_node_id]])[0]
    assert reply.has_error() and "client.momentum" in reply.error.reason
