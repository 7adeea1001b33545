"""Threat models: exactly what the attacker observes.

An attack receives an :class:`Observation` and nothing else; ground truth goes only to the scorer
(breaching's split into case / attack / analysis).

* T1, honest-but-curious server under FedSGD: one client's single-step update ``-lr g``; the
  server knows lr and reads the gradient ``g`` (:func:`fedsgd_gradient`).
* T2, the same server under FedAvg: the weight update after ``local_steps`` SGD steps
  (:func:`fedavg_update`, the reference trainer's semantics: plain SGD, minibatches reshuffled per
  pass with a per-client generator). A T1-style attacker reads ``-update / (lr * steps)`` as if it
  were one gradient ("no simulation"); SME uses the update itself.
* T3, passive server under secure aggregation: only the sum of a group's messages
  (:func:`secure_sum`, simulated exactly as the sum).
* A third party seeing a DP-noised or compressed message: the per-client defense stages of
  :mod:`fedsim.attacks.defenses` run on each message before aggregation; under central DP with
  correlated noise (``dp-mf``, T4) the server's noise is added to the sum.

The victim's inputs are in model-input space here (already normalised).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.params import ParamSpec
from ..data import Split
from ..local.reference import Job, job_seed, train_cohort
from .defenses import DefenseConfig, apply_defense, central_noise, soteria_stage
from ..inversion.functional import flat_grad
from ..inversion.observation import Observation

__all__ = ["Observation", "dp_sgd_update", "fedavg_update", "fedsgd_gradient", "observe", "secure_sum"]


def fedsgd_gradient(model: nn.Module, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                    ) -> torch.Tensor:
    """T1: the gradient ``[D]`` of the mean cross-entropy of batch ``(x, y)`` at ``params [D]``.

    A FedSGD client sends ``params - lr g``; the server recovers ``g``. It is computed directly
    rather than as ``-(w' - w) / lr`` to avoid float32 cancellation in ``w - (w - lr g)``."""
    return flat_grad(model, ParamSpec.of(model), params, x, y)


def fedavg_update(model: nn.Module, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                  local_steps: int, lr: float, batch_size: int, seed: int) -> torch.Tensor:
    """T2: the weight update ``[D]`` after ``local_steps`` SGD steps on ``(x, y)`` from ``params``.

    Runs :func:`fedsim.local.reference.train_cohort` (the project's oracle trainer) on a one-client
    cohort; ``batch_size`` 0 means full batch. ``model``'s weights are overwritten."""
    n = len(y)
    job = Job(client=0, indices=torch.arange(n), local_steps=local_steps, lr=lr,
              batch_size=batch_size or n, seed=seed)
    deltas, _ = train_cohort(model, ParamSpec.of(model), params, [job], Split(x, y))
    return deltas[0]


def dp_sgd_update(model: nn.Module, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, local_steps: int,
                  lr: float, batch_size: int, clip: float, noise_multiplier: float, seed: int) -> torch.Tensor:
    """The weight update ``[D]`` of ``local_steps`` DP-SGD steps on ``(x, y)`` (Poisson minibatches of
    expected size ``batch_size``, 0 = full batch): the project's example-level DP trainer."""
    from ..local.example_dp import ExampleDP, private_copy, train_cohort_dp

    n = len(y)
    job = Job(client=0, indices=torch.arange(n), local_steps=local_steps, lr=lr, batch_size=batch_size or n, seed=seed)
    deltas, _ = train_cohort_dp(private_copy(model), ParamSpec.of(model), params, [job], Split(x, y),
                                ExampleDP(noise_multiplier, clip))
    return deltas[0]


def secure_sum(updates: torch.Tensor) -> torch.Tensor:
    """T3: what a passive server sees under secure aggregation: ``sum`` of ``updates [K, D]``."""
    return updates.sum(0)


def observe(model: nn.Module, params: torch.Tensor, clients: list[tuple[torch.Tensor, torch.Tensor]],
            *, lr: float, local_steps: int, local_batch_size: int, view: str,
            defense: DefenseConfig, gen: torch.Generator, seed: int) -> Observation:
    """Train each client from ``params``, apply the defense's per-client stage, aggregate, and
    return the attacker's view (``view`` = ``"gradient"`` for T1-style or ``"update"`` for SME).

    ``clients`` holds each client's ``(x [B, ...], y [B])`` in model-input space; with more than
    one client the server sees only their sum (T3). ``gen`` draws the defense noise; ``seed``
    seeds the clients' minibatch order (``job_seed(seed, 0, k)``)."""
    if view not in ("gradient", "update"):
        raise ValueError(f"view must be 'gradient' or 'update', got {view!r}")
    spec = ParamSpec.of(model)
    steps = local_steps * max(1, defense.local_steps if defense.name == "local-steps" else 1)
    batch_sizes = {len(y) for _, y in clients}
    if len(batch_sizes) != 1:
        raise ValueError("every client of a group must hold the same number of samples")
    (b,) = batch_sizes
    sent, masks = [], []
    for k, (x, y) in enumerate(clients):
        if defense.name == "dp-sgd":
            update = dp_sgd_update(model, params, x, y, local_steps=steps, lr=lr, batch_size=local_batch_size,
                                   clip=defense.clip, noise_multiplier=defense.noise_multiplier,
                                   seed=job_seed(seed, 0, k))
        elif steps == 1 and local_batch_size in (0, b):
            update = -lr * fedsgd_gradient(model, params, x, y)
        else:
            update = fedavg_update(model, params, x, y, local_steps=steps, lr=lr,
                                   batch_size=local_batch_size, seed=job_seed(seed, 0, k))
        if defense.name == "soteria":
            message, mask = soteria_stage(update, model, params, x, defense)
        else:
            message, mask, _ = apply_defense(update, defense, spec, gen)
        sent.append(message)
        masks.append(mask)
    n = len(clients)
    total = secure_sum(torch.stack(sent)) if n > 1 else sent[0]
    mask = None if masks[0] is None else torch.stack(masks).any(0)
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:  # BatchNorm statistics travel in the update but are no gradient: the attacker matches parameters only
        params_only = spec.mask_excluding(buffers)
        mask = params_only if mask is None else mask & params_only
    clip = defense.clip if defense.name in ("dp", "clip") and n == 1 else None
    threat = ("T3/" if n > 1 else "") + ("T1" if steps == 1 else "T2")
    if defense.name == "dp-mf":  # central noise on the sum: the third party's view (T4)
        total = total + central_noise(defense, spec.dim, int(torch.randint(0, 2 ** 62, (1,), generator=gen)))
        threat = "T4/" + threat
    if view == "gradient":
        scale = -1.0 / (lr * steps * n)
        value = total * scale
        clip = None if clip is None else clip * abs(scale)
    else:
        value = total / n
    return Observation(threat=threat, kind=view, params=params.detach().clone(), value=value.detach(),
                       num_samples=n * b, num_clients=n, batch_size=b, lr=lr, local_steps=steps,
                       mask=mask, clip_norm=clip)
