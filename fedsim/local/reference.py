"""Reference client trainer: the plain per-client loop.

``train_cohort(global_params, cohort) -> stacked updates [K, D]``. Each client starts from the same
global vector, runs its own number of local SGD steps (plain, or with momentum, weight decay and a
proximal term: ``fedsim.local.optimizer``; with SCAFFOLD's drift correction) on minibatches drawn from its own data, and returns
``Delta_i = y_i - x``. Minibatches are drawn by reshuffling the
client's indices each pass with a ``torch.Generator`` seeded per (run seed, round, client), so a
client's result does not depend on which other clients share its cohort or in which order they run.
This loop is the oracle a vectorized trainer has to match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..core.params import ParamSpec
from .optimizer import ClientOptimizer


@dataclass(frozen=True)
class Job:
    client: int
    indices: torch.Tensor  # int64 [n_i] rows of the training split owned by the client
    local_steps: int
    lr: float
    batch_size: int
    seed: int
    opt: ClientOptimizer = ClientOptimizer()  # plain SGD unless the server asks for more
    correction: torch.Tensor | None = None  # SCAFFOLD's c - c_i [D], added to every step's direction


def job_seed(run_seed: int, server_round: int, client: int) -> int:
    """A 63-bit seed that depends only on (run seed, round, client)."""
    x = (run_seed * 0x9E3779B97F4A7C15 + server_round * 0xBF58476D1CE4E5B9 + client * 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    return x >> 1


def minibatches(indices: torch.Tensor, steps: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``steps`` minibatches; indices are reshuffled each time a pass over the data is complete."""
    n = indices.numel()
    if n == 0:
        raise ValueError("a client with no training data cannot train")
    out, perm, pos = [], torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=gen), 0
        out.append(indices[perm[pos:pos + batch_size]])
        pos += batch_size
    return out


def _direction(opt: ClientOptimizer, p: torch.Tensor, g: torch.Tensor, anchor, buf, correction) -> torch.Tensor:
    """The step direction of ``fedsim.local.optimizer`` (updates the momentum buffer in place), plus
    SCAFFOLD's drift correction c - c_i after the momentum (see ``fedsim.strategies.scaffold``)."""
    d = g
    if opt.weight_decay:
        d = d + opt.weight_decay * p
    if opt.prox_mu:
        d = d + opt.prox_mu * (p - anchor)
    if buf is not None:
        buf.mul_(opt.momentum).add_(d)
        d = d + opt.momentum * buf if opt.nesterov else buf
    return d if correction is None else d + correction


def train_cohort(model: nn.Module, spec: ParamSpec, global_params: torch.Tensor, jobs: list[Job], data
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Train each job from ``global_params`` [D]; returns ``(deltas [K, D], mean train loss [K])``.

    ``data`` is a split with ``take(idx) -> (x, y)``. The model is reused (one resident model). Training
    runs on the device of ``global_params`` (and the model): each minibatch is moved there.
    """
    device = global_params.device
    deltas = torch.empty(len(jobs), spec.dim, device=device)
    losses = torch.empty(len(jobs), device=device)
    start = spec.unflatten(global_params)
    model.train()
    for k, job in enumerate(jobs):
        model.load_state_dict(start)
        gen = torch.Generator().manual_seed(job.seed)
        total = torch.zeros((), dtype=torch.float64, device=device)  # no host sync per step
        params = [p for p in model.parameters()]
        opt = job.opt
        anchors = [p.detach().clone() for p in params] if opt.prox_mu else None
        bufs = [torch.zeros_like(p) for p in params] if opt.momentum else None
        corrections = None  # by parameter name: the spec also lists buffers (BatchNorm statistics)
        if job.correction is not None:
            named = spec.unflatten(job.correction.to(device))
            corrections = [named[n] for n, _ in model.named_parameters()]
        for idx in minibatches(job.indices, job.local_steps, job.batch_size, gen):
            x, y = data.take(idx)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for i, (p, g) in enumerate(zip(params, grads)):
                    if not opt.plain or corrections is not None:
                        g = _direction(opt, p, g, anchors[i] if anchors else None, bufs[i] if bufs else None,
                                       corrections[i] if corrections else None)
                    p.sub_(job.lr * g)
            total += loss.detach().double()
        deltas[k] = spec.flatten(model.state_dict()) - global_params
        losses[k] = total / job.local_steps
    return deltas, losses
