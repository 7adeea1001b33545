"""Victim models for attacks: the foundation's zoo plus DLG's sigmoid LeNet.

``lenet-sigmoid`` is the model of DLG (Zhu, Liu, Han, NeurIPS 2019, arXiv 1906.08935; reference
``mit-han-lab/dlg`` ``models/vision.py``): three 5x5 convolutions with 12 channels (stride 2, 2,
1; padding 2), sigmoid after each, one linear layer, every weight and bias drawn from
U(-0.5, 0.5). Sigmoid is twice differentiable and keeps the penultimate activations positive,
which both DLG's optimisation and iDLG's label rule rely on. Everything else comes from
:func:`fedsim.models.build_model` (``mlp`` is the first-FC-layer model for the analytic attack and
CPA; ``cnn`` is the small ReLU CNN for IG and SME). ``cnn-sme`` is SME's ``CNNmnist`` (Zhu, Yao, Blaschko, ICML 2023; reference
``JunyiZhu-AI/surrogate_model_extension`` ``models/mnistCNN.py``): 3x3 convolutions with 32 and 64
channels (padding 1), ReLU, 2x2 average pooling after each, then FC 100, ReLU, FC to the classes;
PyTorch's default initialisation from the seed. ``cnn-bn`` is the same network with BatchNorm after
each convolution (ours, the BatchNorm model of the evaluation): victims and attacker run it in
train mode (batch statistics), and a multi-step update carries the running statistics' change.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import MODELS, build_model, seeded

__all__ = ["ATTACK_MODELS", "build_attack_model"]

ATTACK_MODELS = ("lenet-sigmoid", "cnn-sme", "cnn-bn") + tuple(m for m in MODELS if m != "char-lstm")


def build_attack_model(name: str, input_shape: tuple, num_classes: int, *, seed: int) -> nn.Module:
    """Build ``name`` (one of :data:`ATTACK_MODELS`) with weights drawn from ``seed``."""
    if name == "lenet-sigmoid":
        gen = torch.Generator().manual_seed(seed)
        return _lenet_sigmoid(tuple(int(s) for s in input_shape), num_classes, gen)
    if name in ("cnn-sme", "cnn-bn"):
        return seeded(seed, lambda: _cnn_sme(tuple(int(s) for s in input_shape), num_classes, bn=name == "cnn-bn"))
    if name not in ATTACK_MODELS:
        raise ValueError(f"unknown attack model {name!r}; known: {', '.join(ATTACK_MODELS)}")
    return build_model(name, input_shape, num_classes, seed=seed)


def _lenet_sigmoid(shape: tuple, classes: int, gen: torch.Generator) -> nn.Module:
    if len(shape) != 3:
        raise ValueError(f"lenet-sigmoid needs an image input_shape (C, H, W), got {shape}")
    c = shape[0]
    body = nn.Sequential(nn.Conv2d(c, 12, 5, padding=2, stride=2), nn.Sigmoid(),
                         nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
                         nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(), nn.Flatten())
    with torch.no_grad():
        flat = body(torch.zeros(1, *shape)).numel()
    model = nn.Sequential(*body, nn.Linear(flat, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
    return model


def _cnn_sme(shape: tuple, classes: int, bn: bool = False) -> nn.Module:
    if len(shape) != 3:
        raise ValueError(f"cnn-sme and cnn-bn need an image input_shape (C, H, W), got {shape}")

    def norm(channels: int) -> list:
        return [nn.BatchNorm2d(channels)] if bn else []

    body = nn.Sequential(nn.Conv2d(shape[0], 32, 3, padding=1), *norm(32), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), *norm(64), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten())
    body.eval()  # sizing pass: leave the fresh running statistics untouched
    with torch.no_grad():
        flat = body(torch.zeros(1, *shape)).numel()
    return nn.Sequential(*body, nn.Linear(flat, 100), nn.ReLU(), nn.Linear(100, classes)).train()
