"""Example-level differential privacy on the client: DP-SGD through Opacus.

DP-SGD (Abadi et al., CCS 2016, arXiv 1607.00133, Algorithm 1): each local step clips every
example's gradient to L2 norm ``clip_norm``, sums, adds N(0, (noise_multiplier * clip_norm)^2 I) and
divides by the batch size. Per-example gradients come from Opacus' ``GradSampleModule`` and the
clip + noise step from its ``DPOptimizer``, driven by an explicit ``torch.Generator`` seeded per
(run seed, round, client) so runs are reproducible. The wrapped module's state-dict keys carry
Opacus' ``_module.`` prefix; fedsim always reads and writes the inner module, so parameter names
match the non-private model (``ParamSpec`` also strips the prefix if one slips through).

Accounting: Opacus' RDP accountant with sampling rate q = batch_size / n_i per local step.
fedsim draws fixed-size shuffled minibatches, not Poisson samples, so this is the usual DP-SGD
approximation Opacus itself makes for shuffled loaders; the number it reports says so
(``dp/example_epsilon``, the worst client).
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


@dataclass(frozen=True)
class ExampleDP:
    noise_multiplier: float
    clip_norm: float

    def __post_init__(self):
        if self.noise_multiplier < 0 or self.clip_norm <= 0:
            raise ValueError(f"example-level DP needs noise_multiplier >= 0 and clip_norm > 0, "
                             f"got {self.noise_multiplier}, {self.clip_norm}")


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
        opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=job.lr), noise_multiplier=dp.noise_multiplier,
                          max_grad_norm=dp.clip_norm, expected_batch_size=job.batch_size, generator=noise)
        total = 0.0
        for idx in minibatches(job.indices, job.local_steps, job.batch_size, gen):
            x, y = data.take(idx)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(gsm(x), y)
            with warnings.catch_warnings():  # Opacus' hooks fire on module outputs: expected here
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            opt.step()
            total += float(loss.detach())
        opt.zero_grad(set_to_none=True)
        deltas[k] = spec.flatten(inner.state_dict()) - global_params
        losses[k] = total / job.local_steps
    return deltas, losses


def example_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """epsilon of ``steps`` DP-SGD steps at sampling rate ``sample_rate`` (Opacus RDP accountant)."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, min(1.0, sample_rate), int(steps))]
    return float(acc.get_epsilon(delta))
