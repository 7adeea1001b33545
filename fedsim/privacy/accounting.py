"""Privacy accounting with Google's ``dp_accounting`` (RDP and PLD; no JAX/TF).

Two kinds of release:

- **independent noise** (DP-SGD / DP-FedAvg, Abadi et al., arXiv 1607.00133, §3.1; RDP of the
  subsampled Gaussian, Mironov et al., arXiv 1908.10530): ``steps`` Poisson-sampled Gaussian
  mechanisms with sampling probability q, noise std σ·ζ each.
- **correlated noise** (any matrix factorization with Z ~ N(0, (σ·ζ·sens(C))²), Denisov et al.,
  arXiv 2202.08312, Thm 2.1; Choquette-Choo et al., arXiv 2211.06530, §2): the whole n-step
  release is **one** Gaussian mechanism with noise multiplier σ; never compose over steps,
  and no amplification by sampling;
- **amplified BandMF** (Choquette-Choo et al., arXiv 2306.08153, Thm 4): a column-normalised C
  with at most b bands under b-cyclic Poisson sampling (b groups taking turns, each member of the
  eligible group sampled with probability q) is as private as DP-SGD with Poisson sampling q,
  multiplier σ and ceil(n / b) steps (:func:`amplified_steps`); b = 1 is DP-SGD itself.

Epsilons are for add-or-remove-one neighbouring (one user's contributions zeroed), except for
**fixed-size cohorts drawn without replacement** (K of N each round; Wang, Balle, Kasiviswanathan,
arXiv 1808.00087, Thm 27, in ``dp_accounting``'s RDP accountant), which are accounted for
replace-one neighbouring (N is public). Under replace-one, one user's clipped contribution moves the
sum by up to 2S, so the Gaussian's multiplier relative to that sensitivity is z/2 (ours: the
conservative reading; it never under-reports). PLD does not support this event: RDP is used.
"""

from __future__ import annotations

import functools
import math

# dp_accounting (and the scipy.stats / scipy.signal it loads: ~1-2.5 s) is imported when first used,
# so runs without DP do not pay for it at start-up.

ACCOUNTANTS = ("rdp", "pld")
NEIGHBOURING = "add/remove one client"  # the relation of every epsilon here but without-replacement cohorts
REPLACE_ONE = "replace one client"       # fixed-size cohorts drawn without replacement


