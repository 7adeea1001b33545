"""Byzantine clients ([adversary]) and the norm-bounding defense: who attacks, what they send or train
on, the attack success rate in the outputs, and the settings refused by name."""

import numpy as np
import pytest
import torch

from fedsim.config import ConfigError
from fedsim.data.datasets import Split
from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load as load_config
from fedsim.local.adversary import Adversary
from fedsim.stages import NormBound
from fedsim.strategies.replies import Cohort

from conftest import tiny_config
from helpers import train


def _adv(behaviour, fraction=0.25, n=8, **kw):
    return Adversary.choose(behaviour, fraction, n, seed=1, num_classes=4, **kw)


def test_a_seeded_fraction_of_clients_attacks():
    a, b = _adv("sign-flip"), _adv("sign-flip")
    assert len(a.clients) == 2 and np.array_equal(a.clients, b.clients)
    assert [a.is_malicious(c) for c in range(8)].count(True) == 2
    assert _adv("none") is None and _adv("scale", fraction=0.01) is None  # round(0.08) = 0 clients


@pytest.mark.parametrize("behaviour", ["sign-flip", "scale", "noise"])
def test_model_poisoning_changes_only_what_malicious_clients_send(behaviour):
    adv = _adv(behaviour, scale=5.0, noise_std=0.5)
    bad, good = int(adv.clients[0]), next(c for c in range(8) if not adv.is_malicious(c))
    delta = torch.randn(20)
    assert torch.equal(adv.tamper(good, delta, seed=3), delta)
    sent = adv.tamper(bad, delta, seed=3)
    expected = {"sign-flip": -delta, "scale": 5.0 * delta}.get(behaviour)
    if expected is not None:
        assert torch.equal(sent, expected)
    else:  # Gaussian noise instead of the update, reproducible from the job's seed
        assert torch.equal(sent, adv.tamper(bad, delta, seed=3)) and not torch.allclose(sent, delta)
        assert 0.3 < float(sent.std()) < 0.7


def test_a_boosted_backdoor_sends_its_poisoned_update_times_the_boost():
    adv = _adv("backdoor", boost=5.0)
    delta = torch.randn(20)
    assert torch.equal(adv.tamper(int(adv.clients[0]), delta, seed=0), 5.0 * delta)
    assert torch.equal(_adv("label-flip").tamper(int(adv.clients[0]), delta, seed=0), delta)


def test_data_poisoning_touches_only_the_malicious_clients_rows():
    x, y = torch.rand(80, 1, 6, 6), torch.arange(80) % 4
    parts = [np.arange(i * 10, (i + 1) * 10) for i in range(8)]
    flip = _adv("label-flip").poison(Split(x, y), parts)
    door = _adv("backdoor", poison_fraction=0.5, target_label=2, pattern_size=2).poison(Split(x, y), parts)
    bad = np.concatenate([parts[c] for c in _adv("label-flip").clients])
    good = np.setdiff1d(np.arange(80), bad)
    fx, fy = flip.take(torch.arange(80))
    assert torch.equal(fy[bad], 3 - y[bad]) and torch.equal(fy[good], y[good]) and torch.equal(fx, x)
    dx, dy = door.take(torch.arange(80))
    stamped = (dx[:, :, -2:, -2:] == x.max()).flatten(1).all(1)
    assert int(stamped[bad].sum()) == 10 and not stamped[good].any()  # half of each malicious client's rows
    assert (dy[stamped] == 2).all() and torch.equal(dx[good], x[good]) and torch.equal(dy[good], y[good])


def test_a_backdoor_run_reports_attack_success_and_the_defense_clips(tmp_path):
    raw = tiny_config(**{"adversary": {"behaviour": "backdoor", "fraction": 0.25}, "eval_every": 1})
    summary = run_single(load_config(raw), tmp_path / "a", progress=False)
    assert 0 <= summary["final_attack_success"] <= 1 and summary["adversary"]["malicious_clients"] == 2
    bounded = run_single(load_config({**raw, "defense": {"norm_bound": 0.05}}), tmp_path / "b", progress=False)
    assert bounded["final_accuracy"] != summary["final_accuracy"]
    assert '"defense/clipped"' in (tmp_path / "b" / "metrics.jsonl").read_text()


def test_norm_bounding_scales_long_updates_down_to_the_bound():
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    cohort = Cohort(torch.tensor([0, 1]), updates, torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.int64),
                    torch.ones(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    metrics = {}
    out, noise = NormBound(1.0).before(1, cohort, metrics)
    assert noise is None and metrics["defense/clipped"] == 1
    assert torch.allclose(out.updates, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


def test_a_scaled_attack_is_blunted_by_the_median_and_by_norm_bounding():
    """2 of 8 clients send 100x their update; every client answers every round. How far each rule's
    model moves from the same rule's model without the attack."""
    full = {"participation": {"name": "full"}}
    attack = {"adversary": {"behaviour": "scale", "fraction": 0.25, "scale": 100.0}}

    def shift(**rule):
        clean, _, _ = train(tiny_config(**full, **rule))
        attacked, _, _ = train(tiny_config(**full, **attack, **rule))
        return float((attacked - clean).norm())

    plain = shift()
    assert shift(**{"strategy.name": "fedmedian"}) < plain / 10
    assert shift(**{"defense.norm_bound": 0.5}) < plain / 10


@pytest.mark.parametrize("over,key", [
    ({"adversary": {"behaviour": "worm", "fraction": 0.2}}, "adversary.behaviour"),
    ({"adversary": {"fraction": 0.2}}, "adversary.behaviour"),
    ({"adversary": {"behaviour": "scale"}}, "adversary.fraction"),
    ({"adversary": {"behaviour": "sign-flip", "fraction": 0.2, "scale": 3.0}}, "adversary.scale"),
    ({"adversary": {"behaviour": "noise", "fraction": 0.2, "boost": 3.0}}, "adversary.boost"),
    ({"adversary": {"behaviour": "backdoor", "fraction": 0.2, "target_label": 9}}, "target_label"),
    ({"defense": {"norm_bound": 1.0}, "strategy.name": "ef21", "compression": {"name": "top-k", "density": 0.2}},
     "defense.norm_bound"),
    ({"defense": {"norm_bound": 1.0}, "strategy.name": "flwr:FedAvg"}, "defense.norm_bound"),
])
def test_adversary_and_defense_mistakes_name_the_key(over, key, tmp_path):
    with pytest.raises(ConfigError, match=key):
        run_single(load_config(tiny_config(**over)), tmp_path, progress=False)
