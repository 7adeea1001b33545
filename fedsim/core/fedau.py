"""FedAU: aggregation weights estimated online from each client's participation history.

Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in Federated
Averaging", ICLR 2024, arXiv 2306.03401, Algorithm 1 (reference code IBM/fedau). For client n the
weight ``omega_n`` is the mean of its recorded participation intervals (an online estimate of
``1/p_n``), taken from the history *before* the current round (1 while nothing is recorded). A
participating client then records the interval ``since_n + 1``; an absent client increments
``since_n`` and, on reaching the cutoff K, records ``since_n`` and restarts (Alg. 1, lines 9-16).
The server step is ``x <- x + eta_g * sum_{n in S_t} omega_n Delta_n / N`` (divide by N, not |S_t|).

The state is O(1) per client and explicit: three ``[N]`` tensors that can be saved and restored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .weighting import weighted_sum


@dataclass(frozen=True)
class FedAUState:
    since: torch.Tensor           # [N] int64, rounds since the last participation or cut
    interval_sum: torch.Tensor    # [N] float64, sum of recorded intervals
    interval_count: torch.Tensor  # [N] int64, number of recorded intervals

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"since": self.since, "interval_sum": self.interval_sum, "interval_count": self.interval_count}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "FedAUState":
        return cls(d["since"].to(torch.int64), d["interval_sum"].to(torch.float64), d["interval_count"].to(torch.int64))


def init(num_clients: int) -> FedAUState:
    zeros = torch.zeros(num_clients, dtype=torch.int64)
    return FedAUState(zeros.clone(), torch.zeros(num_clients, dtype=torch.float64), zeros.clone())


def weights(state: FedAUState, clients: torch.Tensor) -> torch.Tensor:
    """omega for ``clients`` [K]: mean recorded interval, or 1 with no history (Alg. 1, line 10)."""
    count = state.interval_count[clients]
    mean = state.interval_sum[clients] / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.ones_like(mean))


def observe(state: FedAUState, participated: torch.Tensor, cutoff: int) -> FedAUState:
    """Record one round of participation indicators ``participated`` [N] bool."""
    if cutoff < 1:
        raise ValueError(f"FedAU cutoff K must be >= 1, got {cutoff}")
    since, total, count = state.since.clone(), state.interval_sum.clone(), state.interval_count.clone()
    on = participated
    total[on] += (since[on] + 1).to(torch.float64)
    count[on] += 1
    since[on] = 0
    off = ~participated
    since[off] += 1
    cut = off & (since >= cutoff)
    total[cut] += since[cut].to(torch.float64)
    count[cut] += 1
    since[cut] = 0
    return FedAUState(since, total, count)


def step(state: FedAUState, clients: torch.Tensor, deltas: torch.Tensor, cutoff: int,
         noise: torch.Tensor | None = None) -> tuple[torch.Tensor, FedAUState, dict[str, float]]:
    """One FedAU round: direction ``(sum omega_n Delta_n [+ noise]) / N`` and the updated interval state.

    clients  # [K] distinct client ids in S_t; deltas  # [K, D] local model changes; noise  # [D]
    (user-level DP), added to the weighted sum before the division by N.
    """
    num_clients = state.since.shape[0]
    if clients.numel() != torch.unique(clients).numel():
        raise ValueError("FedAU: a client appears twice in one round")
    omega = weights(state, clients)
    direction = weighted_sum(deltas, omega.to(deltas.dtype), float(num_clients), noise=noise)
    participated = torch.zeros(num_clients, dtype=torch.bool)
    participated[clients] = True
    new_state = observe(state, participated, cutoff)
    metrics = {"fedau/mean_weight": float(omega.mean()) if omega.numel() else 0.0,
               "fedau/max_weight": float(omega.max()) if omega.numel() else 0.0}
    return direction, new_state, metrics
