"""Staleness repair by gradient inversion.

Wang & Gao, "Tackling the Unlimited Staleness in Federated Learning with Intertwined Data and Device
Heterogeneities", arXiv 2309.13536 (AAAI 2025), Sec. 4 (the paper's text was not available
offline, so no equation numbers are cited here).
When client i's update ``d_stale = y_i - x_s``, computed on the old global model ``x_s``, arrives in
round ``t`` (staleness ``tau = t - s >= 1``), the server

1. **inverts** it: finds a synthetic set ``D_rec = (X [n, *input], soft labels softmax(Y) [n, C])``
   with ``LocalUpdate(x_s, D_rec) ~ d_stale``, where ``LocalUpdate`` replays the client's own local
   SGD (its step count, learning rate and batch size; ``fedsim.inversion.functional.local_update``,
   unrolled and differentiated with ``create_graph``). Objective: the L1 distance normalised by
   ``||d_stale||_1`` plus ``tv * TV(X)``; Adam on the *sign* of the image gradient with the box of
   valid inputs (the Inverting Gradients optimiser, ``fedsim.attacks.inverting``), plain Adam on
   the label logits, which start from the labels recovered from the last-layer bias;
2. **recomputes** ``d_est = LocalUpdate(x_t, D_rec)`` from the *current* model;
3. aggregates ``d_est`` in place of ``d_stale`` (``mode = "replace"``, the paper). ``mode =
   "correct"`` instead aggregates ``d_stale + LocalUpdate(x_t, D_rec) - LocalUpdate(x_s, D_rec)``:
   the staleness correction estimated on ``D_rec`` added to what the client really sent, so the
   part of ``d_stale`` the inversion failed to explain is kept rather than lost.

The loss is the client's real loss (cross-entropy) on soft labels and the model runs in the mode
the clients train in; buffers travel with the flat parameter vector (``ParamSpec``). Unlike the
reference code, the inversion is seeded per (run, round, client) and the input box comes from the
data's actual range.

Switch back to plain aggregation. The paper returns to aggregating ``d_stale`` once repair stops
helping (late in training the model moves slowly, while the inversion keeps an error floor). The
reference code decides with an *oracle* (it trains on the client's true data on the server);
fedsim never does. Policy ``"estimated"`` (default) compares two numbers the server has:

- ``residual = ||LocalUpdate(x_s, D_rec) - d_stale||_1 / ||d_stale||_1`` -- what the inversion
  fails to explain (its error floor), and
- ``drift = ||LocalUpdate(x_t, D_rec) - LocalUpdate(x_s, D_rec)||_1 / ||d_stale||_1`` -- the
  staleness error, estimated on ``D_rec``;

``drift`` estimates the stale update's error; the repaired one's is about ``residual`` (replace) or
``residual * drift`` (correct: the drift estimate is about as wrong as ``D_rec``). The repaired update
is used when ``margin * its estimated error < drift``, otherwise ``d_stale`` is, and after
``patience`` declines in a row the server switches to plain aggregation for good (no more
inversions: the compute is saved). ``"never"`` always repairs; ``"round"`` switches at round
``switch_round`` (the reference code's fixed cap).

Privacy note: the server synthesises data-like samples from each stale update; a deployment must
decide whether its clients accept that.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from .core.params import ParamSpec
from .inversion.functional import local_update
from .inversion.labels import recover_labels
from .inversion.layers import last_linear
from .inversion.objectives import total_variation
from .inversion.observation import Observation
from .inversion.optimise import ig_schedule, random_images

MODES = ("replace", "correct")
SWITCHES = ("estimated", "never", "round")
LABEL_SCALE = 4.0  # initial logit of a recovered label (softmax ~0.85 with 10 classes)


@dataclass(frozen=True)
class Repaired:
    update: torch.Tensor  # [D] what the server aggregates for this answer
    used: bool            # the repaired update (True) or the stale one (False)
    residual: float       # inversion error floor, relative L1
    drift: float          # estimated staleness error, relative L1
    seconds: float        # server compute of this repair (wall clock)


def _rel_l1(a: torch.Tensor, ref_norm: torch.Tensor) -> torch.Tensor:
    return a.abs().sum() / ref_norm


def invert(model: nn.Module, spec: ParamSpec, params_at_send: torch.Tensor, update: torch.Tensor, *,
           local_steps: int, lr: float, batch_size: int, samples: int, input_shape: tuple,
           iterations: int, image_lr: float, label_lr: float, tv: float, gen: torch.Generator,
           box: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Step 1: ``(X [n, *input], soft labels [n, C], relative L1 residual)`` with
    ``LocalUpdate(params_at_send, (X, labels)) ~ update``; the best iterate seen is returned."""
    obs = Observation(threat="T2", kind="update", params=params_at_send, value=update, num_samples=samples,
                      num_clients=1, batch_size=batch_size, lr=lr, local_steps=local_steps)
    labels = recover_labels(model, obs, input_shape, gen)
    classes = int(spec.unflatten(params_at_send)[last_linear(model)[1]].numel())
    x = random_images(samples, input_shape, gen, box).requires_grad_(True)
    logits = (LABEL_SCALE * torch.nn.functional.one_hot(labels, classes).float()).requires_grad_(True)
    opt_x, opt_y = torch.optim.Adam([x], lr=image_lr), torch.optim.Adam([logits], lr=label_lr)
    sched = ig_schedule(opt_x, iterations)
    norm = update.abs().sum().clamp_min(1e-12)
    best = (x.detach().clone(), torch.softmax(logits.detach(), -1), float("inf"))
    for _ in range(iterations):
        opt_x.zero_grad(set_to_none=False)
        opt_y.zero_grad(set_to_none=False)
        sim = local_update(model, spec, params_at_send, x, torch.softmax(logits, -1), steps=local_steps, lr=lr,
                           batch_size=batch_size, create_graph=True)
        residual = _rel_l1(sim - update, norm)
        value = float(residual.detach())
        if value != value:  # NaN: keep the best so far
            break
        if value < best[2]:
            best = (x.detach().clone(), torch.softmax(logits.detach(), -1), value)
        (residual + tv * total_variation(x) if x.ndim == 4 else residual).backward()  # TV: images only
        x.grad.sign_()
        opt_x.step()
        opt_y.step()
        sched.step()
        if box is not None:
            with torch.no_grad():
                x.clamp_(*box)
    return best


