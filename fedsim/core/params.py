"""Flat parameter vectors <-> named tensors.

Every aggregation rule in fedsim works on flat float vectors (``[D]`` for one model, ``[K, D]`` for a
cohort). ``ParamSpec`` records the names, shapes and dtypes of a model's state so runtimes can convert
between a Flower ``ArrayRecord`` / torch ``state_dict`` and the flat form without copying logic around.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
import torch


@dataclass(frozen=True)
class ParamSpec:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, state: dict[str, torch.Tensor] | torch.nn.Module) -> "ParamSpec":
        if isinstance(state, torch.nn.Module):
            state = state.state_dict()
        state = strip_wrapper_prefix(state)
        return cls(tuple(state), tuple(tuple(t.shape) for t in state.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(prod(s) for s in self.shapes)

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def flatten(self, state: dict[str, torch.Tensor | np.ndarray]) -> torch.Tensor:
        """Concatenate ``state`` (in spec order) into one float32 vector ``[D]``."""
        state = strip_wrapper_prefix(state)
        missing = [n for n in self.names if n not in state]
        if missing or len(state) != len(self.names):
            extra = sorted(set(state) - set(self.names))
            raise ValueError(f"parameter names do not match the model: missing {missing}, unexpected {extra}")
        parts = []
        for name, shape in zip(self.names, self.shapes):
            t = torch.as_tensor(state[name])
            if tuple(t.shape) != shape:
                raise ValueError(f"parameter '{name}' has shape {tuple(t.shape)}, expected {shape}")
            parts.append(t.reshape(-1).to(torch.float32))
        return torch.cat(parts) if parts else torch.zeros(0)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a ``[D]`` vector back into named tensors (views of ``flat``)."""
        if flat.shape != (self.dim,):
            raise ValueError(f"flat vector has shape {tuple(flat.shape)}, expected ({self.dim},)")
        out, pos = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = flat[pos:pos + size].view(shape)
            pos += size
        return out

    def mask_excluding(self, names) -> torch.Tensor:
        """``[D]`` bool: True on every coordinate except those of the named tensors."""
        keep = torch.ones(self.dim, dtype=torch.bool)
        views = self.unflatten(keep)  # views share keep's storage
        for name in names:
            views[name].fill_(False)
        return keep


WRAPPER_PREFIX = "_module."  # Opacus' GradSampleModule (and DPDDP) prefix every parameter name


def strip_wrapper_prefix(state: dict) -> dict:
    """Names of a wrapped model's state dict without Opacus' ``_module.`` prefix (others unchanged)."""
    if state and all(name.startswith(WRAPPER_PREFIX) for name in state):
        return {name[len(WRAPPER_PREFIX):]: value for name, value in state.items()}
    return state
