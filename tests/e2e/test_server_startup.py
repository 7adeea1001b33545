"""`fedsim server` checks every setting before it listens, and says who is missing while it waits."""

import logging

import pytest

from fedsim.config import ConfigError
from fedsim.experiments.serve import ServerOptions, run_server
from fedsim.experiments.setup import load as load_config
from fedsim.runtime.grpc_grid import GrpcGrid

from conftest import tiny_config


def test_a_bad_participation_setting_fails_before_the_server_listens(tmp_path):
    listened = []
    cfg = load_config(tiny_config(participation={"name": "uniform", "clients_per_round": 99}))
    with pytest.raises(ConfigError, match="clients_per_round"):
        run_server(cfg, tmp_path, ServerOptions(insecure=True), on_listen=listened.append)
    assert listened == []


def test_waiting_for_clients_names_the_missing_ones(caplog):
    grid = GrpcGrid(8, seed=0)
    with caplog.at_level(logging.WARNING, logger="fedsim.grpc"):
        assert not grid.wait_for_nodes(0.35, report_every=0.1)
    assert "0 of 8 registered" in caplog.text and "missing 0-7" in caplog.text