def dp_event(noise_multiplier: float, steps: int = 1, sampling: float = 1.0,
             correlated: bool = False) -> dp_accounting.DpEvent:
    """The DpEvent of a release (see module docstring). Without sampling, ``steps`` Gaussians
    with multiplier σ compose exactly into one with σ/sqrt(steps)."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}")
    if not 0 < sampling <= 1:
        raise ValueError(f"sampling must be in (0, 1], got {sampling}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    import dp_accounting

    if correlated:
        if sampling < 1:
            raise ValueError("correlated (matrix-factorization) noise gets no amplification by "
                             "sampling here: use sampling = 1")
        return dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling == 1:
        return dp_accounting.GaussianDpEvent(noise_multiplier / math.sqrt(steps))
    step = dp_accounting.PoissonSampledDpEvent(sampling, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, int(steps))


def amplified_steps(steps: int, bands: int) -> int:
    """The DP-SGD step count amplified BandMF's guarantee equals: ceil(n / b) (arXiv 2306.08153, Thm 4)."""
    if int(bands) != bands or bands < 1:
        raise ValueError(f"bands must be a positive integer, got {bands}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    return -(-int(steps) // int(bands))


def wor_event(noise_multiplier: float, steps: int, population: int, cohort: int) -> dp_accounting.DpEvent:
    """``steps`` rounds, each a Gaussian on a cohort of ``cohort`` of ``population`` drawn without
    replacement, for replace-one neighbouring (sensitivity 2S: multiplier z/2; module docstring)."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}")
    if not 1 <= cohort <= population:
        raise ValueError(f"need 1 <= cohort <= population, got {cohort} of {population}")
    import dp_accounting

    step = dp_accounting.SampledWithoutReplacementDpEvent(
        int(population), int(cohort), dp_accounting.GaussianDpEvent(noise_multiplier / 2.0))
    return dp_accounting.SelfComposedDpEvent(step, int(steps))


def _epsilon(event: dp_accounting.DpEvent, delta: float, accountant: str,
             pld_interval: float = 1e-4) -> float:
    """ε of an event; PLD uses pessimistic discretisation (an upper bound at any interval)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    import dp_accounting
    from dp_accounting import pld, rdp

    if accountant == "rdp-replace-one":
        acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    elif accountant == "rdp":
        acc = rdp.RdpAccountant()
    elif accountant == "pld":
        acc = pld.PLDAccountant(value_discretization_interval=pld_interval)
    else:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def epsilon(noise_multiplier: float, delta: float, steps: int = 1, sampling: float = 1.0, *,
            correlated: bool = False, accountants: tuple[str, ...] = ACCOUNTANTS) -> dict:
    """``{"epsilon_rdp": …, "epsilon_pld": …}`` of a release (σ = 1, δ = 1e-5, one step: RDP
    4.7285, PLD 4.3772). ``accountants`` restricts which are computed (PLD is the slow one)."""
    event = dp_event(noise_multiplier, steps, sampling, correlated)
    return {f"epsilon_{a}": _epsilon(event, delta, a) for a in accountants}


def zcdp_epsilon_bound(noise_multiplier: float, delta: float) -> float:
    """Closed-form bound for one Gaussian release: ρ = 1/(2σ²), ε = ρ + 2·sqrt(ρ·ln(1/δ))
    (Bun & Steinke, arXiv 1605.02065, Prop. 1.3)."""
    rho = 1.0 / (2.0 * noise_multiplier ** 2)
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def noise_multiplier_for(target_epsilon: float, delta: float, steps: int = 1, sampling: float = 1.0, *,
                         correlated: bool = False, accountant: str = "pld", rtol: float = 1e-4) -> float:
    """The smallest σ (to relative tolerance ``rtol``) whose ε is <= ``target_epsilon``.

    Bisection on σ (ε is decreasing in σ); the returned σ is the bracket's upper end, so it
    always achieves the target. PLD runs with a 1e-3 loss discretisation here (10x faster than
    the 1e-4 of :func:`epsilon`, still a pessimistic upper bound; ε differs by ~1e-6).
    """
    def eps(sigma: float) -> float:
        return _epsilon(dp_event(sigma, steps, sampling, correlated), delta, accountant, 1e-3)

    return _bisect(eps, target_epsilon, rtol)


def _bisect(eps, target_epsilon: float, rtol: float) -> float:
    """Bisection on σ for a decreasing ``eps(σ)``; returns the bracket's upper end."""
    if not target_epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {target_epsilon}")
    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 2.0
        if hi > 1e6:
            raise ValueError(f"epsilon={target_epsilon} is not reachable with sigma <= 1e6")
    lo = hi / 2.0
    while eps(lo) <= target_epsilon:
        hi, lo = lo, lo / 2.0
        if lo < 1e-4:
            return hi
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


@functools.lru_cache(maxsize=4096)
def wor_epsilon(rounds: int, noise_multiplier: float, delta: float, population: int, cohort: int) -> float:
    """ε after ``rounds`` without-replacement rounds (RDP, replace-one; cached like the ledger)."""
    if rounds == 0:
        return 0.0
    return _epsilon(wor_event(noise_multiplier, rounds, population, cohort), delta, "rdp-replace-one")


def wor_noise_multiplier_for(target_epsilon: float, delta: float, steps: int, population: int, cohort: int,
                             rtol: float = 1e-4) -> float:
    """The smallest σ reaching ``target_epsilon`` for without-replacement cohorts (RDP, replace-one)."""
    return _bisect(lambda s: wor_epsilon(steps, s, delta, population, cohort), target_epsilon, rtol)


@functools.lru_cache(maxsize=4096)
def _independent_epsilon(rounds: int, noise_multiplier: float, delta: float, sampling: float, accountant: str) -> float:
    """Cached: a run's per-round ledger asks for the same numbers again on resume and in every arm."""
    return _epsilon(dp_event(noise_multiplier, rounds, sampling), delta, accountant)


def epsilon_after(rounds_done: int, noise_multiplier: float, delta: float, *, sampling: float = 1.0,
                  factorization=None, accountant: str = "rdp") -> float:
    """ε spent after ``rounds_done`` rounds (a per-round ledger for training loops; RDP by
    default: milliseconds per call, where PLD takes ~0.1–1 s).

    Without a factorization: ``rounds_done`` independent (Poisson-sampled) Gaussian steps.
    With one: the first t rows of the release form one Gaussian mechanism whose sensitivity is
    the prefix's, so its noise multiplier is ``σ·sens(C)/sens_t(C) >= σ``; at t = n this is ε(σ).
    """
    if rounds_done < 0:
        raise ValueError(f"rounds_done must be >= 0, got {rounds_done}")
    if rounds_done == 0:
        return 0.0
    if factorization is None:
        return _independent_epsilon(rounds_done, float(noise_multiplier), float(delta), float(sampling), accountant)
    if rounds_done > factorization.steps:
        raise ValueError(f"rounds_done={rounds_done} exceeds the factorization's {factorization.steps} steps")
    full = factorization.sensitivity().value
    prefix = factorization.prefix_sensitivity(rounds_done).value
    sigma = noise_multiplier * full / prefix
    return _epsilon(dp_event(sigma, correlated=True, sampling=sampling), delta, accountant)
