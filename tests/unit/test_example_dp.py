"""Example-level DP (DP-SGD through Opacus) as an option of the client trainer."""

import pytest
import torch

from fedsim.core.params import ParamSpec
from fedsim.local.example_dp import example_epsilon, private_copy
from fedsim.models import build_model

from conftest import tiny_config
from helpers import train

DP = {"privacy.example_dp": True}


def test_no_noise_and_a_huge_clip_is_the_non_private_run():
    plain, _, _ = train(tiny_config(rounds=3))
    private, _, _ = train(tiny_config(rounds=3, **DP, **{"privacy.example_noise_multiplier": 0.0,
                                                         "privacy.example_clip_norm": 1e9}))
    assert torch.allclose(private, plain, atol=1e-5)


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


def test_every_output_names_the_minibatch_approximation(tmp_path):
    import json

    from fedsim.experiments.run import run_single
    from fedsim.experiments.setup import load

    raw = tiny_config(rounds=2, eval_every=2, **{"privacy.example_dp": True})
    summary = run_single(load(raw), tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for out in (summary, *rows):
        assert "accounted as Poisson" in out["example_sampling_scheme"] and "approximation" in out["example_sampling_scheme"]
        assert out["example_accountant"] == "rdp (opacus)"
    assert summary["example_epsilon"] == rows[-1]["dp/example_epsilon"] > 0
