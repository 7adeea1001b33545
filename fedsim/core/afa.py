"""Anarchic Federated Averaging: AFA-CD (cross-device) and AFA-CS (cross-silo).

Yang, Zhang, Khanduri, Liu, "Anarchic Federated Learning", ICML 2022, arXiv 2108.09875,
Algorithms 1 (AFA-CD) and 2 (AFA-CS). A worker pulls the current model x_s, runs K_i local SGD steps of
its own choosing with local rate eta_L and returns the *average* of its local stochastic gradients
``G_i = (1/K_i) sum_k g_k`` (for plain SGD, ``G_i = -Delta_i / (eta_L K_i)``). The server uses
two-sided learning rates: ``x_{t+1} = x_t - eta * eta_L * G_t``.

- AFA-CD: ``G_t`` is the mean of the (possibly stale) answers that arrived this round, m or more.
- AFA-CS: the server keeps the latest ``G_i`` of every worker (slots start at zero) and
  ``G_t = (1/N) sum_i memory_i`` over all N workers; absent workers' stored answers are reused.

With full participation, no delay and K_i = 1 both reduce to FedAvg with server rate eta and uniform
client weights (tested).

The paper's: K-normalised answers, the two-sided rates, AFA-CD's mean of the answers that arrived,
AFA-CS's mean over all N workers' latest answers. Ours (the paper's text was not available offline
to settle them): AFA-CD's m counts answers, not distinct workers (``strategy.m``; a fast worker
could count twice, though fedsim never sends a busy client new work); AFA-CS's slots start at zero
(as IBM's MIFA baseline), so early rounds are damped by the workers not yet heard from; AFA-CS's
memory is stored compactly (``cs_update``: the running sum plus each worker's last answer, only for
workers that ever answered) rather than as a dense ``[N, D]`` table, the same numbers.
"""

from __future__ import annotations

import torch

from .weighting import check_updates


def mean_gradient(delta: torch.Tensor, local_steps: torch.Tensor, local_lr: float) -> torch.Tensor:
    """Worker side: average local gradient ``G = -Delta / (eta_L K)`` for plain local SGD.

    delta  # [K, D] or [D]; local_steps  # [K] or scalar
    """
    if local_lr <= 0:
        raise ValueError(f"local learning rate must be positive, got {local_lr}")
    steps = torch.as_tensor(local_steps, dtype=delta.dtype)
    if (steps < 1).any():
        raise ValueError("local_steps must be >= 1")
    if delta.ndim == 2:
        steps = steps.reshape(-1, 1)
    return -delta / (local_lr * steps)


def server_step(params: torch.Tensor, grad: torch.Tensor, server_lr: float, local_lr: float) -> torch.Tensor:
    """``x_{t+1} = x_t - eta * eta_L * G_t`` (two-sided learning rates)."""
    return params - server_lr * local_lr * grad


def cd_aggregate(grads: torch.Tensor) -> torch.Tensor:
    """AFA-CD: mean of the arrived answers ``[K, D] -> [D]``."""
    check_updates(grads, torch.ones(grads.shape[0]))
    if grads.shape[0] == 0:
        return torch.zeros(grads.shape[1], dtype=grads.dtype)
    return grads.mean(dim=0)


def cs_update(total: torch.Tensor, last: dict[int, torch.Tensor], num_clients: int, clients: torch.Tensor,
              grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
    """AFA-CS with a compact memory: ``total`` [D] (float64) is the sum of every worker's latest answer
    and ``last`` holds only the workers that ever answered (absent ones are the zero slots), so the
    state is O(answered x D), not O(N x D). Returns ``(mean over all N, total, last)`` as new objects
    (a rejected round keeps the old ones); the same mean as ``cs_aggregate`` on the dense memory."""
    check_updates(grads, torch.ones(grads.shape[0]))
    if grads.shape[1] != total.shape[0]:
        raise ValueError(f"answers have dimension {grads.shape[1]}, the memory has {total.shape[0]}")
    total, last = total.clone(), dict(last)
    for cid, g in zip(clients.tolist(), grads):  # in order: a worker's answer listed last wins
        old = last.get(cid)
        total += g.double() if old is None else g.double() - old.double()
        last[cid] = g.detach().clone()
    return (total / num_clients).to(grads.dtype), total, last


def cs_init(num_clients: int, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """AFA-CS memory: one zero slot per worker, ``[N, D]``."""
    return torch.zeros(num_clients, dim, dtype=dtype)


def cs_aggregate(memory: torch.Tensor, clients: torch.Tensor, grads: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """AFA-CS: overwrite the arrived workers' slots, return ``(mean over all N slots, memory)``.

    If a worker answered twice in one round, its answer listed last wins.
    """
    check_updates(grads, torch.ones(grads.shape[0]))
    if grads.shape[1] != memory.shape[1]:
        raise ValueError(f"answers have dimension {grads.shape[1]}, memory has {memory.shape[1]}")
    memory = memory.clone()
    memory[clients] = grads.to(memory.dtype)
    return memory.mean(dim=0), memory
