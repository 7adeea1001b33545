"""Inverting Gradients (IG) and its multi-step relatives: SME and the unrolled FedAvg attack.

* IG (Geiping, Bauermeister, Droege, Moeller, NeurIPS 2020, arXiv 2003.14053, eq. 4): minimise
  ``1 - cos(grad(x', y), g) + tv * TV(x')`` with Adam on the *sign* of the gradient (lr 0.1,
  decayed x0.1 at 3/8, 5/8 and 7/8 of the steps) and the box constraint of valid pixels, labels
  recovered beforehand (:mod:`fedsim.inversion.labels`).
* SME (Zhu, Yao, Blaschko, ICML 2023, arXiv 2306.00127, Sec. 4, eq. 6): the observation is a
  weight update ``d = w_T - w_0`` after many local steps. Match ``-d`` with the gradient at a
  surrogate ``w_0 + alpha d`` on the segment, alpha in [0, 1] learned jointly (Adam, lr 1e-3,
  clamped). alpha's gradient is computed explicitly by autograd through the surrogate (the
  reference code's ``require_grad`` typo made its freeze a no-op); alpha
  fixed at 0 is the IG-on-the-update baseline.
* Unrolled FedAvg (IG Sec. 5 / breaching ``FedAvgReconstructor``, the "strong" attacker of Guo et
  al.): simulate the client's ``local_steps`` SGD steps on the dummy data and match the simulated
  update by cosine; needs lr, step count and batch size.

:func:`invert_update` is the reusable entry point (e.g. for staleness repair): from an update
computed at ``params_at_send``, estimate the client's data and labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.params import ParamSpec
from ..inversion.functional import flat_grad, local_update
from ..inversion.labels import recover_labels
from ..inversion.objectives import cosine_distance, total_variation
from ..inversion.observation import Observation
from ..inversion.optimise import ig_schedule, optimise, random_images

__all__ = ["IGConfig", "SMEConfig", "UnrolledConfig", "ig", "ig_schedule", "invert_update", "random_images", "sme", "unrolled"]


@dataclass(frozen=True)
class IGConfig:
    model: str = "cnn"
    steps: int = 1000          # the knee of the budget curve (fedsim bench attack); SME's own budget
    lr: float = 0.1
    tv: float = 1e-2
    restarts: int = 1
    signed: bool = True
    # 0: the paper's schedule (x0.1 at 3/8, 5/8, 7/8 of ``steps``); P > 0: decay at each plateau of the
    # matching loss over P steps and stop at the fourth (ours; ``steps`` stays the cap)
    plateau_steps: int = 0
    plateau_tol: float = 1e-3


@dataclass(frozen=True)
class UnrolledConfig(IGConfig):
    """The multi-step attacks' settings: the optimiser (IG's) and the victim's local training (T2)."""
    local_steps: int = 10      # the victim's local SGD steps (T2)
    local_batch_size: int = 0  # the victim's minibatch size (0 = full batch)
    client_lr: float = 0.01    # the victim's SGD learning rate (SME's own setting: 0.004)


@dataclass(frozen=True)
class SMEConfig(UnrolledConfig):
    alpha_init: float = 0.5
    alpha_lr: float = 1e-3
    learn_alpha: bool = True   # false with alpha_init = 0: the IG-on-update baseline


def ig(model: nn.Module, obs: Observation, *, input_shape: tuple, labels: torch.Tensor,
       cfg: IGConfig, gen: torch.Generator, box: tuple[float, float] | None = None
       ) -> tuple[torch.Tensor, dict]:
    """Inverting Gradients on a gradient observation: ``(x [n, *input_shape], info)``."""
    if obs.kind != "gradient":
        raise ValueError("IG inverts a gradient observation (use sme for weight updates)")
    spec = ParamSpec.of(model)

    def loss_fn(x, _alpha):
        g = flat_grad(model, spec, obs.params, x, labels, create_graph=True)
        return cosine_distance(g, obs.value, obs.mask) + cfg.tv * total_variation(x)

    best = None
    for _ in range(max(1, cfg.restarts)):
        x, loss, _, done = optimise(loss_fn, random_images(len(labels), input_shape, gen, box), **_budget(cfg, box))
        if best is None or loss < best[1]:
            best = (x, loss, done)
    return best[0], {"match_loss": best[1], "steps": best[2]}


def _budget(cfg: IGConfig, box) -> dict:
    """The optimiser settings an IG-family config gives :func:`optimise`."""
    return dict(steps=cfg.steps, lr=cfg.lr, signed=cfg.signed, box=box, plateau_steps=cfg.plateau_steps,
                plateau_tol=cfg.plateau_tol)


