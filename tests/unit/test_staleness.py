"""Asynchronous aggregation (direct, weighted, FedAsync, FedBuff) and staleness repair."""

import math

import pytest
import torch

from fedsim.inversion.functional import local_update
from fedsim.config import ConfigError, RepairConfig
from fedsim.experiments.setup import load as load_config
from fedsim.core import staleness as S
from fedsim.core.model_versions import ModelVersions
from fedsim.core.params import ParamSpec
from fedsim.models import build_model
from fedsim.participation import build_participation, slow_clients
from fedsim.repair import repair_update

from helpers import train

FULL = {"name": "full", "comm_time": 0.1}


# --- pure rules ---------------------------------------------------------------------------------
def test_staleness_functions_match_their_formulas():
    tau = torch.tensor([0, 1, 3, 4, 9, 40])
    assert torch.equal(S.staleness_weight("constant", tau), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(S.staleness_weight("polynomial", tau, a=0.5), (tau + 1.0).double() ** -0.5)
    hinge = S.staleness_weight("hinge", tau, a=0.5, b=4)
    torch.testing.assert_close(hinge, torch.tensor([1, 1, 1, 1, 1 / (0.5 * 5 + 1), 1 / (0.5 * 36 + 1)],
                                                   dtype=torch.float64))
    # Wang & Gao's weighted baseline: 2^(-tau/20), a quarter at tau = 40
    w = S.staleness_weight("exponential", tau, a=math.log(2) / 20)
    assert w[0] == 1.0 and abs(float(w[-1]) - 0.25) < 1e-12
    with pytest.raises(ValueError, match="staleness function"):
        S.staleness_weight("linear", tau)
    with pytest.raises(ValueError, match=">= 0"):
        S.staleness_weight("polynomial", torch.tensor([-1]))


def test_fedasync_mixing_one_with_constant_weight_takes_the_newest_model():
    x = torch.randn(5)
    models = torch.randn(3, 5)
    assert torch.equal(S.fedasync_mix(x, models, torch.ones(3)), models[-1])
    half = S.fedasync_mix(x, models[:1], torch.tensor([0.5]))
    torch.testing.assert_close(half, 0.5 * x + 0.5 * models[0])


def test_fedbuff_flush_is_the_mean_of_the_buffered_updates():
    x, deltas = torch.randn(4), torch.randn(3, 4)
    buf, count = torch.zeros(4), 0
    for d in deltas:
        buf, count = S.fedbuff_add(buf, count, d, 1.0)
    torch.testing.assert_close(S.fedbuff_flush(x, buf, count, 1.0), x + deltas.mean(0))
    torch.testing.assert_close(S.direct(x, deltas, 1.0), x + deltas.mean(0))


def test_model_history_keeps_only_wanted_versions_within_its_limit():
    h = ModelVersions(limit=2)
    for v in (1, 2, 3):
        h.record(v, torch.full((2,), float(v)))
    assert sorted(h.versions) == [2, 3] and h.dropped == 1 and h.get(1) is None
    h.retain({3})
    assert sorted(h.versions) == [3] and h.nbytes == 8
    restored = ModelVersions(limit=2)
    restored.load_state_dict(h.state_dict())
    assert torch.equal(restored.get(3), h.get(3)) and restored.dropped == 1
    with pytest.raises(ValueError, match="limit"):
        ModelVersions(limit=3).load_state_dict(h.state_dict())


# --- strategies without staleness reduce to FedAvg --------------------------------------------------
@pytest.mark.parametrize("name, extra", [
    ("direct", {}), ("weighted", {"strategy.staleness_fn": "exponential", "strategy.staleness_a": 0.1}),
    ("fedbuff", {"strategy.buffer_size": 8}),  # buffer = cohort, zero staleness
    ("repair", {}),                            # zero staleness: repair is a no-op
])
def test_without_staleness_async_strategies_reduce_to_fedavg(tiny, name, extra):
    ref, _, _ = train(tiny(participation=FULL, **{"strategy.name": "fedavg", "strategy.weighting": "uniform"}))
    got, results, strategy = train(tiny(participation=FULL, **{"strategy.name": name, "strategy.m": 8, **extra}))
    assert all(r.metrics["server/staleness_max"] == 0 for r in results)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    if name == "repair":
        assert strategy.repairs == 0 and all(r.metrics["repair/count"] == 0 for r in results)


def test_fedasync_strategy_with_mixing_one_keeps_the_newest_answer(tiny):
    """Constant s and alpha = 1: after a round the global model is the last arrival's model x_s + delta."""
    from fedsim.runtime import protocol as P
    from helpers import federation

    raw = tiny(**{"strategy.name": "fedasync", "strategy.mixing": 1.0, "strategy.staleness_fn": "constant",
                  "strategy.m": 8, "participation": {"name": "full", "speed_spread": 1.0}})
    _, strategy, grid, arrays = federation(raw)
    x0 = ParamSpec.of(arrays.to_torch_state_dict()).flatten(arrays.to_torch_state_dict())
    ids = grid.push_messages(strategy.configure_train(1, arrays, __import__("flwr").app.ConfigRecord({}), grid))
    replies = grid.pull_until(ids, len(ids))
    assert len(replies) == 8
    strategy.aggregate_train(1, replies)
    newest = P.read_flat(replies[-1].content[P.UPDATE])
    torch.testing.assert_close(strategy.params, x0 + newest)


# --- repair -------------------------------------------------------------------------------------
def _convex_case(seed=0, n=1, dim=10, classes=4):
    """Softmax regression; one client sample, so the update identifies it (the inversion is well posed)."""
    g = torch.Generator().manual_seed(seed)
    model = build_model("logreg", (dim,), classes, seed=seed)
    spec = ParamSpec.of(model)
    x_s = torch.randn(spec.dim, generator=g) * 0.3
    x_t = x_s + torch.randn(spec.dim, generator=g) * 0.3  # the global model moved while the client worked
    data = torch.randn(n, dim, generator=g), torch.randint(classes, (n,), generator=g)
    replay = dict(steps=3, lr=0.5, batch_size=n)
    stale = local_update(model, spec, x_s, *data, **replay)
    fresh = local_update(model, spec, x_t, *data, **replay)
    return model, spec, x_s, x_t, stale, fresh, replay


@pytest.mark.parametrize("mode", ["replace", "correct"])
def test_repaired_update_is_closer_to_the_fresh_one_on_a_convex_problem(mode):
    model, spec, x_s, x_t, stale, fresh, replay = _convex_case()
    settings = RepairConfig(samples=1, iterations=100, mode=mode)
    rep = repair_update(model, spec, x_s, x_t, stale, local_steps=replay["steps"], lr=replay["lr"], batch_size=1,
                        settings=settings, input_shape=(10,), gen=torch.Generator().manual_seed(1), margin=1.0)
    stale_err, rep_err = float((stale - fresh).norm()), float((rep.update - fresh).norm())
    assert rep.used and rep_err < 0.5 * stale_err, (rep_err, stale_err)
    assert rep.residual < 0.05 and rep.drift > 0 and rep.seconds > 0


def test_repair_at_the_same_model_changes_nothing_in_correct_mode_and_declines_a_useless_inversion():
    model, spec, x_s, _, stale, _, replay = _convex_case()
    kw = dict(local_steps=replay["steps"], lr=replay["lr"], batch_size=1, input_shape=(10,))
    same = repair_update(model, spec, x_s, x_s, stale, settings=RepairConfig(samples=1, iterations=5, mode="correct"),
                         gen=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(same.update, stale)  # zero drift: the correction vanishes
    assert same.drift == 0.0
    # one inversion step explains little (residual ~1) while the model did not move: keep the stale update
    declined = repair_update(model, spec, x_s, x_s + 1e-4, stale, settings=RepairConfig(samples=1, iterations=1),
                             gen=torch.Generator().manual_seed(1), margin=1.0, **kw)
    assert not declined.used and torch.equal(declined.update, stale)


# --- environment, exact staleness, history, config --------------------------------------------------
def _slow_raw(tiny, name, **extra):
    """Clients mostly holding class 0 are 30x slower; rounds are fixed 1-second windows."""
    return tiny(**{"strategy.name": name, "strategy.round_time": 1.0, "rounds": 10, "data.alpha": 0.3,
                   "participation": {"name": "uniform", "clients_per_round": 3, "slow_classes": [0],
                                     "slow_share": 0.4, "slow_factor": 30.0},
                   **({"repair.iterations": 3, "repair.samples": 2} if name == "repair" else {}), **extra})


def test_slow_classes_make_the_clients_holding_them_slower():
    hist = torch.tensor([[9, 1], [2, 8], [5, 5]]).numpy()
    assert slow_clients(hist, [0]).tolist() == [True, False, True]
    p = build_participation("uniform", 3, seed=0, label_hist=hist, clients_per_round=3, slow_classes=[1],
                            slow_factor=7.0)
    plan = p.sample(1)
    assert plan.latency[1] == pytest.approx(7 * plan.latency[0])
    with pytest.raises(ValueError, match="slow_classes"):
        build_participation("uniform", 3, seed=0, label_hist=hist, clients_per_round=3, slow_classes=[2])
    with pytest.raises(ValueError, match="need participation.slow_classes"):
        build_participation("uniform", 3, seed=0, label_hist=hist, clients_per_round=3, slow_factor=2.0)


def test_stale_answers_are_exactly_tau_rounds_late_and_computed_on_the_model_of_that_round(tiny):
    """The history holds, for every version in flight, the global model sent in that round, and
    nothing else; a slow answer aggregated in round t was sent in round t - tau."""
    from helpers import federation
    from fedsim.runtime.loop import run_rounds

    cfg, strategy, grid, arrays = federation(_slow_raw(tiny, "fedasync"))
    sent, seen = {}, []
    original = strategy.configure_train

    def recording(rnd, arr, conf, g):
        msgs = original(rnd, arr, conf, g)
        sent[rnd] = strategy.params.clone()
        assert set(strategy.versions.versions) == set(strategy.in_flight.values())
        for v, p in strategy.versions.versions.items():
            assert torch.equal(p, sent[v])
        return msgs

    strategy.configure_train = recording
    run_rounds(strategy, grid, arrays, first_round=1, last_round=cfg.rounds,
               on_round=lambda res, _a: seen.append(res.metrics["server/staleness_max"]))
    assert max(seen) == 7  # slow answers: 30 x (3 steps x 0.05 s + 0.1 s) = 7.5 s in 1-second rounds
    assert strategy.versions.nbytes == 4 * strategy.spec.dim * len(set(strategy.in_flight.values()))


def test_an_answer_older_than_the_history_is_counted_and_aggregated_as_it_is(tiny):
    _, results, strategy = train(_slow_raw(tiny, "repair", **{"strategy.history": 1, "rounds": 14}))
    assert strategy.versions.dropped > 0
    assert sum(r.metrics["staleness/history_misses"] for r in results) > 0


def test_staleness_config_errors_name_the_key(tiny):
    for key, value, match in [("strategy.staleness_fn", "linear", "strategy.staleness_fn"),
                              ("strategy.mixing", 1.5, "strategy.mixing"),
                              ("strategy.buffer_size", 0, "strategy.buffer_size"),
                              ("strategy.round_time", -1.0, "strategy.round_time"),
                              ("repair.mode", "guess", "repair.mode"),
                              ("repair.switch", "oracle", "repair.switch"),
                              ("repair.samples", 0, "repair.samples"),
                              ("repair.warm_step", 0.0, "repair.warm_step"),
                              ("repair.warm_step", 1.5, "repair.warm_step")]:
        with pytest.raises(ConfigError, match=match):
            load_config(tiny(**{"strategy.name": "repair", key: value}))
    from helpers import federation
    with pytest.raises(ConfigError, match="strategy.server_lr"):
        federation(tiny(**{"strategy.name": "fedasync", "strategy.server_lr": 2.0}))


def test_runs_report_accuracy_on_the_slow_clients_classes_and_repair_cost(tmp_path, tiny):
    from fedsim.experiments.run import run_single

    summary = run_single(load_config(_slow_raw(tiny, "repair", **{"eval_every": 5})), tmp_path, progress=False)
    assert 0 <= summary["final_accuracy_stale_classes"] <= 1
    assert summary["repairs"] > 0 and summary["repair_seconds_mean"] > 0


def test_budget_table_reads_accuracy_at_fixed_virtual_times():
    from fedsim.experiments.report import budget_table

    def rows(stale):
        return [{"round": i, "virtual_time": float(i), "accuracy": 0.1 * i, "accuracy_stale_classes": a}
                for i, a in enumerate(stale, start=1)]

    table = budget_table({"fast": rows([0.2, 0.6, 0.8]), "slow": rows([0.0, 0.1, 0.3])}, [2, 3])
    lines = table.splitlines()
    assert "time to slow-class accuracy 0.4" in lines[0]
    assert lines[2] == "| fast | 0.200 / 0.600 | 0.300 / 0.800 | 2 |"
    assert lines[3] == "| slow | 0.200 / 0.100 | 0.300 / 0.300 | not reached |"


def test_a_failed_inversion_is_never_aggregated_even_without_a_switch_policy(monkeypatch):
    import fedsim.repair as R

    model, spec, x_s, x_t, stale, _, replay = _convex_case()
    monkeypatch.setattr(R, "invert_batch", lambda *a, **k: [R.Inverted(torch.full((1, 10), float("nan")),
                                                                        torch.zeros(1, 4), float("inf"), 1)])
    rep = R.repair_update(model, spec, x_s, x_t, stale, local_steps=replay["steps"], lr=replay["lr"], batch_size=1,
                          settings=RepairConfig(samples=1), input_shape=(10,), gen=torch.Generator().manual_seed(0),
                          margin=None)
    assert not rep.used and torch.equal(rep.update, stale)


@pytest.mark.parametrize("unit,expected", [("round", 0.0), ("update", 3.5)])
def test_fedasync_can_count_staleness_in_server_updates(unit, expected):
    """Xie et al. count versions per update: the j-th of 8 fresh answers mixed in one round meets a
    model j updates on (mean 3.5); counted in rounds they are all fresh."""
    from flwr.app import ConfigRecord

    from conftest import tiny_config
    from helpers import federation

    raw = tiny_config(**{"strategy.name": "fedasync", "strategy.m": 8, "strategy.staleness_unit": unit,
                         "participation": {"name": "full"}})
    cfg, strategy, grid, arrays = federation(raw)
    ids = set(grid.push_messages(strategy.configure_train(1, arrays, ConfigRecord({}), grid)))
    _, metrics = strategy.aggregate_train(1, grid.pull_until(ids, len(ids)))
    assert metrics["fedasync/mean_staleness"] == expected and strategy.state["updates"] == 8
    assert strategy.state["sent_at"] == {2: 8}


def _inversion_settings(**over):
    return {"local_steps": 3, "lr": 0.5, "batch_size": 1, "samples": 1, "input_shape": (10,), "iterations": 40,
            "image_lr": 0.1, "label_lr": 0.1, "tv": 0.0, "box": None, **over}


def test_answers_inverted_together_equal_answers_inverted_one_by_one():
    from fedsim.repair import Problem, invert, invert_batch

    cases = [_convex_case(seed) for seed in (0, 1, 2)]
    model, spec = cases[0][0], cases[0][1]
    together = invert_batch(model, spec, [Problem(c[2], c[4], torch.Generator().manual_seed(i))
                                          for i, c in enumerate(cases)], **_inversion_settings(iterations=15))
    for i, c in enumerate(cases):
        alone = invert(model, spec, c[2], c[4], gen=torch.Generator().manual_seed(i), **_inversion_settings(iterations=15))
        assert torch.allclose(alone.x, together[i].x, atol=1e-5) and abs(alone.residual - together[i].residual) < 1e-5


def test_warm_step_scales_only_the_warm_started_problems_image_step():
    from fedsim.repair import Problem, invert, invert_batch

    cases = [_convex_case(seed) for seed in (0, 1)]
    model, spec = cases[0][0], cases[0][1]
    start = (torch.full((1, 10), 0.2), torch.zeros(1, 4))
    problems = [Problem(cases[0][2], cases[0][4], torch.Generator().manual_seed(0), start),
                Problem(cases[1][2], cases[1][4], torch.Generator().manual_seed(1))]
    both = invert_batch(model, spec, problems, warm_step=0.1, **_inversion_settings(iterations=15))
    # Adam's moments do not depend on its rate: a 0.1 step is Adam at a tenth of image_lr ...
    warm = invert(model, spec, cases[0][2], cases[0][4], gen=torch.Generator().manual_seed(0), start=start,
                  **_inversion_settings(iterations=15, image_lr=0.01))
    # ... and the cold problem beside it keeps the full step
    cold = invert(model, spec, cases[1][2], cases[1][4], gen=torch.Generator().manual_seed(1),
                  **_inversion_settings(iterations=15))
    assert torch.allclose(both[0].x, warm.x, atol=1e-5) and torch.allclose(both[1].x, cold.x, atol=1e-5)
    assert not torch.allclose(warm.x, invert(model, spec, cases[0][2], cases[0][4], start=start,
                                             gen=torch.Generator().manual_seed(0), **_inversion_settings(iterations=15)).x)


@pytest.mark.slow  # ~3 s
def test_warm_start_continues_from_the_previous_set_and_the_plateau_stop_ends_early():
    from fedsim.repair import invert

    g = torch.Generator().manual_seed(0)
    model = build_model("logreg", (10,), 4, seed=0)
    spec = ParamSpec.of(model)
    data = torch.randn(1, 10, generator=g), torch.randint(4, (1,), generator=g)
    x_s = torch.randn(spec.dim, generator=g) * 0.3
    x_next = x_s + torch.randn(spec.dim, generator=g) * 0.3  # the model of the same client's next update
    replay = dict(steps=3, lr=0.5, batch_size=1)
    stale, nxt = local_update(model, spec, x_s, *data, **replay), local_update(model, spec, x_next, *data, **replay)
    cold = invert(model, spec, x_s, stale, gen=torch.Generator().manual_seed(0), **_inversion_settings(iterations=200))
    # its data is fixed, so the set found for one update is a better start for the next one
    first = []
    warm = invert(model, spec, x_next, nxt, gen=torch.Generator().manual_seed(1), start=(cold.x, cold.logits),
                  trace=lambda step, r, *_: first.append(float(r[0])) if step == 1 else None,
                  **_inversion_settings(iterations=20))
    fresh_start = invert(model, spec, x_next, nxt, gen=torch.Generator().manual_seed(1),
                         **_inversion_settings(iterations=20))
    at_start = local_update(model, spec, x_next, cold.x, cold.soft, **replay)
    assert abs(first[0] - float((at_start - nxt).abs().sum() / nxt.abs().sum())) < 1e-4  # it started there
    assert warm.residual < fresh_start.residual, (warm.residual, fresh_start.residual)
    model, spec, x_s, _, stale, _, _ = _convex_case()  # one the inversion solves (see above)
    stopped = invert(model, spec, x_s, stale, gen=torch.Generator().manual_seed(1),
                     **_inversion_settings(iterations=5000, plateau_steps=10, plateau_tol=0.01))
    capped = invert(model, spec, x_s, stale, gen=torch.Generator().manual_seed(1), **_inversion_settings(iterations=100))
    assert stopped.steps < 5000 and stopped.residual < min(0.05, capped.residual), (stopped, capped)
