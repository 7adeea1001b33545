"""Differential privacy with correlated noise: matrix-factorization planning (offline),
streaming noise (online) and accounting (Choquette-Choo et al., ICML 2023, arXiv 2211.06530).

Training-loop API::

    schema = ParticipationSchema("min-separation", steps=T, participations=k, separation=b)
    f = plan_factorization("banded", schema, bands=b)          # or Factorization.load(path)
    sigma = noise_multiplier_for(eps, delta, correlated=True)  # one Gaussian release
    stream = NoiseStream(f, dim=D, seed=seed, std=noise_std(sigma, clip, f.sensitivity().value))
    # each round t: admit only clients with schema.allows(history, t); then
    noisy_sum = clipped_sum + stream.next()                   # [D]
    spent = epsilon_after(t + 1, sigma, delta, factorization=f)
"""

from .accounting import (ACCOUNTANTS, dp_event, epsilon, epsilon_after, noise_multiplier_for,
                         zcdp_epsilon_bound)
from .factorization import C_from_gram, Factorization, Metrics, normalize_columns
from .mechanisms import MECHANISMS, plan_factorization
from .noise import NoiseStream, dense_noise, gaussian_row, noise_std
from .patterns import KINDS, ParticipationSchema, ParticipationViolation
from .sensitivity import Sensitivity, brute_force_squared, sensitivity_squared
from .workloads import LR_DECAYS, lr_schedule, prefix_sum, workload

__all__ = ["ACCOUNTANTS", "dp_event", "epsilon", "epsilon_after", "noise_multiplier_for",
           "zcdp_epsilon_bound", "C_from_gram", "Factorization", "Metrics", "normalize_columns",
           "MECHANISMS", "plan_factorization", "NoiseStream", "dense_noise", "gaussian_row",
           "noise_std", "KINDS", "ParticipationSchema", "ParticipationViolation", "Sensitivity",
           "brute_force_squared", "sensitivity_squared", "LR_DECAYS", "lr_schedule", "prefix_sum",
           "workload"]
