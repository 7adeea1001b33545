"""What an inversion sees: a gradient or a weight update, plus the protocol facts it may assume.

Shared by the attacks (the threat models of ``fedsim.attacks.observations`` build one) and by
staleness repair (the server inverts a stale client update it received).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Observation"]


@dataclass(frozen=True, eq=False)
class Observation:
    """What the attacker sees, plus the protocol facts it is assumed to know.

    ``value`` is a gradient (``kind == "gradient"``: the mean-loss gradient over all
    ``num_samples`` samples when no defense distorts it) or a mean weight update
    (``kind == "update"``: the sum of the group's updates divided by ``num_clients``).
    ``mask`` marks the coordinates that were sent (sparse defenses), ``clip_norm`` bounds one
    client's message in ``value`` units (known clipping; ``None`` when absent or aggregated)."""

    threat: str
    kind: str
    params: torch.Tensor          # [D] global parameters the clients started from
    value: torch.Tensor           # [D]
    num_samples: int              # N * B: the server reads num-examples from the replies
    num_clients: int
    batch_size: int
    lr: float
    local_steps: int
    mask: torch.Tensor | None = None
    clip_norm: float | None = None
