"""The optimiser of gradient inversion: Adam (signed by default, Inverting Gradients, Geiping et al.,
NeurIPS 2020, arXiv 2003.14053) with IG's step decay, a box on the inputs and an optional learned
alpha (SME); the step schedule shared with staleness repair; and the random starting images."""

from __future__ import annotations

import torch

__all__ = ["StepDecay", "ig_schedule", "optimise", "random_images"]


def ig_schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.MultiStepLR:
    milestones = sorted({max(1, int(steps * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)


class StepDecay:
    """IG's three x0.1 decays of the step size, and when to stop.

    Without ``plateau_steps`` (the paper's schedule) the decays come at 3/8, 5/8 and 7/8 of ``steps``
    and the run takes all ``steps``. With ``plateau_steps`` = P (ours: a convergence-based stop) a
    decay comes whenever the best loss -- of every problem, when several are optimised together --
    improved by no more than ``plateau_tol`` (relative) over the last P steps, and the fourth such
    plateau stops the run; ``steps`` stays the cap. Call :meth:`after_step` once per step with the
    best loss so far (a float or a tensor of per-problem bests); it returns True to stop."""

    def __init__(self, opt: torch.optim.Optimizer, steps: int, plateau_steps: int = 0, plateau_tol: float = 0.0):
        self.opt, self.plateau_steps, self.plateau_tol = opt, plateau_steps, plateau_tol
        self.sched = None if plateau_steps else ig_schedule(opt, steps)
        self.decays = 0
        self.history: list[torch.Tensor] = []

    def after_step(self, best) -> bool:
        if self.sched is not None:
            self.sched.step()
            return False
        self.history.append(torch.as_tensor(best, dtype=torch.float64).clone())
        if len(self.history) <= self.plateau_steps:
            return False
        before = self.history.pop(0)
        if not bool((self.history[-1] >= before * (1 - self.plateau_tol)).all()):
            return False  # some problem still improves
        if self.decays == 3:
            return True
        self.decays += 1
        for group in self.opt.param_groups:
            group["lr"] *= 0.1
        self.history.clear()
        return False


def optimise(loss_fn, x0: torch.Tensor, *, steps: int, lr: float, signed: bool,
             box: tuple[float, float] | None, alpha: torch.Tensor | None = None,
             alpha_lr: float = 1e-3, plateau_steps: int = 0, plateau_tol: float = 0.0
             ) -> tuple[torch.Tensor, float, float | None, int]:
    """Adam (signed by default) on ``x``, optionally with a learned ``alpha`` in [0, 1], for ``steps``
    steps or, with ``plateau_steps``, until :class:`StepDecay`'s convergence stop.

    Returns the iterate with the lowest loss seen, that loss, alpha at that point, and the steps run."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    decay = StepDecay(opt, steps, plateau_steps, plateau_tol)
    opt_a = torch.optim.Adam([alpha], lr=alpha_lr) if alpha is not None else None
    best = (x.detach().clone(), float("inf"), None if alpha is None else float(alpha.detach()))
    done = 0
    for done in range(1, steps + 1):
        opt.zero_grad(set_to_none=False)
        if opt_a is not None:
            opt_a.zero_grad(set_to_none=False)
        loss = loss_fn(x, alpha)
        value = float(loss.detach())
        if value != value:  # NaN: keep the best so far
            break
        if value < best[1]:
            best = (x.detach().clone(), value, None if alpha is None else float(alpha.detach()))
        loss.backward()
        if signed:
            x.grad.sign_()
        opt.step()
        if opt_a is not None:
            opt_a.step()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
        if box is not None:
            with torch.no_grad():
                x.clamp_(*box)
        if decay.after_step(best[1]):
            break
    return (*best, done)


def random_images(n: int, input_shape: tuple, gen: torch.Generator, box) -> torch.Tensor:
    x = torch.randn(n, *input_shape, generator=gen)
    return x.clamp(*box) if box is not None else x
