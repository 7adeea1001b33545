"""The optimiser of gradient inversion: Adam (signed by default, Inverting Gradients, Geiping et al.,
NeurIPS 2020, arXiv 2003.14053) with IG's step decay, a box on the inputs and an optional learned
alpha (SME); and the random starting images."""

from __future__ import annotations

import torch

__all__ = ["ig_schedule", "optimise", "random_images"]


def ig_schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.MultiStepLR:
    milestones = sorted({max(1, int(steps * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)


def optimise(loss_fn, x0: torch.Tensor, *, steps: int, lr: float, signed: bool,
              box: tuple[float, float] | None, alpha: torch.Tensor | None = None,
              alpha_lr: float = 1e-3) -> tuple[torch.Tensor, float, float | None]:
    """Adam (signed by default) on ``x``, optionally with a learned ``alpha`` in [0, 1].

    Returns the iterate with the lowest loss seen, that loss, and alpha at that point."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = ig_schedule(opt, steps)
    opt_a = torch.optim.Adam([alpha], lr=alpha_lr) if alpha is not None else None
    best = (x.detach().clone(), float("inf"), None if alpha is None else float(alpha.detach()))
    for _ in range(steps):
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
        sched.step()
        if opt_a is not None:
            opt_a.step()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
        if box is not None:
            with torch.no_grad():
                x.clamp_(*box)
    return best


def random_images(n: int, input_shape: tuple, gen: torch.Generator, box) -> torch.Tensor:
    x = torch.randn(n, *input_shape, generator=gen)
    return x.clamp(*box) if box is not None else x