def sme(model: nn.Module, obs: Observation, *, input_shape: tuple, labels: torch.Tensor,
        cfg: SMEConfig, gen: torch.Generator, box: tuple[float, float] | None = None
        ) -> tuple[torch.Tensor, dict]:
    """SME on a weight-update observation: ``(x [n, *input_shape], info)`` with the learned alpha."""
    if obs.kind != "update":
        raise ValueError("SME inverts a weight-update observation")
    spec = ParamSpec.of(model)
    target = -obs.value

    def loss_fn(x, alpha):
        surrogate = obs.params + alpha * obs.value if alpha is not None else \
            obs.params + cfg.alpha_init * obs.value
        g = flat_grad(model, spec, surrogate, x, labels, create_graph=True)
        return cosine_distance(g, target, obs.mask) + cfg.tv * total_variation(x)

    best = None
    for _ in range(max(1, cfg.restarts)):
        alpha = torch.tensor(float(cfg.alpha_init), requires_grad=True) if cfg.learn_alpha else None
        x, loss, a, done = optimise(loss_fn, random_images(len(labels), input_shape, gen, box), **_budget(cfg, box),
                                    alpha=alpha, alpha_lr=cfg.alpha_lr)
        if best is None or loss < best[1]:
            best = (x, loss, cfg.alpha_init if a is None else a, done)
    return best[0], {"match_loss": best[1], "alpha": best[2], "steps": best[3]}


def unrolled(model: nn.Module, obs: Observation, *, input_shape: tuple, labels: torch.Tensor,
             cfg: IGConfig, gen: torch.Generator, box: tuple[float, float] | None = None
             ) -> tuple[torch.Tensor, dict]:
    """Strong FedAvg simulation: unroll ``obs.local_steps`` SGD steps of size ``obs.lr`` on the
    dummy batch (minibatches of ``obs.batch_size`` taken in a fixed order) and match the update."""
    if obs.kind != "update":
        raise ValueError("the unrolled attack inverts a weight-update observation")
    spec = ParamSpec.of(model)

    def loss_fn(x, _alpha):
        sim = local_update(model, spec, obs.params, x, labels, steps=obs.local_steps, lr=obs.lr,
                           batch_size=obs.batch_size, create_graph=True)
        return cosine_distance(sim, obs.value, obs.mask) + cfg.tv * total_variation(x)

    x, loss, _, done = optimise(loss_fn, random_images(len(labels), input_shape, gen, box), **_budget(cfg, box))
    return x, {"match_loss": loss, "steps": done}


def invert_update(model: nn.Module, params_at_send: torch.Tensor, update: torch.Tensor, *,
                  local_steps: int, lr: float, batch_size: int, num_classes: int,
                  input_shape: tuple, steps: int, gen: torch.Generator,
                  num_images: int | None = None, labels: torch.Tensor | None = None,
                  method: str = "sme", box: tuple[float, float] | None = None,
                  tv: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate the data behind a client's weight update.

    ``update [D]`` = the client's ``w_T - params_at_send`` after ``local_steps`` SGD steps of size
    ``lr`` on minibatches of ``batch_size``. Reconstructs ``num_images`` samples (default
    ``batch_size``) in *model-input* space, optionally inside ``box`` = (lo, hi), and returns
    ``(x_hat [n, *input_shape], y_hat int64 [n])``. Labels come from the last-layer bias (iDLG
    at n = 1) unless given. ``method``: ``"sme"`` (surrogate, cheap: one gradient per step) or
    ``"unrolled"`` (simulates all local steps: ``local_steps`` gradients per step, exact when the
    hyperparameters are right). ``model`` supplies the architecture only; its weights are unused.
    ``num_classes`` is accepted for symmetry with the model builder and checked against it."""
    n = num_images or batch_size
    obs = Observation(threat="T2", kind="update", params=params_at_send.detach(),
                      value=update.detach(), num_samples=n, num_clients=1, batch_size=batch_size,
                      lr=lr, local_steps=local_steps)
    if labels is None:
        labels = recover_labels(model, obs, input_shape, gen)
    if int(labels.max()) >= num_classes:
        raise ValueError(f"recovered label {int(labels.max())} >= num_classes {num_classes}")
    if method == "sme":
        x, _ = sme(model, obs, input_shape=input_shape, labels=labels, gen=gen, box=box,
                   cfg=SMEConfig(steps=steps, tv=tv))
    elif method == "unrolled":
        x, _ = unrolled(model, obs, input_shape=input_shape, labels=labels, gen=gen, box=box,
                        cfg=IGConfig(steps=steps, tv=tv))
    else:
        raise ValueError(f"method must be 'sme' or 'unrolled', got {method!r}")
    return x, labels
