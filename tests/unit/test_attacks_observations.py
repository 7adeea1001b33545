"""Threat models (what the attacker sees) and defense stages, on tiny float cases."""

from __future__ import annotations

import pytest
import torch

from fedsim.attacks.defenses import (DefenseConfig, apply_defense, clip_update, dp_epsilon,
                                     prune_layers)
from fedsim.attacks.observations import fedavg_update, fedsgd_gradient, observe, secure_sum
from fedsim.core.params import ParamSpec
from fedsim.data import Split
from fedsim.local.reference import Job, train_cohort
from fedsim.models import build_model


def _setup(n=4, seed=0):
    model = build_model("mlp", (1, 6, 6), 5, seed=seed)
    spec = ParamSpec.of(model)
    params = spec.flatten(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    return model, spec, params, x, y


def test_fedsgd_gradient_is_minus_one_step_update_over_lr():
    model, spec, params, x, y = _setup()
    lr = 0.1
    deltas, _ = train_cohort(model, spec, params, [Job(0, torch.arange(4), 1, lr, 4, 0)], Split(x, y))
    g = fedsgd_gradient(model, params, x, y)
    # float32 cancellation in w - (w - lr g) limits agreement to ~1e-6 absolute
    assert torch.allclose(g, -deltas[0] / lr, atol=2e-5)


def test_fedavg_update_reuses_the_reference_trainer():
    model, spec, params, x, y = _setup()
    ours = fedavg_update(model, params, x, y, local_steps=3, lr=0.05, batch_size=2, seed=7)
    ref, _ = train_cohort(model, spec, params, [Job(0, torch.arange(4), 3, 0.05, 2, 7)], Split(x, y))
    assert torch.equal(ours, ref[0])


def test_secure_sum_and_secagg_gradient_view_is_the_mean_gradient():
    model, spec, params, x, y = _setup(n=6)
    updates = torch.randn(3, 7)
    assert torch.allclose(secure_sum(updates), updates.sum(0))
    clients = [(x[2 * k:2 * k + 2], y[2 * k:2 * k + 2]) for k in range(3)]
    obs = observe(model, params, clients, lr=0.1, local_steps=1, local_batch_size=0, view="gradient",
                  defense=DefenseConfig(name="secagg", clients=3), gen=torch.Generator(), seed=0)
    expected = sum(fedsgd_gradient(model, params, cx, cy) for cx, cy in clients) / 3
    assert obs.threat == "T3/T1" and obs.num_samples == 6 and obs.num_clients == 3
    assert torch.allclose(obs.value, expected, atol=1e-6)
    assert obs.clip_norm is None and obs.mask is None


def test_update_view_of_multi_step_training():
    model, spec, params, x, y = _setup()
    obs = observe(model, params, [(x, y)], lr=0.05, local_steps=4, local_batch_size=0, view="update",
                  defense=DefenseConfig(), gen=torch.Generator(), seed=0)
    assert obs.threat == "T2" and obs.kind == "update" and obs.local_steps == 4
    assert torch.equal(obs.value, fedavg_update(model, params, x, y, local_steps=4, lr=0.05,
                                                batch_size=0, seed=obs_seed()))


def obs_seed():
    from fedsim.local.reference import job_seed
    return job_seed(0, 0, 0)


def test_clip_bounds_the_norm_and_leaves_small_updates_alone():
    u = torch.tensor([3.0, 4.0])
    assert torch.allclose(clip_update(u, 1.0), u / 5)
    assert torch.equal(clip_update(u, 10.0), u)


def test_dp_noise_zero_equals_clipping_and_noise_std_is_z_times_c():
    spec = ParamSpec(("w",), ((20_000,),))
    u = torch.randn(20_000, generator=torch.Generator().manual_seed(0))
    quiet, _, _ = apply_defense(u, DefenseConfig(name="dp", clip=2.0, noise_multiplier=0.0), spec,
                                torch.Generator())
    assert torch.equal(quiet, clip_update(u, 2.0))
    noisy, mask, _ = apply_defense(u, DefenseConfig(name="dp", clip=2.0, noise_multiplier=0.5), spec,
                                   torch.Generator().manual_seed(1))
    assert mask is None
    std = float((noisy - clip_update(u, 2.0)).std())
    assert std == pytest.approx(1.0, rel=0.02)  # z * C = 1.0; 20k draws: sampling error ~0.5%


def test_top_k_and_ef21_first_message_send_the_same_support():
    spec = ParamSpec(("w",), ((200,),))
    u = torch.randn(200, generator=torch.Generator().manual_seed(2))
    sent, mask, _ = apply_defense(u, DefenseConfig(name="top-k", density=0.05), spec, torch.Generator())
    assert int(mask.sum()) == 10 and torch.equal(sent[mask], u[mask])
    assert float(u[~mask].abs().max()) <= float(u[mask].abs().min())
    ef, ef_mask, state = apply_defense(u, DefenseConfig(name="ef21", density=0.05), spec, torch.Generator())
    assert torch.equal(ef, sent) and torch.equal(state, sent)  # g_i starts at 0


def test_pruning_is_per_tensor():
    spec = ParamSpec(("a", "b"), ((4,), (4,)))
    u = torch.tensor([1.0, -2.0, 3.0, 0.5, 10.0, 20.0, -30.0, 40.0])
    out = prune_layers(u, spec, 0.5)
    assert out.tolist() == [0.0, -2.0, 3.0, 0.0, 0.0, 0.0, -30.0, 40.0]


def test_dp_epsilon_decreases_with_noise():
    assert dp_epsilon(1.0, 1e-5) < dp_epsilon(0.5, 1e-5) < dp_epsilon(0.1, 1e-5)
    assert dp_epsilon(1.0, 1e-5) == pytest.approx(4.8, abs=0.5)  # analytic Gaussian ~4.4-5 at z=1


def _privacy_importable() -> bool:
    try:
        import fedsim.privacy  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_privacy_importable(), reason="fedsim.privacy is importable: dp-mf is wired")
