"""Label recovery from the last layer's gradient (the first step of every inversion).

* :func:`idlg_label` -- iDLG (Zhao, Mopuri, Bilen 2020, arXiv 2001.02610, Sec. 3.1): with softmax
  cross-entropy and one sample, the logit gradient is ``p - onehot(y)``, negative only at the true
  class; with non-negative penultimate activations (sigmoid, ReLU) the true class's row of the
  last weight gradient is the only one with a negative sum. Exact at batch size 1.
* :func:`count_labels` -- batch label counts from the last bias gradient, in the spirit of LLG
  (Wainakh et al., arXiv 2111.05833): for the mean loss over n samples,
  ``g_b[c] = mean_i p_ic - n_c / n``, so ``n_c ~ n (pbar_c - g_b[c])``; ``pbar`` is estimated
  from the model's mean softmax on random dummy inputs at the observed parameters, and the counts
  are rounded to sum to n by largest remainder. Approximate; exact when pbar is. When the scale
  of the gradient is unknown -- a multi-step update, whose mean gradient shrinks as the client
  fits its data, or a clipped message -- it is calibrated on the classes with a positive bias
  gradient (taken as absent, so ``g_b[c] = k pbar_c`` there).

Both read the gradient from an :class:`~fedsim.inversion.observation.Observation`: a gradient view
directly, an update view as ``-update / (lr * steps)`` (the attacker knows lr and the step count).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..core.params import ParamSpec
from .layers import last_linear
from .observation import Observation

__all__ = ["count_labels", "idlg_label", "last_layer_gradient", "recover_labels"]


def last_layer_gradient(model: nn.Module, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dW [C, H], db [C])`` of the last linear layer, read as a gradient."""
    spec = ParamSpec.of(model)
    named = spec.unflatten(obs.value)
    wname, bname = last_linear(model)
    scale = 1.0 if obs.kind == "gradient" else -1.0 / (obs.lr * obs.local_steps)
    return named[wname] * scale, named[bname] * scale


def idlg_label(model: nn.Module, obs: Observation) -> int:
    """iDLG's rule: the class whose last-layer weight-gradient row has the smallest sum."""
    dw, _ = last_layer_gradient(model, obs)
    return int(torch.argmin(dw.sum(dim=1)))


def count_labels(model: nn.Module, obs: Observation, input_shape: tuple, gen: torch.Generator,
                 *, probes: int = 64) -> torch.Tensor:
    """``obs.num_samples`` labels (sorted, on the CPU) from the bias-gradient count estimate."""
    n = obs.num_samples
    _, db = last_layer_gradient(model, obs)
    spec = ParamSpec.of(model)
    with torch.no_grad():  # probes drawn on the CPU generator: the same labels on every device
        dummy = torch.randn(probes, *input_shape, generator=gen).to(obs.params.device)
        pbar = torch.softmax(functional_call(model, spec.unflatten(obs.params), (dummy,)), -1).mean(0).cpu()
    db = db.detach().cpu()
    k = 1.0
    if obs.kind != "gradient" or obs.clip_norm is not None:
        pos = db > 0
        if pos.any() and float(pbar[pos].sum()) > 0:
            k = float(db[pos].sum() / pbar[pos].sum())
    est = (n * (pbar - db / k)).clamp_min(0).double()
    if est.sum() <= 0:
        est = torch.ones_like(est)
    est = est * (n / est.sum())
    counts = est.floor().long()
    rest = n - int(counts.sum())
    if rest > 0:
        order = torch.sort(est - counts, descending=True, stable=True).indices
        counts[order[:rest]] += 1
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


def recover_labels(model: nn.Module, obs: Observation, input_shape: tuple, gen: torch.Generator
                   ) -> torch.Tensor:
    """iDLG at one sample, bias-gradient counts otherwise: int64 ``[num_samples]``."""
    if obs.num_samples == 1:
        return torch.tensor([idlg_label(model, obs)], dtype=torch.int64)
    return count_labels(model, obs, input_shape, gen)
