"""The imprint (binning) attack of a malicious server: "Robbing the Fed", Fowl et al., ICLR 2022,
arXiv 2110.13057 -- an active attacker that secure aggregation does not stop.

The server sends a model whose first block is an *imprint module*: a linear layer of k neurons
that all measure the same statistic of the input, ``m(x) = mean of its values`` (row weights
``1/d``), with biases ``-t_1 > ... > -t_k`` at k quantiles of m over public data of the same kind
(the attacker's prior), then ReLU, then a linear layer whose k input columns are all equal, so each
sample's backpropagated signal ``c_j`` is the same at every imprint neuron it activates. Neuron i
fires for the samples with ``m(x_j) > t_i``, so its weight and bias gradients are
``sum_{m_j > t_i} c_j x_j`` and ``sum_{m_j > t_i} c_j``: nested sums. Consecutive differences
isolate the samples whose measurement falls in bin ``(t_i, t_{i+1}]``, and
``(dW_i - dW_{i+1}) / (db_i - db_{i+1})`` is exactly that sample when it is alone in its bin. The
gradients are linear in the batch, so a secure aggregate of many clients is one larger batch: every
image alone in its bin is recovered whatever the aggregation (Sec. 4). The paper's details kept:
the brightness measurement, quantile bins from a prior, equal downstream weights; ours: the
downstream block is a single linear classifier, and the observation is FedSGD's gradient (T1/T3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.params import ParamSpec
from ..inversion.observation import Observation

__all__ = ["ImprintConfig", "imprint", "imprint_model"]


@dataclass(frozen=True)
class ImprintConfig:
    model: str = "imprint"   # the malicious model the server sends (built by imprint_model)
    bins: int = 128          # imprint neurons k: how many images can be separated at most


def imprint_model(input_shape: tuple, num_classes: int, bins: int, prior_inputs: torch.Tensor,
                  seed: int) -> nn.Module:
    """The malicious model: Flatten, imprint Linear(d, k) + ReLU, Linear(k, classes) with equal columns.

    ``prior_inputs [n, *input_shape]`` (model-input space) give the bin thresholds: the
    (i / (k + 1))-quantiles of their mean value."""
    d = math.prod(input_shape)
    imprint_layer, head = nn.Linear(d, bins), nn.Linear(bins, num_classes)
    measure = prior_inputs.flatten(1).double().mean(1)
    levels = torch.arange(1, bins + 1, dtype=torch.float64) / (bins + 1)
    thresholds = torch.quantile(measure, levels).float()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        imprint_layer.weight.fill_(1.0 / d)
        imprint_layer.bias.copy_(-thresholds)
        column = torch.randn(num_classes, 1, generator=gen) / math.sqrt(bins)
        head.weight.copy_(column.expand(num_classes, bins))
        head.bias.zero_()
    return nn.Sequential(nn.Flatten(), imprint_layer, nn.ReLU(), head)


def imprint(model: nn.Module, obs: Observation, *, input_shape: tuple, rel_tol: float = 1e-6
            ) -> tuple[torch.Tensor, dict]:
    """Every bin's recovered input ``[r, *input_shape]`` (model-input space) from a gradient
    observation of ``imprint_model`` (one client's, or a secure sum's)."""
    if obs.kind != "gradient":
        raise ValueError("the imprint attack reads a gradient observation (FedSGD, local_steps = 1)")
    named = ParamSpec.of(model).unflatten(obs.value)
    g_w, g_b = named["1.weight"].double(), named["1.bias"].double()  # [k, d], [k]
    order = torch.argsort(model[1].bias.detach(), descending=True)     # thresholds ascending
    g_w, g_b = g_w[order], g_b[order]
    zero_w, zero_b = torch.zeros_like(g_w[:1]), torch.zeros_like(g_b[:1])
    d_w = g_w - torch.cat([g_w[1:], zero_w])                          # the samples of bin i alone
    d_b = g_b - torch.cat([g_b[1:], zero_b])
    keep = d_b.abs() > rel_tol * g_b.abs().max().clamp_min(1e-30)
    if not bool(keep.any()):
        raise ValueError("the imprint attack recovered nothing: the observed imprint-layer bias gradient is all "
                         "zero (e.g. dropped by top-k), so no bin isolates an image")
    x = (d_w[keep] / d_b[keep, None]).float()
    return x.reshape(-1, *input_shape), {"bins_used": int(keep.sum())}
