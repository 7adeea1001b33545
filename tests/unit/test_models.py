"""Tests for fedsim.models.zoo."""
from __future__ import annotations

import pytest
import torch

from fedsim.models import MODELS, build_model

CASES = [  # name, input_shape, num_classes, vocab_size
    ("logreg", (1, 8, 8), 10, None),
    ("logreg", (40,), 10, None),
    ("mlp", (1, 28, 28), 10, None),
    ("lenet", (1, 28, 28), 10, None),
    ("lenet", (3, 32, 32), 10, None),
    ("cnn", (1, 28, 28), 10, None),
    ("cnn", (1, 8, 8), 10, None),
    ("cnn", (3, 32, 32), 10, None),
    ("char-lstm", (80,), 73, 73),
]


def _input(shape, vocab, n=4):
    g = torch.Generator().manual_seed(0)
    if vocab is not None:
        return torch.randint(0, vocab, (n, *shape), generator=g)
    return torch.randn(n, *shape, generator=g)


def _nparams(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name, shape, classes, vocab", CASES)
def test_forward_shape(name, shape, classes, vocab):
    m = build_model(name, shape, classes, vocab_size=vocab, seed=0)
    out = m(_input(shape, vocab))
    assert out.shape == (4, classes) and out.dtype == torch.float32
    assert not any(isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.Dropout)) for mod in m.modules())


def test_all_models_covered():
    assert set(MODELS) == {c[0] for c in CASES}


def test_param_counts():
    assert _nparams(build_model("lenet", (1, 28, 28), 10)) == 96_938  # 416+12,832+82,080+1,610
    assert _nparams(build_model("logreg", (1, 28, 28), 10)) == 7_850
    assert _nparams(build_model("mlp", (1, 28, 28), 10)) == 784 * 200 + 200 + 200 * 200 + 200 + 2010
    assert _nparams(build_model("cnn", (1, 28, 28), 10)) == 320 + 9_248 + 1568 * 128 + 128 + 1_290


def test_lenet_rejects_small_images():
    with pytest.raises(ValueError, match="lenet"):
        build_model("lenet", (1, 8, 8), 10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="known: logreg"):
        build_model("resnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model("char-lstm", (80,), 73)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("cnn", (64,), 10)


@pytest.mark.parametrize("name, shape, classes, vocab", [CASES[2], CASES[5], CASES[8]])
def test_seed_is_deterministic_and_leaves_global_rng(name, shape, classes, vocab):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = build_model(name, shape, classes, vocab_size=vocab, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model(name, shape, classes, vocab_size=vocab, seed=5)
    c = build_model(name, shape, classes, vocab_size=vocab, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_no_seed_uses_global_rng():
    torch.manual_seed(0)
    a = build_model("mlp", (10,), 3)
    torch.manual_seed(0)
    b = build_model("mlp", (10,), 3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
