"""Server stages around any strategy: user-level DP (noise 0 and an unbounded clip is the
non-private run, exactly), composition with compression and asynchrony, server momentum (FedAvgM),
and the config errors that name the key."""

import json

import pytest
import torch

from fedsim.config import ConfigError
from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load
from fedsim.stages import ServerMomentum

from conftest import tiny_config
from helpers import train

NO_NOISE = {"privacy.user_level": True, "privacy.noise_multiplier": 0.0, "privacy.clip_norm": 1e9}
POISSON = {"participation": {"name": "bernoulli", "p": 0.5}}  # the sampling user-level DP is amplified by
ASYNC = {"participation": {"name": "uniform", "clients_per_round": 3, "speed_spread": 1.0},
         "strategy.round_time": 0.6}
# every strategy the DP stage can wrap, with what it needs to run
DP_ABLE = {"fedavg": {"strategy.weighting": "fixed", **POISSON}, "fedprox": {"strategy.weighting": "fixed", **POISSON}, "ef14": {"strategy.weighting": "fixed", **POISSON},
           "fedau": POISSON, "ef21": {"compression": {"name": "top-k", "density": 0.3}, **POISSON},
           "fedbuff": {**ASYNC, "strategy.buffer_size": 2}}


def _rows(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", list(DP_ABLE))
def test_noise_zero_and_unbounded_clip_equal_the_non_private_run(name, tmp_path):
    raw = tiny_config(**{"strategy.name": name, **DP_ABLE[name]})
    plain = run_single(load(raw), tmp_path / "plain", progress=False)
    dp = run_single(load({**raw, "privacy": {"user_level": True, "noise_multiplier": 0.0, "clip_norm": 1e9}}),
                    tmp_path / "dp", progress=False)
    a, b = _rows(tmp_path / "plain"), _rows(tmp_path / "dp")
    extra = {"epsilon", "delta", "mechanism", "accountant", "neighbouring", "sampling_scheme"}
    assert [{k: v for k, v in r.items() if not k.startswith("dp/") and k not in extra} for r in b] == a
    assert plain["final_accuracy"] == dp["final_accuracy"] and dp["epsilon"] == float("inf")


def test_every_dp_able_registry_strategy_is_covered_here():
    from fedsim.strategies.registry import STRATEGIES

    able = {n for n, r in STRATEGIES.items() if r.user_level_dp and not r.implies}
    assert able == set(DP_ABLE)


def test_dp_fedau_spends_epsilon_and_noise_scales_with_the_weight_bound(tmp_path):
    raw = tiny_config(**{"strategy.name": "fedau", "strategy.cutoff": 4, "privacy.user_level": True,
                         "privacy.noise_multiplier": 1.0, "privacy.clip_norm": 0.5, **POISSON})
    summary = run_single(load(raw), tmp_path, progress=False)
    assert 0 < summary["epsilon"] < float("inf") and summary["sampling"] == 0.5  # Poisson, p = 0.5
    over = {"strategy.name": "fedau", "strategy.cutoff": 4, "rounds": 1, **POISSON}
    quiet, _, _ = train(tiny_config(**over, **NO_NOISE))
    noisy, _, strategy = train(tiny_config(**over, **{"privacy.user_level": True, "privacy.noise_multiplier": 1.0,
                                                      "privacy.clip_norm": 1e9}))
    assert [strategy.weight_bound(t) for t in (1, 3, 9)] == [1.0, 3.0, 4.0]  # min(cutoff, round)
    dp = strategy.pipeline.stages[0]
    noise = (noisy - quiet).double() * 8 / 1  # round 1: (sum + min(4, 1) w) / N
    assert noise.std().item() == pytest.approx(dp.std, rel=0.1)


def test_dp_with_an_asynchronous_strategy_claims_no_amplification(tmp_path):
    raw = tiny_config(**{"strategy.name": "fedbuff", **ASYNC, "privacy.user_level": True,
                         "privacy.noise_multiplier": 1.0})
    summary = run_single(load(raw), tmp_path, progress=False)
    assert summary["sampling"] == 1.0 and 0 < summary["epsilon"] < float("inf")
    with pytest.raises(ConfigError, match="asynchronous strategy takes privacy.mechanism = 'identity'"):
        run_single(load({**raw, "privacy": {**raw["privacy"], "mechanism": "banded"}}), tmp_path / "b", progress=False)


@pytest.mark.parametrize("name", ["direct", "afa-cd", "afa-cs", "fedasync"])
def test_a_strategy_without_a_noisy_sum_is_refused(name):
    with pytest.raises(ConfigError, match=f"config key 'privacy.user_level': strategy '{name}'"):
        load(tiny_config(**{"strategy.name": name, "privacy.user_level": True}))


def test_dp_fedavg_needs_a_fixed_denominator():
    with pytest.raises(ConfigError, match="config key 'strategy.weighting' must be 'fixed'"):
        load(tiny_config(**{"privacy.user_level": True}))


def test_dp_fedavg_alias_is_fedavg_fixed_with_the_stage():
    a, _, _ = train(tiny_config(rounds=3, **{"strategy.name": "dp-fedavg", "privacy.noise_multiplier": 1.0,
                                             **POISSON}))
    b, _, _ = train(tiny_config(rounds=3, **{"strategy.weighting": "fixed", "privacy.user_level": True, **POISSON,
                                             "privacy.noise_multiplier": 1.0}))
    assert torch.equal(a, b)


def test_server_momentum_zero_is_the_plain_step_and_beta_accumulates():
    plain, _, _ = train(tiny_config(rounds=3))
    zero, _, _ = train(tiny_config(rounds=3, server_optimizer={"name": "momentum", "momentum": 0.0}))
    assert torch.allclose(plain, zero, atol=1e-7)
    stage = ServerMomentum(momentum=0.5)
    stage.init(2)
    x0 = torch.tensor([1.0, 1.0])
    x1 = stage.after(1, x0, x0 + torch.tensor([1.0, 0.0]), {})      # v = d1
    x2 = stage.after(2, x1, x1 + torch.tensor([0.0, 2.0]), {})      # v = 0.5 d1 + d2
    assert torch.equal(x1, torch.tensor([2.0, 1.0])) and torch.equal(x2, torch.tensor([2.5, 3.0]))


@pytest.mark.parametrize("over, message", [
    ({"strategy.round_time": 1.0}, "config key 'strategy.round_time' is not read by strategy 'fedavg'"),
    ({"strategy.name": "fedau", "strategy.buffer_size": 3}, "config key 'strategy.buffer_size' is not read"),
    ({"repair.iterations": 3}, "config key 'repair.iterations' is not read by strategy 'fedavg' \\(it is read by repair\\)"),
    ({"server_optimizer": {"name": "lamb"}}, "config key 'server_optimizer.name' must be one of"),
    ({"server_optimizer": {"name": "momentum", "beta": 0.9}}, "config key 'server_optimizer.beta' is not read"),
])
def test_keys_the_strategy_does_not_read_are_errors(over, message):
    with pytest.raises(ConfigError, match=message):
        load(tiny_config(**over))


def test_afa_cd_takes_round_time_windows():
    _, results, strategy = train(tiny_config(rounds=4, **{"strategy.name": "afa-cd", **ASYNC}))
    times = [r.virtual_time for r in results]
    assert times == pytest.approx([0.6, 1.2, 1.8, 2.4])


# --- client stages ---------------------------------------------------------------------------------
@pytest.mark.parametrize("over", [{}, {"strategy.name": "ef21", "compression": {"name": "top-k", "density": 0.3}},
                                  {"strategy.name": "fedbuff", **ASYNC}])
def test_client_clip_unbounded_is_no_clip_and_a_bound_holds_for_every_answer(over):
    from flwr.app import ConfigRecord

    from helpers import federation

    plain, _, _ = train(tiny_config(**over))
    loose, _, _ = train(tiny_config(**over, **{"client.clip_norm": 1e9}))
    assert torch.equal(plain, loose)
    _, strategy, grid, arrays = federation(tiny_config(participation={"name": "full"},
                                                       **{"client.clip_norm": 0.01, "client.lr": 0.5}))
    ids = set(grid.push_messages(strategy.configure_train(1, arrays, ConfigRecord({}), grid)))
    cohort, rejected = strategy.decoder.decode(1, list(grid.pull_until(ids, len(ids))))
    norms = cohort.updates.norm(dim=1)
    assert rejected == [] and len(norms) == 8 and (norms <= 0.01 * (1 + 1e-5)).all() and (norms > 0.009).all()


def test_client_clip_must_be_non_negative():
    with pytest.raises(ConfigError, match="config key 'client.clip_norm' must be >= 0"):
        load(tiny_config(**{"client.clip_norm": -1.0}))


def test_prune_keeps_the_largest_magnitudes_of_each_tensor():
    import math

    from fedsim.core.compression import make_compressor

    sizes, density = (10, 25, 7), 0.1
    v = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(0))
    comp = make_compressor("prune", sum(sizes), density=density, sizes=sizes)
    out, start = comp(v), 0
    for size in sizes:
        part, kept = v[start:start + size], out[start:start + size]
        keep = math.ceil(density * size)  # = size - floor((1 - density) size): DLG's rule
        assert int((kept != 0).sum()) == keep
        assert set(torch.nonzero(kept).flatten().tolist()) == set(part.abs().argsort(descending=True)[:keep].tolist())
        start += size
    assert comp.k == 1 + 3 + 1 and comp.sparse and comp.alpha == pytest.approx(1 / 10)
    with pytest.raises(ValueError, match="prune needs the parameter tensors' sizes"):
        make_compressor("prune", 42, density=0.1, sizes=(10, 10))


@pytest.mark.parametrize("name", ["fedavg", "ef21", "fedbuff"])
def test_prune_is_a_client_stage_of_any_strategy(name):
    over = {"strategy.name": name, "compression": {"name": "prune", "density": 0.2},
            **(ASYNC if name == "fedbuff" else {}),
            **({"strategy.ef_init": "zero"} if name == "ef21" else {})}  # no uncompressed first message
    params, results, strategy = train(tiny_config(**over))
    assert torch.isfinite(params).all() and strategy.compressor.name == "prune"
    sent = [r.metrics["comm/bits_up"] for r in results if r.participants]
    assert sent and all(b % strategy.compressor.bits == 0 for b in sent)  # every answer: k values + indices
    with pytest.raises(ConfigError, match="prune needs density > 0"):
        load(tiny_config(compression={"name": "prune", "k": 3}))