def repair_update(model: nn.Module, spec: ParamSpec, params_at_send: torch.Tensor, params_now: torch.Tensor,
                  update: torch.Tensor, *, local_steps: int, lr: float, batch_size: int, settings,
                  input_shape: tuple, gen: torch.Generator, box: tuple[float, float] | None = None,
                  margin: float | None = None) -> Repaired:
    """Steps 1-3 for one stale answer; ``settings`` is a ``fedsim.config.RepairConfig``.

    ``margin`` (the ``"estimated"`` policy's threshold) decides between the repaired and the stale
    update; ``None`` always takes the repaired one."""
    t0 = time.perf_counter()
    model.train()  # the mode clients train in
    x, soft, residual = invert(model, spec, params_at_send, update, local_steps=local_steps, lr=lr,
                               batch_size=batch_size, samples=settings.samples, input_shape=input_shape,
                               iterations=settings.iterations, image_lr=settings.image_lr,
                               label_lr=settings.label_lr, tv=settings.tv, gen=gen, box=box)
    replay = dict(steps=local_steps, lr=lr, batch_size=batch_size)
    then = local_update(model, spec, params_at_send, x, soft, **replay).detach()
    now = local_update(model, spec, params_now, x, soft, **replay).detach()
    norm = update.abs().sum().clamp_min(1e-12)
    drift = float(_rel_l1(now - then, norm))
    residual = float(_rel_l1(then - update, norm))
    if settings.mode == "replace":
        repaired, expected_error = now, residual
    else:  # the drift estimate is about as wrong, relatively, as D_rec is
        repaired, expected_error = update + (now - then), residual * drift
    finite = math.isfinite(residual) and bool(torch.isfinite(repaired).all())  # a failed inversion is never used
    use = finite and (margin is None or margin * expected_error < drift)
    return Repaired(repaired if use else update.clone(), use, residual, drift, time.perf_counter() - t0)
