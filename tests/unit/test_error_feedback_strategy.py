"""EF21 / EF14 as federated strategies: reductions to FedAvg, the server invariant, wire format and bits,
malformed compressed answers, and the ClientApp path that keeps g_i in the node's Context."""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from clients.client_app import _handler, app as client_app
from fedsim.config import ConfigError
from fedsim.experiments.setup import load as load_config
from fedsim.runtime import protocol as P
from fedsim.runtime.inprocess import AppHandler, InProcessGrid
from fedsim.runtime.loop import run_rounds

from conftest import tiny_config
from helpers import federation, train

FULL = {"name": "full"}


def test_ef21_with_identity_and_full_participation_is_fedavg_uniform():
    fedavg, _, _ = train(tiny_config(participation=FULL, **{"strategy.weighting": "uniform"}))
    ef21, _, _ = train(tiny_config(participation=FULL, **{"strategy.name": "ef21"}))
    # EF21 sends (x - y)/(lr K) and steps by lr K: equal up to float32 round-off of that rescaling.
    assert torch.allclose(ef21, fedavg, atol=1e-5, rtol=0)


def test_ef14_with_identity_is_fedavg_uniform_exactly():
    fedavg, _, _ = train(tiny_config(**{"strategy.weighting": "uniform"}))
    ef14, _, _ = train(tiny_config(**{"strategy.name": "ef14"}))
    assert torch.equal(ef14, fedavg)


def test_ef21_server_g_is_the_mean_of_all_clients_g_i_under_partial_participation():
    raw = tiny_config(**{"strategy.name": "ef21", "compression": {"name": "top-k", "k": 3}})
    cfg, strategy, grid, arrays = federation(raw)
    run_rounds(strategy, grid, arrays, first_round=1, last_round=cfg.rounds)
    store = grid.handler.uplink.store
    g_i = torch.stack([store.get(c) if store.get(c) is not None else torch.zeros(strategy.spec.dim)
                       for c in range(cfg.data.num_clients)])
    assert len(store) >= 4  # 6 rounds of 4 out of 8 clients
    assert torch.allclose(strategy.state["g"], g_i.double().mean(0), atol=1e-6)
    assert int(strategy.state["seen"].sum()) == len(store)


def test_top_k_messages_are_sparse_and_bits_are_exact():
    raw = tiny_config(participation=FULL, rounds=3,
                      **{"strategy.name": "ef21", "compression": {"name": "top-k", "k": 3}})
    _, results, strategy = train(raw)
    dim, n = strategy.spec.dim, 8
    per_msg = 3 * (32 + math.ceil(math.log2(dim)))
    assert results[0].metrics["comm/bits_up"] == n * 32 * dim          # first messages are uncompressed
    assert results[1].metrics["comm/bits_up"] == n * per_msg
    assert results[1].bytes_up == math.ceil(n * per_msg / 8)


def test_ef21_zero_init_sends_compressed_from_the_first_round():
    raw = tiny_config(participation=FULL, rounds=1, **{"strategy.name": "ef21", "strategy.ef_init": "zero",
                                                       "compression": {"name": "top-k", "k": 3}})
    _, results, strategy = train(raw)
    assert results[0].metrics["comm/bits_up"] == 8 * 3 * (32 + math.ceil(math.log2(strategy.spec.dim)))


def _sparse_round(mutate):
    raw = tiny_config(participation=FULL, **{"strategy.name": "ef14", "compression": {"name": "top-k", "k": 3}})
    cfg, strategy, grid, arrays = federation(raw)
    replies = list(grid.send_and_receive(list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))))
    before = strategy.params.clone()
    mutate(replies[0])
    _, metrics = strategy.aggregate_train(1, replies)
    return before, strategy, metrics


@pytest.mark.parametrize("case", ["too-many", "out-of-range", "repeated", "dense", "int-values"])
def test_malformed_sparse_answers_are_rejected(case):
    def mutate(reply):
        rec = reply.content[P.UPDATE]
        values, indices = rec[P.VALUES].numpy().copy(), rec[P.INDICES].numpy().copy()
        if case == "too-many":
            values, indices = np.ones(4, np.float32), np.arange(4, dtype=np.int64)
        elif case == "out-of-range":
            indices[0] = 10**6
        elif case == "repeated":
            indices[1] = indices[0]
        elif case == "int-values":
            values = values.astype(np.int64)
        if case == "dense":
            reply.content[P.UPDATE] = P.flat_record(torch.zeros(44))
        else:
            reply.content[P.UPDATE] = ArrayRecord(array_dict={P.VALUES: Array(values), P.INDICES: Array(indices)})

    before, strategy, metrics = _sparse_round(mutate)
    assert metrics["server/rejected"] == 1
    assert metrics["participants"] == 7
    assert not torch.equal(strategy.params, before)  # the 7 good answers were used


def test_compression_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="compression"):
        load_config(tiny_config(compression={"name": "top-k"}))
    with pytest.raises(ConfigError, match="compression.name"):
        load_config(tiny_config(compression={"name": "top-kk", "k": 2}))
    with pytest.raises(ConfigError, match="compression.unbiased"):
        load_config(tiny_config(compression={"name": "top-k", "k": 2, "unbiased": True}))
    with pytest.raises(ConfigError, match="strategy.ef_init"):
        load_config(tiny_config(**{"strategy.ef_init": "warm"}))


def test_client_app_keeps_error_feedback_state_in_the_node_context(tmp_path):
    """Under Flower's runtimes each message may meet a fresh handler; g_i must come from Context.state."""
    raw = tiny_config(participation=FULL, rounds=3,
                      **{"strategy.name": "ef21", "compression": {"name": "top-k", "k": 3}})
    native, _, _ = train(raw)

    import tomli_w

    path = tmp_path / "exp.toml"
    path.write_text(tomli_w.dumps(raw))
    cfg, strategy, _, arrays = federation(raw)
    grid = InProcessGrid(AppHandler(client_app), 8, seed=raw["seed"], run_config={"preset": str(path)})

    def forgetful(res, _a):
        _handler.cache_clear()  # a new handler (empty store) for every round
    run_rounds(strategy, grid, arrays, first_round=1, last_round=3, on_round=forgetful)
    assert all("fedsim.uplink" in c.state.array_records for c in grid.contexts.values())
    assert torch.allclose(strategy.params, native, atol=1e-6)
