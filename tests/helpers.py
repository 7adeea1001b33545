"""Build small in-process federations for tests."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord

from fedsim.experiments.setup import load as load_config
from fedsim.experiments.setup import load_client_data, make_handler, make_model, make_strategy
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.runtime.loop import run_rounds


def federation(raw: dict):
    cfg = load_config(raw)
    data = load_client_data(cfg)
    strategy = make_strategy(cfg, data)
    grid = InProcessGrid(make_handler(cfg, data), cfg.data.num_clients, seed=cfg.seed)
    arrays = ArrayRecord(torch_state_dict=make_model(cfg, data.dataset).state_dict())
    return cfg, strategy, grid, arrays


def train(raw: dict, rounds: int | None = None):
    """Run a config's rounds; returns (final flat params, per-round results)."""
    cfg, strategy, grid, arrays = federation(raw)
    results = []
    run_rounds(strategy, grid, arrays, first_round=1, last_round=rounds or cfg.rounds,
               on_round=lambda res, _a: results.append(res))
    return strategy.params.clone(), results, strategy


def flat(arrays: ArrayRecord) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in arrays.to_torch_state_dict().values()])


def run_until(cfg, out, stop_after: int) -> None:
    """Run ``cfg`` but crash right after round ``stop_after`` is recorded (a simulated kill)."""
    import fedsim.experiments.run as run_mod
    from fedsim.experiments.run import run_single

    original = run_mod.run_rounds

    def crashing(*args, on_round, **kw):
        def wrapped(res, arrays):
            on_round(res, arrays)
            if res.round == stop_after:
                raise KeyboardInterrupt
        return original(*args, on_round=wrapped, **kw)

    run_mod.run_rounds = crashing
    try:
        with pytest.raises(KeyboardInterrupt):
            run_single(cfg, out, progress=False)
    finally:
        run_mod.run_rounds = original
    assert len((out / "metrics.jsonl").read_text().splitlines()) == stop_after


def everyone_shows_up_in_round_2(raw: dict):
    """Run round 1 of ``raw``, then change the environment under the strategy so that every client is
    sent work in round 2; returns the call that sends it (a DP stage must refuse what breaks its plan)."""
    from flwr.app import ConfigRecord

    from fedsim.participation import build_participation

    cfg, strategy, grid, arrays = federation(raw)
    strategy.configure_train(1, arrays, ConfigRecord({}), grid)
    strategy.in_flight.clear()
    strategy.participation = build_participation("full", cfg.data.num_clients, seed=0)
    strategy.participation._round = 1
    return lambda: strategy.configure_train(2, arrays, ConfigRecord({}), grid)
