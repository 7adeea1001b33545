"""FedAdagrad / FedYogi / FedAdam (Reddi et al., arXiv 2003.00295, Alg. 2) as server stages."""

import pytest
import torch

from fedsim.config import ConfigError
from fedsim.experiments.setup import load as load_config
from fedsim.stages import FedAdagrad, FedAdam, FedYogi

from conftest import tiny_config
from helpers import train


@pytest.mark.parametrize("cls", [FedAdagrad, FedYogi, FedAdam])
def test_two_rounds_follow_algorithm_2(cls):
    stage = cls(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    stage.init(3)
    x = torch.tensor([0.0, 1.0, -1.0])
    m, v = torch.zeros(3), torch.full((3,), 1e-6)
    for d in (torch.tensor([0.5, -0.2, 0.0]), torch.tensor([0.1, 0.3, -0.4])):
        m = 0.9 * m + 0.1 * d
        if cls is FedAdagrad:
            v = v + d * d
        elif cls is FedYogi:
            v = v - 0.01 * d * d * torch.sign(v - d * d)
        else:
            v = 0.99 * v + 0.01 * d * d
        expected = x + 0.1 * m / (v.sqrt() + 1e-3)
        x = stage.after(1, x, x + d, {})
        assert torch.allclose(x, expected, atol=1e-7)


@pytest.mark.parametrize("name", ["adagrad", "yogi", "adam"])
def test_any_strategy_takes_an_adaptive_server_optimizer(name):
    plain, _, _ = train(tiny_config(**{"strategy.name": "fedau"}))
    adaptive, _, strategy = train(tiny_config(**{"strategy.name": "fedau",
                                                 "server_optimizer": {"name": name, "lr": 0.05}}))
    assert torch.isfinite(adaptive).all() and not torch.allclose(adaptive, plain)
    assert strategy.pipeline.stages[-1].name == name


def test_unknown_adaptive_keys_and_bad_values_are_refused():
    with pytest.raises(ConfigError, match="server_optimizer.eta"):
        load_config(tiny_config(server_optimizer={"name": "adam", "eta": 0.1}))
    with pytest.raises(ConfigError, match="server_optimizer.tau"):
        train(tiny_config(server_optimizer={"name": "yogi", "tau": 0.0}))
