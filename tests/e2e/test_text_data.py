"""Shakespeare by (play, role) through the whole pipeline: natural partition + char-LSTM."""

import pytest

from fedsim.experiments.setup import load as load_config
from fedsim.data import DatasetUnavailable, load_dataset
from fedsim.experiments.run import run_single


def test_shakespeare_natural_clients_train(tmp_path):
    try:
        load_dataset("shakespeare", max_clients=6, max_samples_per_client=100)
    except DatasetUnavailable as exc:
        pytest.skip(str(exc))
    raw = {"name": "shk", "rounds": 2, "eval_every": 1,
           "data": {"name": "shakespeare", "partition": "natural", "num_clients": 6, "eval_samples": 200,
                    "options": {"max_clients": 6, "max_samples_per_client": 100}},
           "model": {"name": "char-lstm"}, "client": {"lr": 0.5, "batch_size": 10, "local_steps": 2},
           "participation": {"name": "uniform", "clients_per_round": 3}}
    summary = run_single(load_config(raw), tmp_path, progress=False)
    assert summary["rounds"] == 2
    assert 0.0 <= summary["final_accuracy"] <= 1.0 and summary["final_loss"] < 4.4  # below ln(73) = 4.29 + slack
