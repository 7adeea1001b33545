"""Budgets and convergence stops of the optimisation attacks, SME's alpha = 0 baseline, and Soteria."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedsim.attacks.config import load_attack_config
from fedsim.attacks.defenses import DefenseConfig, soteria_mask
from fedsim.attacks.dlg import DLGConfig, dlg
from fedsim.attacks.data import load_pool, sample_clients
from fedsim.attacks.evaluate import evaluate
from fedsim.attacks.inverting import IGConfig, ig
from fedsim.attacks.models import build_attack_model
from fedsim.attacks.observations import observe
from fedsim.core.params import ParamSpec
from fedsim.inversion.layers import last_linear
from fedsim.inversion.optimise import StepDecay


@pytest.fixture(scope="module")
def pool():
    return load_pool("mnist5k", size=100, seed=0)


def _observation(pool, model_name, b=1, defense=DefenseConfig()):
    (u, y), = sample_clients(pool, 1, b, torch.Generator().manual_seed(0))
    model = build_attack_model(model_name, pool.input_shape, 10, seed=0)
    params = ParamSpec.of(model).flatten(model.state_dict())
    obs = observe(model, params, [(pool.normalizer.to_model(u), y)], lr=0.1, local_steps=1, local_batch_size=0,
                  view="gradient", defense=defense, gen=torch.Generator(), seed=0)
    return model, params, obs, u, y


def test_step_decay_fixed_schedule_and_plateau_stop():
    x = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([x], lr=1.0)
    fixed = StepDecay(opt, 8)  # IG's decays at steps 3, 5, 7 of 8
    lrs = []
    for _ in range(8):
        opt.step()  # the schedule steps after the optimiser
        assert not fixed.after_step(1.0)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    opt = torch.optim.Adam([x], lr=1.0)
    plateau = StepDecay(opt, 1000, plateau_steps=2, plateau_tol=0.01)
    stops = [plateau.after_step(1.0) for _ in range(20)]  # never improves: decay every 3 steps, stop at the 4th
    assert stops.index(True) == 11 and opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    opt = torch.optim.Adam([x], lr=1.0)
    improving = StepDecay(opt, 1000, plateau_steps=2, plateau_tol=0.01)
    assert not any(improving.after_step(0.5 ** k) for k in range(50)) and opt.param_groups[0]["lr"] == 1.0


def test_ig_convergence_stop_ends_before_the_cap_and_reports_steps(pool):
    model, _, obs, _, y = _observation(pool, "cnn")
    kw = dict(input_shape=pool.input_shape, labels=y, box=pool.normalizer.box)
    _, capped = ig(model, obs, cfg=IGConfig(steps=40), gen=torch.Generator().manual_seed(0), **kw)
    assert capped["steps"] == 40
    _, stopped = ig(model, obs, cfg=IGConfig(steps=5000, plateau_steps=5, plateau_tol=0.5),
                    gen=torch.Generator().manual_seed(0), **kw)
    assert 5 < stopped["steps"] < 5000


def test_dlg_plateau_stop_and_evaluation_count(pool):
    model, _, obs, _, _ = _observation(pool, "lenet-sigmoid")
    kw = dict(input_shape=pool.input_shape, num_classes=10)
    _, _, full = dlg(model, obs, cfg=DLGConfig(evals=60), gen=torch.Generator().manual_seed(0), **kw)
    assert full["steps"] <= 60
    _, _, early = dlg(model, obs, cfg=DLGConfig(evals=60, plateau_steps=1, plateau_tol=0.99),
                      gen=torch.Generator().manual_seed(0), **kw)
    assert early["steps"] < full["steps"]


def test_ig_update_is_sme_with_alpha_fixed_at_zero():
    cfg = load_attack_config("sme-paper", ["trials=1", "attack.sme.steps=3", "attack.sme.local_steps=2",
                                           "grid.batch_sizes=[2]", "data.name=mnist5k", "data.pool=50"])
    fam = cfg.attack.family("ig-update")
    assert fam.alpha_init == 0.0 and not fam.learn_alpha and fam.lr == cfg.attack.sme.lr
    rows, _, _ = evaluate(cfg, progress=False)
    by = {r["attack"]: r for r in rows}
    assert set(by) == {"sme", "ig-update"} and by["sme"]["model"] == "cnn-sme"
    assert by["ig-update"]["threat"] == by["sme"]["threat"] == "T2"
    assert by["sme"]["steps_run"] == by["ig-update"]["steps_run"] == 3
    sme_only = dataclasses.replace(cfg.attack, sme=dataclasses.replace(cfg.attack.sme, alpha_init=0.0, learn_alpha=False))
    rows0, _, _ = evaluate(dataclasses.replace(cfg, attack=sme_only, grid=dataclasses.replace(cfg.grid, attacks=["sme"])),
                           progress=False)
    assert rows0[0]["psnr_mean"] == by["ig-update"]["psnr_mean"]  # same images, same start, same alpha


def test_soteria_prunes_the_lowest_scored_columns_of_the_last_layer(pool):
    model, params, _, u, _ = _observation(pool, "cnn", b=2)
    x = pool.normalizer.to_model(u)
    mask = soteria_mask(model, params, x, 0.6)
    spec = ParamSpec.of(model)
    views = spec.unflatten(mask)
    weight = last_linear(model)[0]
    assert all(bool((v == 1).all()) for name, v in views.items() if name != weight)  # only the defended layer
    w = views[weight]
    pruned_columns = (w == 0).all(0)
    assert bool(((w == 0) == pruned_columns[None, :]).all())  # whole columns
    assert abs(float(pruned_columns.float().mean()) - 0.6) < 0.02
    assert torch.equal(soteria_mask(model, params, x, 0.0), torch.ones(spec.dim))


def test_soteria_observation_and_its_adaptive_attacker(pool):
    _, _, plain, _, _ = _observation(pool, "cnn", b=2)
    _, _, defended, _, _ = _observation(pool, "cnn", b=2, defense=DefenseConfig(name="soteria", prune_ratio=0.5))
    model, _, adaptive, _, _ = _observation(pool, "cnn", b=2,
                                            defense=DefenseConfig(name="soteria", prune_ratio=0.5, adaptive=True))
    assert defended.mask is None and torch.equal(defended.value, adaptive.value)
    changed = defended.value != plain.value
    assert changed.any() and bool((defended.value[changed] == 0).all())  # pruned, never altered
    spec = ParamSpec.of(model)
    dropped = ~spec.unflatten(adaptive.mask)[last_linear(model)[0]]
    assert bool(dropped.all()) and int((~adaptive.mask).sum()) == dropped.numel()


def test_bench_attack_points_and_the_paired_comparison(tmp_path):
    from fedsim.bench.attack import bench_attack, format_tables

    result = bench_attack("grid-smoke", ["sme", "ig-update"], [2, 4], 1, 2, 3, ["data.pool=50"], tmp_path, log=lambda m: None)
    assert [(p["attack"], p["budget"], p["stop"]) for p in result["points"]] == [
        ("sme", 2, 0), ("sme", 4, 0), ("sme", 4, 3), ("ig-update", 2, 0), ("ig-update", 4, 0), ("ig-update", 4, 3)]
    assert [p["steps_run"] for p in result["points"][:2]] == [2, 4]
    assert {(q["budget"], q["stop"]) for q in result["paired"]} == {(2, 0), (4, 0), (4, 3)}
    q = result["paired"][0]
    assert len(q["diffs"]) == 2 and q["ci95"] is not None
    assert (tmp_path / "budget.json").exists() and (tmp_path / "budget.png").exists()
    assert "SME minus its alpha = 0 baseline" in format_tables(result)


def test_ms_ssim_three_scales_ranks_noise_and_skips_small_images():
    from fedsim.attacks import metrics

    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(3, 1, 28, 28, generator=gen)
    near = (truth + 0.05 * torch.randn(truth.shape, generator=gen)).clamp(0, 1)
    far = (truth + 0.3 * torch.randn(truth.shape, generator=gen)).clamp(0, 1)
    assert torch.allclose(metrics.ms_ssim(truth, truth), torch.ones(3, dtype=torch.float64))
    assert bool((metrics.ms_ssim(near, truth) > metrics.ms_ssim(far, truth)).all())
    assert metrics.ms_ssim(truth[..., :20, :20], truth[..., :20, :20]) is None
    rgb = torch.rand(2, 3, 32, 32, generator=gen)
    assert metrics.ms_ssim(rgb, rgb).shape == (2,)


def test_batchnorm_model_attacks_in_train_mode_and_its_update_carries_running_statistics(pool):
    from fedsim.attacks.inverting import SMEConfig, sme
    from fedsim.inversion.functional import flat_grad

    (u, y), = sample_clients(pool, 1, 4, torch.Generator().manual_seed(0))
    x = pool.normalizer.to_model(u)
    model = build_attack_model("cnn-bn", pool.input_shape, 10, seed=0)
    assert model.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    spec = ParamSpec.of(model)
    params = spec.flatten(model.state_dict())
    before = params.clone()
    g = flat_grad(model, spec, params, x, y, create_graph=True)  # the attacker's double backprop
    assert torch.equal(params, before) and torch.isfinite(g).all()
    obs = observe(model, params, [(x, y)], lr=0.01, local_steps=3, local_batch_size=0, view="update",
                  defense=DefenseConfig(), gen=torch.Generator(), seed=0)
    stats = spec.unflatten(obs.value)["1.running_mean"]  # the first BatchNorm's batch means leak in the update
    assert stats.abs().sum() > 0
    matched = spec.unflatten(obs.mask)  # but the attacker matches parameters only: statistics are no gradient
    assert not matched["1.running_mean"].any() and not matched["1.num_batches_tracked"].any()
    assert matched["0.weight"].all()
    rec, _ = sme(model, obs, input_shape=pool.input_shape, labels=y, cfg=SMEConfig(steps=3),
                 gen=torch.Generator().manual_seed(0), box=pool.normalizer.box)
    assert rec.shape == x.shape and torch.isfinite(rec).all()
    with pytest.raises(NotImplementedError, match="BatchNorm"):
        soteria_mask(model, params, x, 0.5)


@pytest.mark.slow  # ~7 s: a Soteria federation scores features with per-sample Jacobians
def test_trained_grid_soteria_federation_is_shared_and_imprint_rows_attack_their_own_model():
    cfg = load_attack_config("grid-smoke", ['grid.attacks=["ig", "imprint"]', "grid.batch_sizes=[1]",
                                            'grid.defenses=[{name="soteria", prune_ratio=0.5}, '
                                            '{name="soteria", prune_ratio=0.5, adaptive=true}]',
                                            "state=round-1", "utility.rounds=1", "attack.ig.steps=2", "data.pool=50"])
    federations: dict = {}
    rows, _, _ = evaluate(cfg, progress=False, federations=federations)
    assert len(federations) == 1  # the adaptive attacker changes nothing in training: one federation serves both
    ig_rows = [r for r in rows if r["attack"] == "ig"]
    assert all(r["error"] is None and r["state"] == "round-1" for r in ig_rows)
    assert ig_rows[0]["utility_accuracy"] == ig_rows[1]["utility_accuracy"] is not None
    imprint_rows = [r for r in rows if r["attack"] == "imprint"]
    assert all(r["error"] is None and r["state"] == "malicious model" for r in imprint_rows)
