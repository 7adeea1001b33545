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

import dataclasses
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
from .inversion.optimise import StepDecay, random_images

MODES = ("replace", "correct")
SWITCHES = ("estimated", "never", "round")
LABEL_SCALE = 4.0  # initial logit of a recovered label (softmax ~0.85 with 10 classes)


@dataclass(frozen=True)
class Repaired:
    update: torch.Tensor  # [D] what the server aggregates for this answer
    used: bool            # the repaired update (True) or the stale one (False)
    residual: float       # inversion error floor, relative L1
    drift: float          # estimated staleness error, relative L1
    seconds: float        # server compute of this repair (wall clock; a batch's time is shared)
    steps: int = 0        # inversion steps taken
    synthetic: tuple | None = None  # (X, logits) found: the warm start of this client's next inversion


def _rel_l1(a: torch.Tensor, ref_norm: torch.Tensor) -> torch.Tensor:
    return a.abs().sum() / ref_norm


@dataclass
class Problem:
    """One stale answer to invert: the model it was computed on, what the client sent, and where the
    synthetic set starts (``start``: a previous ``(X, logits)`` of the same client, or None: random
    images and the labels recovered from the last-layer bias)."""

    params_at_send: torch.Tensor
    update: torch.Tensor
    gen: torch.Generator
    start: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class Inverted:
    x: torch.Tensor        # [n, *input] the synthetic inputs with the lowest residual seen
    logits: torch.Tensor   # [n, C] their label logits (soft labels = softmax)
    residual: float        # relative L1 residual at that iterate
    steps: int             # optimiser steps taken (the plateau stop may end before the cap)

    @property
    def soft(self) -> torch.Tensor:
        return torch.softmax(self.logits, -1)


def _start(model: nn.Module, spec: ParamSpec, prob: Problem, *, samples: int, local_steps: int, lr: float,
           batch_size: int, input_shape: tuple, box) -> tuple[torch.Tensor, torch.Tensor]:
    if prob.start is not None:  # warm start: the client's previous synthetic set (its data is fixed)
        return prob.start[0].clone(), prob.start[1].clone()
    obs = Observation(threat="T2", kind="update", params=prob.params_at_send, value=prob.update,
                      num_samples=samples, num_clients=1, batch_size=batch_size, lr=lr, local_steps=local_steps)
    labels = recover_labels(model, obs, input_shape, prob.gen)
    classes = int(spec.unflatten(prob.params_at_send)[last_linear(model)[1]].numel())
    x = random_images(samples, input_shape, prob.gen, box)  # on the CPU generator: the same start on any device
    device = prob.params_at_send.device
    return x.to(device), LABEL_SCALE * torch.nn.functional.one_hot(labels, classes).float().to(device)


def invert_batch(model: nn.Module, spec: ParamSpec, problems: list[Problem], *, local_steps: int, lr: float,
                 batch_size: int, samples: int, input_shape: tuple, iterations: int, image_lr: float,
                 label_lr: float, tv: float, box: tuple[float, float] | None, plateau_steps: int = 0,
                 plateau_tol: float = 0.0, warm_step: float = 1.0, trace=None) -> list[Inverted]:
    """Step 1 for several stale answers at once: for each, ``(X, logits)`` with
    ``LocalUpdate(params_at_send, (X, softmax(logits))) ~ update``.

    The B problems are one optimisation over stacked tensors: the residual of each is computed with
    ``torch.func`` (the client's unrolled steps, ``grad`` of ``grad``) under ``vmap``, and Adam,
    sign and clamp act elementwise, so B problems together give what B separate runs give, in one
    pass (on whichever device the tensors live). The image step decays x0.1 three times: at 3/8,
    5/8 and 7/8 of ``iterations`` (IG's schedule), or, with ``plateau_steps``, whenever no problem's
    best residual improved by more than ``plateau_tol`` (relative) in the last ``plateau_steps``
    steps, and the fourth plateau (or ``iterations``) stops it: a convergence-based stop with a step
    cap. A warm-started problem (``Problem.start``) takes image steps ``warm_step`` times as large
    (ours; ``fedsim bench repair --warm-step`` measures it: no step size keeps the warm start's own
    repair error, a smaller one helps a little after 100+ steps). ``trace(step, residuals [B], best [B], best_x, best_logits)`` is called after every
    step (measurements). The best iterate seen per problem is returned."""
    from torch.func import functional_call, grad, vmap

    def loss(w, x, soft):
        return -(soft * torch.log_softmax(functional_call(model, spec.unflatten(w), (x,)), -1)).sum(-1).mean()

    n, b = samples, min(batch_size or samples, samples)

    def residual(x, logits, w0, update, norm):
        soft, w = torch.softmax(logits, -1), w0
        for s in range(local_steps):  # the client's local SGD, replayed (fixed cyclic minibatches)
            idx = torch.arange(s * b, s * b + b, device=x.device) % n
            w = w - lr * grad(loss)(w, x[idx], soft[idx])
        r = (w - w0 - update).abs().sum() / norm
        return r + tv * total_variation(x) if x.ndim == 4 else r, r  # TV: images only

    step_fn = vmap(grad(residual, argnums=(0, 1), has_aux=True))
    starts = [_start(model, spec, p, samples=samples, local_steps=local_steps, lr=lr, batch_size=batch_size,
                     input_shape=input_shape, box=box) for p in problems]
    x = torch.stack([s[0] for s in starts]).requires_grad_(True)
    logits = torch.stack([s[1] for s in starts]).requires_grad_(True)
    w0 = torch.stack([p.params_at_send for p in problems])
    update = torch.stack([p.update for p in problems])
    norm = update.abs().sum(1).clamp_min(1e-12)
    opt_x, opt_y = torch.optim.Adam([x], lr=image_lr), torch.optim.Adam([logits], lr=label_lr)
    # Per-problem image step: Adam's moments do not depend on its rate, so scaling the move it makes
    # is Adam at rate warm_step x image_lr for that problem.
    scale = torch.tensor([warm_step if p.start is not None else 1.0 for p in problems], dtype=x.dtype,
                         device=x.device).view(-1, *([1] * (x.ndim - 1)))
    scaled = bool((scale != 1).any())
    decay = StepDecay(opt_x, iterations, plateau_steps, plateau_tol)
    best_x, best_y = x.detach().clone(), logits.detach().clone()
    best = torch.full((len(problems),), float("inf"))
    steps = 0
    for steps in range(1, iterations + 1):
        (gx, gy), r = step_fn(x.detach(), logits.detach(), w0, update, norm)
        r = r.detach().cpu()
        better = r < best  # NaN compares False: a diverged iterate is never kept
        if better.any():
            best = torch.where(better, r, best)
            on = better.to(x.device)
            best_x[on], best_y[on] = x.detach()[on], logits.detach()[on]
        if trace is not None:
            trace(steps, r, best, best_x, best_y)
        if not torch.isfinite(r).any():
            break
        x.grad, logits.grad = gx.sign(), gy
        before = x.detach().clone() if scaled else None
        opt_x.step()
        opt_y.step()
        if scaled:
            with torch.no_grad():
                x.copy_(before + scale * (x - before))
        if box is not None:
            with torch.no_grad():
                x.clamp_(*box)
        if decay.after_step(best):
            break
    return [Inverted(best_x[i], best_y[i], float(best[i]), steps) for i in range(len(problems))]


