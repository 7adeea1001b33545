"""Adaptive clipping for user-level DP: the clip norm tracks a quantile of the clients' update norms
(Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive Clipping",
NeurIPS 2021, arXiv 1905.03871, Alg. 1 and Thm 1).

Each round t with clip norm C_t, every answer contributes the bit b_i = 1[‖Δ_i‖ <= C_t]; the server
releases the centred noisy count ``Σ_i (b_i − 1/2) + N(0, σ_b²)`` (adding or removing one client
moves it by 1/2), estimates the unclipped fraction ``b̄ = count / m + 1/2`` with m the expected
cohort size, and takes the geometric step ``C_{t+1} = C_t · exp(−η_C (b̄ − γ))``.

Privacy (Thm 1): the round's two Gaussian releases (the update sum with multiplier z_Δ, the count
with σ_b at sensitivity 1/2) are together one Gaussian with multiplier z, where
``z^-2 = z_Δ^-2 + (2σ_b)^-2``; the accountant keeps accounting z, and the updates get
``z_Δ = (z^-2 − (2σ_b)^-2)^-1/2``. For a correlated (matrix-factorization) release accounted as a
single Gaussian over all rounds, a client's k participations move the count vector by sqrt(k)/2,
so ``z^-2 = z_Δ^-2 + k (2σ_b)^-2`` (ours: the same argument on the whole release). Scaling round t's
correlated noise by the public C_t keeps the release a factorization mechanism on Δ/C_t (norm <= 1).

Defaults are the paper's: γ = 0.5, η_C = 0.2, σ_b = m / 20.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..privacy import gaussian_row

_COUNT_TAG = 0xC11F  # keys the count noise apart from the update noise


def update_noise_multiplier(z: float, count_noise: float, participations: int = 1) -> float:
    """z_Δ such that the updates (z_Δ) and the counts (σ_b) together spend a Gaussian of multiplier z."""
    if z <= 0:
        return 0.0
    rest = z ** -2 - participations * (2.0 * count_noise) ** -2
    if rest <= 0:
        raise ValueError(f"privacy.clip_count_noise = {count_noise:g} is too small for noise multiplier {z:.4g}: "
                         f"the count alone would spend the budget (need > {math.sqrt(participations) * z / 2:.4g})")
    return rest ** -0.5


class QuantileClip:
    """The clip norm of Andrew et al.'s Alg. 1 (module docstring); ``observe`` runs once a round."""

    def __init__(self, initial: float, *, target_quantile: float, lr: float, count_noise: float,
                 expected_cohort: float, seed: int):
        if not 0 < target_quantile < 1:
            raise ValueError(f"privacy.target_quantile must be in (0, 1), got {target_quantile}")
        if not lr > 0:
            raise ValueError(f"privacy.clip_lr must be > 0, got {lr}")
        if not expected_cohort > 0:
            raise ValueError(f"adaptive clipping needs an expected cohort size > 0, got {expected_cohort}")
        self.norm, self.gamma, self.lr = float(initial), float(target_quantile), float(lr)
        self.count_noise, self.m = float(count_noise), float(expected_cohort)
        self.seed = int(np.random.SeedSequence([int(seed), _COUNT_TAG]).generate_state(1)[0])

    def observe(self, server_round: int, norms: torch.Tensor) -> float:
        """Update the clip norm from this round's update norms; -> the noisy unclipped fraction b̄."""
        centred = float(((norms <= self.norm).double() - 0.5).sum())
        noise = self.count_noise * float(gaussian_row(self.seed, server_round, 1)[0])
        unclipped = (centred + noise) / self.m + 0.5
        self.norm *= math.exp(-self.lr * (unclipped - self.gamma))
        return unclipped

    def state_dict(self) -> dict:
        return {"norm": self.norm}

    def load_state_dict(self, state: dict) -> None:
        self.norm = float(state["norm"])
