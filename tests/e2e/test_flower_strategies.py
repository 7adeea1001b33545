"""Flower's own strategies (``strategy.name = "flwr:<Class>"``) on fedsim's in-process runtime: the
same model as fedsim's rule where both exist, Flower's state carried through a resume, hostile replies
screened, config mistakes named, and fedsim's clients answering Flower's own start loop (train and
evaluate). gRPC: tests/e2e/test_grpc_equivalence.py; Flower's simulation runtime:
tests/e2e/test_flwr_simulation.py."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedsim.config import ConfigError
from fedsim.experiments.run import NoValidAnswers, run_single
from fedsim.experiments.setup import load as load_config
from fedsim.runtime import protocol as P

from conftest import tiny_config
from helpers import federation, run_until, train

UNIFORM = {"participation": {"name": "uniform", "clients_per_round": 4}}


def _rows(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("flower,fedsim", [("flwr:FedAvg", {}), ("flwr:FedMedian", {"strategy.name": "fedmedian"})])
def test_flowers_class_gives_fedsims_model_for_the_same_rule(flower, fedsim):
    ours, _, _ = train(tiny_config(**UNIFORM, **fedsim))
    theirs, results, strategy = train(tiny_config(**UNIFORM, **{"strategy.name": flower}))
    assert torch.allclose(theirs, ours, atol=1e-6)  # same clients (the participation model), same local training
    assert [r.participants for r in results] == [4] * 6 and type(strategy.inner).__name__ == flower[5:]


@pytest.mark.parametrize("name,args", [("flwr:FedAdam", {"eta": 0.05}), ("flwr:FedAvgM", {"server_momentum": 0.9}),
                                       ("flwr:FedProx", {"proximal_mu": 0.5, "fraction_train": 0.5})])
def test_resume_continues_flowers_state_exactly(tmp_path, name, args):
    cfg = load_config(tiny_config(**{"strategy.name": name, "strategy.args": args, "eval_every": 1}))
    run_single(cfg, tmp_path / "a", progress=False)
    run_until(cfg, tmp_path / "b", stop_after=5)  # checkpoint at round 3: Flower's moments / momentum inside
    run_single(cfg, tmp_path / "b", resume=True, progress=False)
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")


def test_flowers_fedprox_mu_reaches_fedsims_clients():
    prox, _, _ = train(tiny_config(**UNIFORM, **{"strategy.name": "flwr:FedProx", "strategy.args": {"proximal_mu": 1.0}}))
    ours, _, _ = train(tiny_config(**UNIFORM, **{"strategy.name": "fedprox", "strategy.mu": 1.0}))
    assert torch.allclose(prox, ours, atol=1e-6)


def test_bad_replies_are_screened_and_the_model_kept():
    cfg, strategy, grid, arrays = federation(tiny_config(**{"strategy.name": "flwr:FedAdam"}))
    messages = strategy.configure_train(1, arrays, ConfigRecord({}), grid)
    ids = set(grid.push_messages(messages))
    replies = list(grid.pull_until(ids, len(ids)))
    before = strategy.params.clone()
    nan = {k: np.full_like(v.numpy(), np.nan) for k, v in replies[0].content[P.ARRAYS].items()}
    replies[0].content[P.ARRAYS] = ArrayRecord(array_dict={k: Array(v) for k, v in nan.items()})
    replies[1].content[P.METRICS]["num-examples"] = -1
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["server/rejected"] == 2 and metrics["participants"] == len(replies) - 2
    assert "NaN" in strategy.rejections[0] and "num-examples" in strategy.rejections[1]
    assert torch.isfinite(strategy.params).all() and not torch.equal(strategy.params, before)


def test_a_run_whose_answers_are_all_rejected_stops_naming_why(tmp_path, monkeypatch):
    from fedsim.strategies.flower import FlowerStrategy

    monkeypatch.setattr(FlowerStrategy, "_screen", lambda self, msg: (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(NoValidAnswers, match="bad"):
        run_single(load_config(tiny_config(**{"strategy.name": "flwr:FedAvg"})), tmp_path, progress=False)


@pytest.mark.parametrize("over,key", [
    ({"strategy.name": "flwr:FedNope"}, "strategy.name"),
    ({"strategy.name": "flwr:DifferentialPrivacyServerSideFixedClipping"}, "strategy.name"),
    ({"strategy.name": "flwr:FedAdam", "strategy.args": {"etta": 0.1}}, "strategy.args"),
    ({"strategy.name": "flwr:FedAdam", "compression": {"name": "top-k", "density": 0.1}}, "compression.name"),
    ({"strategy.name": "flwr:FedAvg", "strategy.weighting": "uniform"}, "strategy.weighting"),
    ({"strategy.name": "flwr:FedAvg", "privacy.user_level": True}, "privacy.user_level"),
    ({"strategy.name": "flwr:FedAvg", "participation": {"name": "anarchic", "p": 0.5}}, "participation.name"),
])
def test_config_mistakes_name_the_key(over, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(tiny_config(**over))


def test_a_round_with_too_few_available_nodes_is_skipped_not_waited_on():
    raw = tiny_config(**{"strategy.name": "flwr:FedAvg", "strategy.args": {"min_available_nodes": 6},
                         "participation": {"name": "uniform", "clients_per_round": 4}})
    _, results, _ = train(raw, rounds=2)
    assert [r.participants for r in results] == [0, 0]


def test_fedsims_clients_answer_flowers_own_start_loop():
    """A user's ServerApp with Flower's FedAvg and Flower's Strategy.start, on fedsim's in-process grid:
    fedsim's client handler answers both TRAIN and EVALUATE in Flower's convention."""
    cfg, _, grid, arrays = federation(tiny_config())
    result = FedAvg(fraction_train=0.5, fraction_evaluate=0.5).start(grid=grid, initial_arrays=arrays, num_rounds=3)
    assert set(result.train_metrics_clientapp) == {1, 2, 3} and set(result.evaluate_metrics_clientapp) == {1, 2, 3}
    assert 0 < result.evaluate_metrics_clientapp[3]["eval_acc"] <= 1
    assert result.train_metrics_clientapp[3]["train_loss"] < result.train_metrics_clientapp[1]["train_loss"]
