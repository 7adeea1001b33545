"""SCAFFOLD (option II): the FedAvg special case, the control-variate bookkeeping across server and
clients, both trainers, and the settings it refuses."""

import pytest
import torch

from fedsim.config import ConfigError
from fedsim.experiments.setup import load as load_config

from conftest import tiny_config
from helpers import train

FULL = {"participation": {"name": "full"}}


def test_one_local_step_with_full_participation_is_fedavg_with_uniform_weights():
    fedavg, _, _ = train(tiny_config(**FULL, **{"client.local_steps": 1, "strategy.weighting": "uniform"}))
    scaffold, _, strategy = train(tiny_config(**FULL, **{"client.local_steps": 1, "strategy.name": "scaffold"}))
    assert strategy.state["c"].norm() > 0  # the control variates are in use ...
    assert torch.allclose(scaffold, fedavg, atol=1e-5)  # ... and average out, as the paper's analysis says
    several, _, _ = train(tiny_config(**FULL, **{"strategy.name": "scaffold"}))  # 3 local steps: they do not
    plain, _, _ = train(tiny_config(**FULL, **{"strategy.weighting": "uniform"}))
    assert not torch.allclose(several, plain, atol=1e-4)


@pytest.mark.parametrize("extra", [{}, {"client.momentum": 0.9, "client.lr_schedule": "cosine"}])
def test_the_server_control_variate_is_the_mean_of_the_clients(extra):
    """c = (1/N) sum_i c_i over all N clients (absent ones keep theirs), with partial participation."""
    from helpers import federation
    from fedsim.runtime.loop import run_rounds

    cfg, strategy, grid, arrays = federation(tiny_config(**{"strategy.name": "scaffold", **extra}))
    run_rounds(strategy, grid, arrays, first_round=1, last_round=cfg.rounds)
    store = grid.handler.controls
    assert 0 < len(store) <= cfg.data.num_clients
    mean = sum((store.get(i) for i in range(cfg.data.num_clients) if store.get(i) is not None),
               torch.zeros(strategy.spec.dim)) / cfg.data.num_clients
    assert torch.allclose(strategy.state["c"].float(), mean, atol=1e-5)


def test_both_trainers_agree_with_control_variates_and_momentum():
    extra = {"strategy.name": "scaffold", "client.momentum": 0.9, "client.weight_decay": 0.01}
    seq, _, _ = train(tiny_config(**extra, **{"client.trainer": "sequential"}))
    vec, _, _ = train(tiny_config(**extra, **{"client.trainer": "vectorized"}))
    assert torch.allclose(vec, seq, atol=1e-5)


@pytest.mark.parametrize("key,value", [("compression", {"name": "top-k", "density": 0.2}),
                                       ("client.clip_norm", 1.0), ("privacy.example_dp", True)])
def test_settings_that_change_what_the_client_sends_are_refused(key, value):
    with pytest.raises(ConfigError, match="SCAFFOLD"):
        from fedsim.experiments.setup import load_client_data, make_strategy
        cfg = load_config(tiny_config(**{"strategy.name": "scaffold", key: value}))
        make_strategy(cfg, load_client_data(cfg))
