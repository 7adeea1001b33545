"""Analytic inversion of a first fully connected layer with bias (attack A5).

For ``z = W x + b`` and one sample, ``dL/dW_i = (dL/dz_i) x`` and ``dL/db_i = dL/dz_i``, so every
row with a non-zero bias gradient gives ``x = dW_i / db_i`` exactly (Phong et al., IEEE TIFS 2018,
"Privacy-preserving deep learning via additively homomorphic encryption", Sec. 3; Geiping et al.
2020, arXiv 2003.14053, Prop. 3.1). fedsim takes the least-squares combination over all rows,
``x = sum_i db_i dW_i / sum_i db_i^2``, which is the same point in exact arithmetic and averages
out rounding. With a batch of B > 1 samples each row is a mixture of the B inputs (the basis of
CPA); the attack then returns the rows with the B largest |db_i| -- mixtures, scored as such.
The attack needs the model's first layer to be linear on the flattened input (``mlp``, ``logreg``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.params import ParamSpec
from ..inversion.layers import first_linear
from ..inversion.observation import Observation

__all__ = ["analytic_fc"]


def analytic_fc(model: nn.Module, obs: Observation, *, input_shape: tuple) -> torch.Tensor:
    """Inputs ``[k, *input_shape]`` (model-input space) read off the first linear layer's
    gradient: k = 1 (exact) for one sample, else ``min(num_samples, rows)`` single-row ratios."""
    if obs.kind != "gradient":
        raise ValueError("the analytic attack reads a gradient observation")
    wname, bname = first_linear(model)
    named = ParamSpec.of(model).unflatten(obs.value)
    dw, db = named[wname].double(), named[bname].double()
    if dw.shape[1] != math.prod(input_shape):
        raise ValueError(f"the first linear layer takes {dw.shape[1]} inputs, not the flattened "
                         f"input {tuple(input_shape)}: the analytic attack needs a leading FC layer")
    if obs.num_samples == 1:
        denom = (db ** 2).sum()
        if denom == 0:
            return torch.zeros(1, *input_shape)
        x = (db[:, None] * dw).sum(0) / denom
        return x.float().reshape(1, *input_shape)
    k = min(obs.num_samples, len(db))
    rows = torch.sort(db.abs(), descending=True, stable=True).indices[:k]
    safe = torch.where(db[rows] == 0, torch.ones_like(db[rows]), db[rows])
    return (dw[rows] / safe[:, None]).float().reshape(k, *input_shape)
