"""A user's own model, dataset and strategy, named by import string in tests (the README's
plug-in examples follow these)."""

import numpy as np
from torch import nn

from fedsim.strategies import FedAvgStrategy


def tiny_mlp(input_shape: tuple, num_classes: int) -> nn.Module:
    """model.name = "user_plugins:tiny_mlp"."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 16), nn.ReLU(), nn.Linear(16, num_classes))


def blobs(seed: int) -> dict:
    """data.name = "user_plugins:blobs": 3 Gaussian blobs in 6-D, 12 natural clients."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 6)) * 3

    def draw(n):
        y = rng.integers(0, 3, size=n)
        return (centers[y] + rng.normal(size=(n, 6))).astype(np.float32), y

    x_train, y_train = draw(480)
    x_test, y_test = draw(120)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "client_ids": np.arange(480) % 12}


def not_a_dict(seed: int):
    return [1, 2, 3]


class ScaledFedAvg(FedAvgStrategy):
    """strategy.name = "user_plugins:ScaledFedAvg" with [strategy.args] scale = ...: FedAvg whose
    aggregated direction is multiplied by ``scale``."""

    name = "scaled-fedavg"

    def __init__(self, participation, *, scale: float = 1.0, **kw):
        super().__init__(participation, weighting="uniform", **kw)
        self.scale = float(scale)

    def server_update(self, server_round, params, cohort, state, noise=None):
        new, state, metrics = super().server_update(server_round, params, cohort, state, noise)
        return params + self.scale * (new - params), state, {**metrics, "scaled/scale": self.scale}