def invert(model: nn.Module, spec: ParamSpec, params_at_send: torch.Tensor, update: torch.Tensor, *,
           gen: torch.Generator, start=None, **settings) -> Inverted:
    """``invert_batch`` for one stale answer."""
    return invert_batch(model, spec, [Problem(params_at_send, update, gen, start)], **settings)[0]


def repair_batch(model: nn.Module, spec: ParamSpec, problems: list[Problem], params_now: torch.Tensor, *,
                 local_steps: int, lr: float, batch_size: int, settings, input_shape: tuple,
                 box: tuple[float, float] | None = None, margin: float | None = None) -> list[Repaired]:
    """Steps 1-3 for the stale answers of one round that share the client's local steps, inverted
    together (``invert_batch``); ``settings`` is a ``fedsim.config.RepairConfig``.

    ``margin`` (the ``"estimated"`` policy's threshold) decides between the repaired and the stale
    update; ``None`` always takes the repaired one."""
    t0 = time.perf_counter()
    model.train()  # the mode clients train in
    device = next(model.parameters()).device
    problems = [Problem(p.params_at_send.to(device), p.update.to(device), p.gen,
                        None if p.start is None else (p.start[0].to(device), p.start[1].to(device)))
                for p in problems]
    found = invert_batch(model, spec, problems, local_steps=local_steps, lr=lr, batch_size=batch_size,
                         samples=settings.samples, input_shape=input_shape, iterations=settings.iterations,
                         image_lr=settings.image_lr, label_lr=settings.label_lr, tv=settings.tv, box=box,
                         plateau_steps=settings.plateau_steps, plateau_tol=settings.plateau_tol,
                         warm_step=settings.warm_step)
    replay = dict(steps=local_steps, lr=lr, batch_size=batch_size)
    out = []
    for prob, inv in zip(problems, found):
        update = prob.update
        then = local_update(model, spec, prob.params_at_send, inv.x, inv.soft, **replay).detach()
        now = local_update(model, spec, params_now.to(device), inv.x, inv.soft, **replay).detach()
        norm = update.abs().sum().clamp_min(1e-12)
        drift = float(_rel_l1(now - then, norm))
        residual = float(_rel_l1(then - update, norm))
        if settings.mode == "replace":
            repaired, expected_error = now, residual
        else:  # the drift estimate is about as wrong, relatively, as D_rec is
            repaired, expected_error = update + (now - then), residual * drift
        finite = math.isfinite(residual) and bool(torch.isfinite(repaired).all())  # a failed inversion is never used
        use = finite and (margin is None or margin * expected_error < drift)
        out.append(Repaired((repaired if use else update.clone()).cpu(), use, residual, drift, 0.0, inv.steps,
                            (inv.x.cpu(), inv.logits.cpu())))
    seconds = (time.perf_counter() - t0) / max(len(out), 1)  # the batch's time, shared by its answers
    return [dataclasses.replace(r, seconds=seconds) for r in out]


def repair_update(model: nn.Module, spec: ParamSpec, params_at_send: torch.Tensor, params_now: torch.Tensor,
                  update: torch.Tensor, *, gen: torch.Generator, start=None, **kw) -> Repaired:
    """``repair_batch`` for one stale answer."""
    return repair_batch(model, spec, [Problem(params_at_send, update, gen, start)], params_now, **kw)[0]
