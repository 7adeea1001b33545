"""Participation models (the environment): who starts work each round, how many local steps, and
how long the answer takes. See ``models.py``.

``build_participation(name, num_clients, seed=..., label_hist=..., **params)`` validates every
parameter and raises ValueError naming it. Parameters (all optional unless noted):

- all models: ``local_steps`` (int >= 1, default 5), ``step_time`` (s/step, default 0.05),
  ``speed_spread`` (lognormal sigma of per-client speed, default 0), ``comm_time`` (s, default 0.1);
  device heterogeneity intertwined with data (Wang & Gao, arXiv 2309.13536): ``slow_classes``
  (class ids) makes every client whose data is at least ``slow_share`` (default 0.5) made of those
  classes ``slow_factor`` (>= 1, default 10) times slower; needs ``label_hist``
- ``uniform``: ``clients_per_round`` (required, 1..N)
- ``fixed-epoch``: ``clients_per_round`` (required, divides N): a seeded split into N/k groups
  taking turns, the participation pattern DP matrix factorization plans for
- ``cyclic-poisson``: ``groups`` (b, required) and ``p`` (q, required): a seeded split into b
  groups, group (t − 1) mod b eligible at round t, each eligible client joins with probability q
  (the b-cyclic Poisson sampling amplified BandMF is accounted for)
- ``bernoulli``/``markov``/``cyclic``/``anarchic`` take probabilities from ``prob_mode``:
  ``"label-linked"`` (FedAU, arXiv 2306.03401, App. D; needs ``label_hist``; ``alpha``, ``p_mean``, ``p_min``),
  ``"heterogeneous"`` (Beta; ``p_mean``, ``p_min``, ``prob_spread``), ``"constant"`` (``p``), or
  explicit ``probs`` [N]. Default mode: ``"constant"`` if ``p`` is given, else ``"label-linked"``
  if ``label_hist`` is given, else ``"heterogeneous"``.
- ``markov``: ``markov_a`` (default 0.05); ``cyclic``: ``period`` (default 100);
  ``anarchic``: ``min_steps`` (default 1), ``max_steps`` (default max(local_steps, min_steps)), ``jitter``
  (bool, default True).

One ``seed`` drives independent streams (probabilities, timing, sampling) via fixed tags.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .models import (AnarchicParticipation, BernoulliParticipation, CyclicParticipation,
                     CyclicPoissonParticipation, FixedEpochParticipation, FullParticipation, MarkovParticipation, Participation,
                     RoundPlan, Timing, UniformParticipation)
from .probabilities import heterogeneous_probs, label_linked_probs

__all__ = ["PARTICIPATION", "build_participation", "slow_clients", "Participation", "RoundPlan", "Timing",
           "label_linked_probs", "heterogeneous_probs", "FullParticipation", "UniformParticipation",
           "BernoulliParticipation", "MarkovParticipation", "CyclicParticipation",
           "AnarchicParticipation", "FixedEpochParticipation", "CyclicPoissonParticipation"]

PARTICIPATION = ("full", "uniform", "bernoulli", "markov", "cyclic", "anarchic", "fixed-epoch", "cyclic-poisson")
PROB_MODES = ("label-linked", "heterogeneous", "constant")

_COMMON = {"local_steps", "step_time", "speed_spread", "comm_time", "slow_classes", "slow_factor", "slow_share"}
_PROB = {"prob_mode", "probs", "p", "p_mean", "p_min", "alpha", "prob_spread"}
_ALLOWED = {
    "full": _COMMON,
    "uniform": _COMMON | {"clients_per_round"},
    "bernoulli": _COMMON | _PROB,
    "markov": _COMMON | _PROB | {"markov_a"},
    "cyclic": _COMMON | _PROB | {"period"},
    "anarchic": _COMMON | _PROB | {"min_steps", "max_steps", "jitter"},
    "fixed-epoch": _COMMON | {"clients_per_round"},
    "cyclic-poisson": _COMMON | {"groups", "p"},
}
# Which probability parameters each prob_mode reads (others are rejected, not silently ignored).
_MODE_PARAMS = {"label-linked": {"alpha", "p_mean", "p_min"},
                "heterogeneous": {"p_mean", "p_min", "prob_spread"}, "constant": {"p"}}


def _int(params: dict, key: str, default: int | None, lo: int, hi: int | None = None) -> int:
    v = params.get(key, default)
    if v is None:
        raise ValueError(f"participation.{key} is required")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"participation.{key} must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"participation.{key} must be {bound}, got {v}")
    return int(v)


def _float(params: dict, key: str, default: float, lo: float, hi: float = math.inf,
           lo_open: bool = False) -> float:
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"participation.{key} must be a number, got {v!r}")
    v = float(v)
    if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi):
        left = "(" if lo_open else "["
        raise ValueError(f"participation.{key} must be in {left}{lo}, {hi}], got {v}")
    return v


def _probs(name: str, num_clients: int, seed: int, label_hist: np.ndarray | None,
           params: dict) -> np.ndarray:
    if "probs" in params:
        extra = sorted(set(params) & (_PROB - {"probs"}))
        if extra:
            raise ValueError(f"participation.probs cannot be combined with {extra}")
        p = np.asarray(params["probs"], dtype=np.float64)
        if p.shape != (num_clients,) or not np.all((p > 0) & (p <= 1)):
            raise ValueError(f"participation.probs must be [{num_clients}] values in (0, 1]")
        return p
    default = ("constant" if "p" in params
               else "label-linked" if label_hist is not None else "heterogeneous")
    mode = params.get("prob_mode", default)
    if mode not in PROB_MODES:
        raise ValueError(f"participation.prob_mode must be one of {PROB_MODES}, got {mode!r}")
    stray = sorted(set(params) & (_PROB - {"prob_mode"} - _MODE_PARAMS[mode]))
    if stray:
        raise ValueError(f"participation.{stray[0]} does not apply to prob_mode={mode!r} "
                         f"(model {name!r})")
    if mode == "constant":
        return np.full(num_clients, _float(params, "p", 0.1, 0.0, 1.0, lo_open=True))
    p_mean = _float(params, "p_mean", 0.1, 0.0, 1.0, lo_open=True)
    p_min = _float(params, "p_min", 0.02, 0.0, 1.0, lo_open=True)
    if mode == "heterogeneous":
        spread = _float(params, "prob_spread", 1.0, 0.0)
        try:
            return heterogeneous_probs(num_clients, seed=seed, p_mean=p_mean, p_min=p_min,
                                       spread=spread)
        except ValueError as e:
            raise ValueError(f"participation.prob_spread: {e}") from None
    if label_hist is None:
        raise ValueError(f"prob_mode='label-linked' for participation {name!r} needs label_hist")
    hist = np.asarray(label_hist)
    if hist.ndim != 2 or hist.shape[0] != num_clients:
        raise ValueError(f"label_hist must have shape [{num_clients}, C], got {hist.shape}")
    alpha = _float(params, "alpha", 0.1, 0.0, lo_open=True)
    return label_linked_probs(hist, seed=seed, alpha=alpha, p_mean=p_mean, p_min=p_min)


def slow_clients(label_hist: np.ndarray | None, classes, share: float = 0.5) -> np.ndarray:
    """Bool [N]: clients whose data is at least ``share`` made of ``classes``."""
    if label_hist is None:
        raise ValueError("participation.slow_classes needs the clients' label histograms")
    hist = np.asarray(label_hist, dtype=np.float64)
    if not isinstance(classes, (list, tuple)) or not classes or \
            not all(isinstance(c, (int, np.integer)) and 0 <= c < hist.shape[1] for c in classes):
        raise ValueError(f"participation.slow_classes must be a non-empty list of class ids in 0..{hist.shape[1] - 1}, "
                         f"got {classes!r}")
    frac = hist[:, list(classes)].sum(1) / np.maximum(hist.sum(1), 1)
    return frac >= share


def build_participation(name: str, num_clients: int, *, seed: int,
                        label_hist: np.ndarray | None = None, **params: Any) -> Participation:
    """Build a participation model by registry name; every parameter is validated (ValueError)."""
    if name not in PARTICIPATION:
        raise ValueError(f"unknown participation model {name!r}; choose one of {PARTICIPATION}")
    for key in params:
        if key not in _ALLOWED[name]:
            raise ValueError(f"unknown participation parameter {key!r} for {name!r}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) \
            or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    local_steps = _int(params, "local_steps", 5, 1)
    timing = Timing.heterogeneous(
        num_clients, seed, step_time=_float(params, "step_time", 0.05, 0.0, lo_open=True),
        spread=_float(params, "speed_spread", 0.0, 0.0), comm_time=_float(params, "comm_time", 0.1, 0.0))
    if "slow_classes" in params:
        timing = timing.slowed(slow_clients(label_hist, params["slow_classes"], _float(params, "slow_share", 0.5, 0.0, 1.0,
                                                                                     lo_open=True)),
                               _float(params, "slow_factor", 10.0, 1.0))
    elif "slow_factor" in params or "slow_share" in params:
        raise ValueError("participation.slow_factor and slow_share need participation.slow_classes")
    common = {"seed": seed, "local_steps": local_steps, "timing": timing}
    if name == "full":
        return FullParticipation(num_clients, **common)
    if name == "uniform":
        k = _int(params, "clients_per_round", None, 1, num_clients)
        return UniformParticipation(num_clients, k, **common)
    if name == "fixed-epoch":
        k = _int(params, "clients_per_round", None, 1, num_clients)
        return FixedEpochParticipation(num_clients, k, **common)
    if name == "cyclic-poisson":
        groups = _int(params, "groups", None, 1, num_clients)
        if "p" not in params:
            raise ValueError("participation.p is required for 'cyclic-poisson'")
        return CyclicPoissonParticipation(num_clients, groups, _float(params, "p", 0.1, 0.0, 1.0, lo_open=True),
                                          **common)
    probs = _probs(name, num_clients, seed, label_hist, params)
    if name == "bernoulli":
        return BernoulliParticipation(num_clients, probs, **common)
    if name == "markov":
        a = _float(params, "markov_a", 0.05, 0.0, 1.0, lo_open=True)
        return MarkovParticipation(num_clients, probs, a=a, **common)
    if name == "cyclic":
        return CyclicParticipation(num_clients, probs, period=_int(params, "period", 100, 1), **common)
    min_steps = _int(params, "min_steps", 1, 1)
    max_steps = _int(params, "max_steps", max(local_steps, min_steps), min_steps)
    jitter = params.get("jitter", True)
    if not isinstance(jitter, (bool, np.bool_)):
        raise ValueError(f"participation.jitter must be a bool, got {jitter!r}")
    return AnarchicParticipation(num_clients, probs, min_steps=min_steps, max_steps=max_steps,
                                 jitter=bool(jitter), **common)
