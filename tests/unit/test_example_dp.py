"""Example-level DP (DP-SGD through Opacus) as an option of the client trainer."""

import dp_accounting
import pytest
import torch
from dp_accounting import rdp
from torch.nn import functional as F

from fedsim.core.params import ParamSpec
from fedsim.local.example_dp import (ExampleDP, example_epsilon, poisson_minibatches, private_copy,
                                     train_cohort_dp)
from fedsim.local.reference import Job
from fedsim.models import build_model

from conftest import tiny_config
from helpers import train

DP = {"privacy.example_dp": True}


def test_no_noise_and_a_huge_clip_is_the_non_private_run():
    """Shuffled fixed-size minibatches are the non-private trainer's own minibatches."""
    plain, _, _ = train(tiny_config(rounds=3))
    private, _, _ = train(tiny_config(rounds=3, **DP, **{"privacy.example_noise_multiplier": 0.0,
                                                         "privacy.example_clip_norm": 1e9,
                                                         "privacy.example_sampling": "shuffle"}))
    assert torch.allclose(private, plain, atol=1e-5)


class _Rows:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def take(self, idx):
        return self.x[idx], self.y[idx]


def test_poisson_steps_without_noise_are_sgd_on_the_poisson_batches():
    """Noise 0 + unbounded clip: each step is -lr * (sum of the batch's gradients) / (q n_i), on the
    batches Poisson sampling drew (every example in with probability q, sizes vary, empty allowed)."""
    gen = torch.Generator().manual_seed(0)
    data = _Rows(torch.randn(40, 10, generator=gen), torch.randint(0, 4, (40,), generator=gen))
    model = build_model("logreg", (10,), 4, seed=0)
    spec = ParamSpec.of(model)
    start = spec.flatten(model.state_dict())
    job = Job(0, torch.arange(40), local_steps=6, lr=0.5, batch_size=2, seed=123)  # q = 0.05: some empty batches
    delta, _ = train_cohort_dp(private_copy(model), spec, start, [job], data,
                               ExampleDP(noise_multiplier=0.0, clip_norm=1e9, sampling="poisson"))
    batches = poisson_minibatches(job.indices, 6, 2, torch.Generator().manual_seed(123))
    assert any(b.numel() == 0 for b in batches) and len({b.numel() for b in batches}) > 1
    ref = build_model("logreg", (10,), 4, seed=0)
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for idx in batches:
        opt.zero_grad()
        if idx.numel():
            (F.cross_entropy(ref(data.x[idx]), data.y[idx], reduction="sum") / 2.0).backward()
            opt.step()
    assert torch.allclose(delta[0], spec.flatten(ref.state_dict()) - start, atol=1e-6)


def test_poisson_batches_have_the_expected_size():
    sizes = [b.numel() for b in poisson_minibatches(torch.arange(200), 2000, 16, torch.Generator().manual_seed(1))]
    assert sum(sizes) / len(sizes) == pytest.approx(16, rel=0.03) and min(sizes) < 12 < 20 < max(sizes)


@pytest.mark.parametrize("sigma,q,steps", [(1.0, 0.05, 300), (0.8, 0.2, 40)])
def test_opacus_poisson_accounting_matches_dp_accounting(sigma, q, steps):
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    reference = acc.get_epsilon(1e-5)
    # same RDP curve; the two libraries' orders and RDP -> (eps, delta) conversions differ slightly
    # (measured: Opacus 0.06-0.2% lower)
    assert example_epsilon(sigma, q, steps, 1e-5, "rdp") == pytest.approx(reference, rel=5e-3)
    assert example_epsilon(sigma, q, steps, 1e-5, "prv") <= reference  # PRV is the tighter of the two


def test_noise_is_seeded_and_changes_the_model():
    a, _, _ = train(tiny_config(rounds=2, **DP))
    b, _, _ = train(tiny_config(rounds=2, **DP))
    plain, _, _ = train(tiny_config(rounds=2))
    assert torch.equal(a, b)
    assert (a - plain).abs().max() > 1e-3


def test_reported_epsilon_is_the_worst_clients_opacus_epsilon():
    _, results, strategy = train(tiny_config(rounds=4, participation={"name": "full"}, **DP))
    eps = [r.metrics["dp/example_epsilon"] for r in results]
    assert all(b > a for a, b in zip(eps, eps[1:]))  # privacy spent grows every round
    steps = 4 * 3  # 4 rounds x 3 local steps, every client every round
    smallest = min(strategy.directory.num_examples.values())
    assert eps[-1] == pytest.approx(example_epsilon(1.0, 8 / smallest, steps, 1e-5))


def test_opacus_module_prefix_is_reconciled():
    model = build_model("mlp", (10,), 4, seed=0)
    spec = ParamSpec.of(model)
    wrapped = private_copy(model)
    assert all(k.startswith("_module.") for k in wrapped.state_dict())
    assert ParamSpec.of(wrapped) == spec
    assert torch.equal(spec.flatten(wrapped.state_dict()), spec.flatten(model.state_dict()))


@pytest.mark.parametrize("sampling,accountant,says", [
    ("shuffle", "rdp", "approximation"), ("poisson", "rdp", "poisson minibatches"), pytest.param("poisson", "prv", "poisson minibatches", marks=pytest.mark.slow)])  # ~4 s: the PRV accountant
def test_every_output_names_its_sampling_and_accountant(tmp_path, sampling, accountant, says):
    import json

    from fedsim.experiments.run import run_single
    from fedsim.experiments.setup import load

    raw = tiny_config(rounds=2, eval_every=2, **{"privacy.example_dp": True, "privacy.example_sampling": sampling,
                                                 "privacy.example_accountant": accountant})
    summary = run_single(load(raw), tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for out in (summary, *rows):
        assert says in out["example_sampling_scheme"] and out["example_accountant"] == f"{accountant} (opacus)"
    assert summary["example_epsilon"] == rows[-1]["dp/example_epsilon"] > 0
