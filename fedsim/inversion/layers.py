"""Where a model's linear layers are: label recovery reads the last one, the analytic attack and CPA
invert the first one."""

from __future__ import annotations

from torch import nn

__all__ = ["first_linear", "last_linear"]


def _linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def last_linear(model: nn.Module) -> tuple[str, str]:
    """State-dict names ``(weight, bias)`` of the model's last linear (classifier) layer."""
    names = _linears(model)
    if not names:
        raise ValueError("model has no linear layer")
    return f"{names[-1]}.weight", f"{names[-1]}.bias"


def first_linear(model: nn.Module) -> tuple[str, str]:
    """State-dict names ``(weight, bias)`` of the model's first linear layer."""
    names = _linears(model)
    if not names:
        raise ValueError("model has no linear layer")
    module = dict(model.named_modules())[names[0]]
    if module.bias is None:
        raise ValueError("the first linear layer has no bias")
    return f"{names[0]}.weight", f"{names[0]}.bias"
