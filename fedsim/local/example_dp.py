"""Example-level differential privacy on the client: DP-SGD through Opacus.

DP-SGD (Abadi et al., CCS 2016, arXiv 1607.00133, Algorithm 1): each local step clips every
example's gradient to L2 norm ``clip_norm``, sums, adds N(0, (noise_multiplier * clip_norm)^2 I) and
divides by the batch size. Per-example gradients come from Opacus' ``GradSampleModule`` and the
clip + noise step from its ``DPOptimizer``, driven by an explicit ``torch.Generator`` seeded per
(run seed, round, client) so runs are reproducible. The wrapped module's state-dict keys carry
Opacus' ``_module.`` prefix; fedsim always reads and writes the inner module, so parameter names
match the non-private model (``ParamSpec`` also strips the prefix if one slips through).

Minibatches (``sampling``):

- ``poisson`` (the default; the sampling DP-SGD's analysis assumes): in each local step every one
  of the client's n_i examples joins the batch independently with probability q = batch_size / n_i,
  so the batch size varies and may be 0 (then the step adds noise only); the clipped sum is divided
  by the expected batch size q·n_i, as Opacus' ``DPOptimizer`` does for its Poisson loader;
- ``shuffle``: fixed-size minibatches from a reshuffled pass (``reference.minibatches``), for which
  Poisson accounting is only an approximation (it can under-report epsilon); every output says so.

Accounting: Opacus' accountants (``rdp`` or ``prv``) over the DP-SGD steps at q = batch_size / n_i
(``example_epsilon``; the server's ledger reports the worst client).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..core.params import ParamSpec
from .reference import Job, minibatches

_NOISE_STREAM = 0x0DDC0FFEE


SAMPLINGS = ("poisson", "shuffle")
ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class ExampleDP:
    noise_multiplier: float
    clip_norm: float
    sampling: str = "poisson"

    def __post_init__(self):
        if self.noise_multiplier < 0 or self.clip_norm <= 0:
            raise ValueError(f"example-level DP needs noise_multiplier >= 0 and clip_norm > 0, "
                             f"got {self.noise_multiplier}, {self.clip_norm}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"example-level DP sampling must be one of {SAMPLINGS}, got {self.sampling!r}")


def poisson_minibatches(indices: torch.Tensor, steps: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``steps`` Poisson minibatches: each index joins each one independently with q = batch_size / n."""
    n = indices.numel()
    if n == 0:
        raise ValueError("a client with no training data cannot train")
    q = min(1.0, batch_size / n)
    return [indices[torch.rand(n, generator=gen) < q] for _ in range(steps)]


def private_copy(model: nn.Module) -> nn.Module:
    """A ``GradSampleModule`` around a copy of ``model`` (Opacus' hooks never touch the original)."""
    from opacus import GradSampleModule

    return GradSampleModule(copy.deepcopy(model))


def train_cohort_dp(gsm: nn.Module, spec: ParamSpec, global_params: torch.Tensor, jobs: list[Job], data,
                    dp: ExampleDP) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``reference.train_cohort`` but every local step is a DP-SGD step; returns (deltas [K, D], losses [K])."""
    from opacus.optimizers import DPOptimizer

    inner = gsm._module
    start = spec.unflatten(global_params)
    deltas, losses = torch.empty(len(jobs), spec.dim), torch.empty(len(jobs))
    gsm.train()
    for k, job in enumerate(jobs):
        inner.load_state_dict(start)
        gen = torch.Generator().manual_seed(job.seed)
        noise = torch.Generator().manual_seed(job.seed ^ _NOISE_STREAM)
        poisson = dp.sampling == "poisson"
        expected = min(job.batch_size, job.indices.numel()) if poisson else job.batch_size  # q·n_i
        draw = poisson_minibatches if poisson else minibatches
        if job.opt.prox_mu:
            raise ValueError("example-level DP does not support the proximal term (prox-mu)")
        sgd = torch.optim.SGD(gsm.parameters(), lr=job.lr, momentum=job.opt.momentum, nesterov=job.opt.nesterov,
                              weight_decay=job.opt.weight_decay)
        opt = DPOptimizer(sgd, noise_multiplier=dp.noise_multiplier,
                          max_grad_norm=dp.clip_norm, expected_batch_size=expected, generator=noise)
        total, seen = 0.0, 0
        for idx in draw(job.indices, job.local_steps, job.batch_size, gen):
            opt.zero_grad(set_to_none=True)
            if idx.numel() == 0:  # an empty Poisson batch: the step is noise only
                for p in gsm.parameters():
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
                opt.step()
                continue
            x, y = data.take(idx)
            loss = F.cross_entropy(gsm(x), y)
            with warnings.catch_warnings():  # Opacus' hooks fire on module outputs: expected here
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()), seen + 1
        opt.zero_grad(set_to_none=True)
        deltas[k] = spec.flatten(inner.state_dict()) - global_params
        losses[k] = total / max(seen, 1)
    return deltas, losses


def example_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                    accountant: str = "rdp") -> float:
    """epsilon of ``steps`` Poisson-sampled DP-SGD steps at ``sample_rate`` (Opacus' RDP or PRV accountant)."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    from opacus.accountants import PRVAccountant, RDPAccountant

    if accountant not in ACCOUNTANTS:
        raise ValueError(f"example-level accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(noise_multiplier, min(1.0, sample_rate), int(steps))]
    return float(acc.get_epsilon(delta))
