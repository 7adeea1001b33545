"""Small CPU models used by the simulator.

All models are deterministic to train: no BatchNorm, no dropout. Initialisation draws from
torch's CPU generator; pass ``seed`` to :func:`build_model` to make it reproducible without
touching the caller's global RNG state.
"""
from __future__ import annotations

import math
import threading

import torch
from torch import nn

__all__ = ["MODELS", "CharLSTM", "build_model", "seeded"]

MODELS = ("logreg", "mlp", "lenet", "cnn", "char-lstm")
_SEEDED = threading.Lock()  # the CPU generator is process-global: one seeded build at a time


def build_model(name: str, input_shape: tuple, num_classes: int, *,
                vocab_size: int | None = None, seed: int | None = None) -> nn.Module:
    """Build model ``name`` (one of :data:`MODELS`) for samples of shape ``input_shape``.

    * ``logreg`` -- flatten + Linear.
    * ``mlp`` -- flatten, Linear 200, ReLU, Linear 200, ReLU, Linear.
    * ``lenet`` -- conv5(16)-ReLU-pool2-conv5(32)-ReLU-pool2-FC 160-ReLU-FC, no padding; the FC
      input is found by a dummy forward (512 for 28x28). Inputs smaller than 16x16 (e.g. 8x8
      digits) raise ``ValueError``: use ``cnn`` there.
    * ``cnn`` -- FedAU's MNIST model (IBM/fedau ``model/cnn_mnist.py``): conv3(32, pad 1)-ReLU-
      pool2, twice, then FC 128-ReLU-FC, Kaiming-normal init (ReLU gain) with zero biases on the
      convs and the hidden FC. Works for any H, W >= 4 (8x8 digits included).
    * ``char-lstm`` -- LEAF's Shakespeare model: Embedding(vocab, 8), 2-layer LSTM 256, Linear to
      ``num_classes`` on the last step; input int64 codes [n, T]. Needs ``vocab_size``.

    With ``seed`` given, construction runs under ``torch.random.fork_rng`` (CPU only) seeded with
    ``seed``: the same seed gives the same weights and the caller's RNG state is unchanged
    (seeded builds in several threads, e.g. in-thread gRPC nodes, take turns).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    input_shape = tuple(int(s) for s in input_shape)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return seeded(seed, lambda: _BUILDERS[name](input_shape, num_classes, vocab_size))


def seeded(seed: int | None, build):
    """``build()`` under torch's CPU generator seeded with ``seed`` (None: unseeded), leaving the
    caller's RNG state as it was; also used for models from a user's factory."""
    if seed is None:
        return build()
    with _SEEDED, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would also reseed CUDA
        return build()


def _flat(shape: tuple) -> int:
    return math.prod(shape)


def _logreg(shape: tuple, classes: int, _vocab) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat(shape), classes))


def _mlp(shape: tuple, classes: int, _vocab) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat(shape), 200), nn.ReLU(),
                         nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, classes))


def _image_shape(name: str, shape: tuple) -> tuple:
    if len(shape) != 3:
        raise ValueError(f"{name} needs an image input_shape (C, H, W), got {shape}")
    return shape


def _features_out(features: nn.Module, shape: tuple, name: str) -> int:
    """Flattened size of ``features`` on one dummy sample (no RNG used)."""
    try:
        with torch.no_grad():
            return features(torch.zeros(1, *shape)).numel()
    except RuntimeError as e:
        raise ValueError(f"{name} cannot take input_shape {shape}: {e}") from None


def _lenet(shape: tuple, classes: int, _vocab) -> nn.Module:
    c, h, w = _image_shape("lenet", shape)
    if min(h, w) < 16:
        raise ValueError(f"lenet needs H, W >= 16 (5x5 convs, no padding), got {shape}; "
                         "use 'cnn' or 'mlp' for small images")
    features = nn.Sequential(nn.Conv2d(c, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    flat = _features_out(features, shape, "lenet")
    return nn.Sequential(*features, nn.Linear(flat, 160), nn.ReLU(), nn.Linear(160, classes))


def _cnn(shape: tuple, classes: int, _vocab) -> nn.Module:
    c, h, w = _image_shape("cnn", shape)
    if min(h, w) < 4:
        raise ValueError(f"cnn needs H, W >= 4 (two 2x2 pools), got {shape}")
    features = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten())
    flat = _features_out(features, shape, "cnn")
    hidden = nn.Linear(flat, 128)
    for layer in (features[0], features[3], hidden):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*features, hidden, nn.ReLU(), nn.Linear(128, classes))


class CharLSTM(nn.Module):
    """Embedding(vocab, 8) -> LSTM(256, 2 layers) -> Linear on the last time step."""

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 8,
                 hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


def _char_lstm(shape: tuple, classes: int, vocab: int | None) -> nn.Module:
    if vocab is None or vocab < 1:
        raise ValueError(f"char-lstm needs vocab_size >= 1, got {vocab!r}")
    if len(shape) != 1:
        raise ValueError(f"char-lstm needs input_shape (T,), got {shape}")
    return CharLSTM(vocab, classes)


_BUILDERS = {"logreg": _logreg, "mlp": _mlp, "lenet": _lenet, "cnn": _cnn,
             "char-lstm": _char_lstm}