def test_dp_mf_defense_says_what_it_needs():
    model, spec, params, x, y = _setup()
    with pytest.raises(NotImplementedError, match="needs fedsim.privacy"):
        observe(model, params, [(x, y)], lr=0.1, local_steps=1, local_batch_size=0, view="update",
                defense=DefenseConfig(name="dp-mf", noise_multiplier=0.1), gen=torch.Generator(), seed=0)


@pytest.mark.skipif(not _privacy_importable(), reason="fedsim.privacy (DP-MF noise) is not in this tree")
def test_dp_mf_third_party_sees_clipped_sum_plus_stream_noise():
    from fedsim.privacy import NoiseStream, ParticipationSchema, noise_std, plan_factorization

    model, spec, params, x, y = _setup()
    defense = DefenseConfig(name="dp-mf", clip=0.05, noise_multiplier=0.3, mechanism="tree", rounds=8, round=2)
    gen = torch.Generator().manual_seed(4)
    obs = observe(model, params, [(x, y)], lr=0.1, local_steps=1, local_batch_size=0, view="update",
                  defense=defense, gen=gen, seed=0)
    assert obs.threat == "T4/T1"
    stream_seed = int(torch.randint(0, 2 ** 62, (1,), generator=torch.Generator().manual_seed(4)))
    f = plan_factorization("tree", ParticipationSchema.single(8))
    stream = NoiseStream(f, dim=spec.dim, seed=stream_seed,
                         std=noise_std(0.3, 0.05, f.sensitivity().value))
    noise = [stream.next() for _ in range(3)][-1]
    clipped = clip_update(-0.1 * fedsgd_gradient(model, params, x, y), 0.05)
    assert torch.allclose(obs.value, clipped + noise, atol=1e-6)


def test_dp_sgd_defense_is_private_training_that_reduces_to_sgd_without_noise_or_clipping():
    from fedsim.attacks.observations import dp_sgd_update, fedavg_update
    from fedsim.models import build_model

    model = build_model("logreg", (6,), 3, seed=0)
    spec = ParamSpec.of(model)
    params = spec.flatten(model.state_dict())
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 6, generator=g), torch.randint(3, (4,), generator=g)
    plain = fedavg_update(model, params, x, y, local_steps=2, lr=0.1, batch_size=0, seed=1)
    private = dp_sgd_update(model, params, x, y, local_steps=2, lr=0.1, batch_size=0, clip=1e6, noise_multiplier=0.0,
                            seed=1)
    assert torch.allclose(private, plain, atol=1e-6)  # q = 1, no clipping, no noise: plain full-batch SGD
    noisy = [dp_sgd_update(model, params, x, y, local_steps=2, lr=0.1, batch_size=0, clip=0.5, noise_multiplier=1.0,
                           seed=1) for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.allclose(noisy[0], plain, atol=1e-3)  # seeded noise
