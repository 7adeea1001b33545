"""Gradients of a model at an explicit flat parameter vector (the attacker's and the victim's).

Attacks differentiate *through* a parameter gradient (double backprop), so parameters are passed
explicitly with ``torch.func.functional_call`` instead of living on the module: the same module
serves any ``params [D]`` without copies into ``state_dict`` and without touching its ``.grad``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from ..core.params import ParamSpec

__all__ = ["cross_entropy", "flat_grad", "local_update", "param_dict"]


def param_dict(spec: ParamSpec, params: torch.Tensor, *, requires_grad: bool = False
               ) -> dict[str, torch.Tensor]:
    """Named views of ``params [D]``; with ``requires_grad``, fresh leaves that autograd can
    differentiate with respect to (the flat vector itself stays untouched)."""
    if requires_grad and not params.requires_grad:
        params = params.detach().clone().requires_grad_(True)
    return spec.unflatten(params)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; ``target`` is int64 labels ``[n]`` or label probabilities ``[n, C]``."""
    if target.dtype == torch.int64:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def flat_grad(model: nn.Module, spec: ParamSpec, params: torch.Tensor, x: torch.Tensor,
              target: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """Gradient ``[D]`` of the mean cross-entropy on ``(x, target)`` at ``params [D]``.

    If ``params`` requires grad (e.g. a surrogate depending on a learned alpha) the result is
    differentiable with respect to it too when ``create_graph`` is set."""
    leaf = params if params.requires_grad else params.detach().clone().requires_grad_(True)
    named = spec.unflatten(leaf)
    buffers = {name for name, _ in model.named_buffers()}
    if buffers:  # BatchNorm in train mode updates its running statistics in place: give it copies, not the leaf
        named = {k: v.detach().clone() if k in buffers else v for k, v in named.items()}
    loss = cross_entropy(functional_call(model, named, (x,)), target)
    (g,) = torch.autograd.grad(loss, leaf, create_graph=create_graph)
    return g


def local_update(model: nn.Module, spec: ParamSpec, params: torch.Tensor, x: torch.Tensor, target: torch.Tensor,
                 *, steps: int, lr: float, batch_size: int, create_graph: bool = False) -> torch.Tensor:
    """A client's local SGD replayed on ``(x, target)``: ``w_K - params`` after ``steps`` steps of size
    ``lr`` on minibatches of ``min(batch_size, n)`` rows taken in a fixed cyclic order.

    With ``create_graph`` the result is differentiable with respect to ``x`` and ``target`` (the
    unrolled FedAvg attack and staleness repair optimise through it)."""
    n = x.shape[0]
    b = min(batch_size or n, n)
    w = params
    for s in range(steps):
        idx = torch.arange(s * b, s * b + b) % n
        w = w - lr * flat_grad(model, spec, w, x[idx], target[idx], create_graph=create_graph)
    return w - params
