"""User-level differentially private FedAvg with independent or correlated (matrix-factorization) noise.

Each round t the server clips every client's model delta to L2 norm S (``fedsim.core.clipping``),
sums, adds the noise for this round and divides by the *expected* cohort size K (a fixed
denominator, so the noise scale does not depend on who answered):

    x_{t+1} = x_t + eta_g * (sum_i clip(Delta_i) + std * w_t) / K

- ``dp-fedavg``: w_t ~ N(0, I) i.i.d. (McMahan et al., ICLR 2018, arXiv 1710.06963, Algorithm 1 with
  a fixed denominator), std = z S. Under ``uniform`` or constant-``p`` ``bernoulli`` participation it
  is accounted as n Poisson-subsampled Gaussian steps with q = K / N (uniform sampling without
  replacement is accounted as Poisson with the same rate, the usual approximation); under
  ``fixed-epoch`` it is the identity factorization below.
- ``dp-mf``: w_t is row t of C^{-1} Z for a factorization A = B C of the prefix-sum workload
  (Choquette-Choo et al., ICML 2023, arXiv 2211.06530, §2; BandMF arXiv 2306.08153; BLT arXiv
  2404.16706; tree aggregation arXiv 2103.00039), streamed online by ``fedsim.privacy.NoiseStream``,
  std = z S sens(C) where sens is C's sensitivity under the participation schema the run follows.
  The whole n-round release is one Gaussian mechanism with noise multiplier z. Participation must
  be ``fixed-epoch`` (every client exactly b = N / K rounds apart); the strategy checks every
  client against the schema before sending it work and raises ``ParticipationViolation`` rather
  than break the guarantee.

``privacy.epsilon > 0`` picks the smallest z reaching that epsilon; ``dp/epsilon`` in each round's
metrics is the epsilon spent so far (``epsilon_after``). Both use the RDP accountant, so the
reported epsilon never exceeds the target; ``privacy_summary`` adds the tighter PLD epsilon.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..core.clipping import clip_rows
from ..participation import FixedEpochParticipation, UniformParticipation
from ..participation.models import BernoulliParticipation
from ..privacy import (Factorization, NoiseStream, ParticipationSchema, ParticipationViolation, epsilon_after,
                       noise_multiplier_for, noise_std, plan_factorization)
from .base import Cohort, FedsimStrategy

log = logging.getLogger("fedsim")
logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting logs every RDP order it skips


class DPStrategy(FedsimStrategy):
    name = "dp-mf"

    def __init__(self, participation, *, privacy: dict, rounds: int, **kw):
        super().__init__(participation, **kw)
        self.rounds = int(rounds)
        self.clip_norm = float(privacy["clip_norm"])
        self.delta = float(privacy["delta"])
        self.mechanism = "identity" if self.name == "dp-fedavg" else privacy["mechanism"]
        self.sampling, self.schema = self._pattern(participation)
        self.cohort_size = float(participation.expected_rate().sum())
        self.factorization = None if self.schema is None else self._factorization(privacy)
        sens = 1.0 if self.factorization is None else self.factorization.sensitivity().value
        self.noise_multiplier = self._calibrate(privacy)
        self.std = noise_std(self.noise_multiplier, self.clip_norm, sens)
        self.history: dict[int, list[int]] = {}  # client -> 0-based rounds it was sent work in
        self.stream: NoiseStream | None = None
        log.info("%s: mechanism %s, noise multiplier %.4g, noise std %.4g, sampling %.4g", self.name,
                 self.mechanism, self.noise_multiplier, self.std, self.sampling)

    # --- planning ----------------------------------------------------------------------------------
    def _pattern(self, participation) -> tuple[float, ParticipationSchema | None]:
        n = self.rounds
        if isinstance(participation, FixedEpochParticipation):
            b = participation.epoch_rounds
            k = math.ceil(n / b)
            if k == 1:  # a run shorter than one epoch: everyone participates at most once
                return 1.0, ParticipationSchema.single(n)
            kind = "fixed-epoch" if n == k * b else "min-separation"
            return 1.0, ParticipationSchema(kind, n, k, b)
        if self.name == "dp-fedavg":
            rate = participation.expected_rate()
            poisson_like = isinstance(participation, UniformParticipation) or (
                isinstance(participation, BernoulliParticipation) and np.allclose(rate, rate[0]))
            if poisson_like:
                return float(rate[0]), None
        raise ValueError(f"{self.name} needs participation 'fixed-epoch'"
                         + (" (or 'uniform' / constant-p 'bernoulli' for dp-fedavg)" if self.name == "dp-fedavg"
                            else "") + f", got '{participation.name}'")

    def _factorization(self, privacy: dict) -> Factorization:
        path = privacy.get("factorization")
        if path:
            try:
                f = Factorization.load(path)
            except (OSError, KeyError, ValueError) as exc:  # missing, corrupt or foreign file
                raise ValueError(f"cannot read privacy.factorization '{path}': {exc}") from None
            if f.schema != self.schema or f.mechanism != self.mechanism:
                raise ValueError(f"factorization {path} was planned for {f.mechanism} under {f.schema.to_dict()}, "
                                 f"this run needs {self.mechanism} under {self.schema.to_dict()}")
            return f
        bands = privacy.get("bands") or None
        return plan_factorization(self.mechanism, self.schema, **({"bands": bands} if self.mechanism == "banded" else {}))

    def _calibrate(self, privacy: dict) -> float:
        target = float(privacy.get("epsilon") or 0.0)
        if target <= 0:
            return float(privacy["noise_multiplier"])
        if self.factorization is None:
            return noise_multiplier_for(target, self.delta, steps=self.rounds, sampling=self.sampling,
                                        accountant="rdp")
        return noise_multiplier_for(target, self.delta, correlated=True, accountant="rdp")

    # --- rounds --------------------------------------------------------------------------------------
    def init_state(self, dim: int) -> None:
        f = self.factorization or plan_factorization("identity", ParticipationSchema.single(self.rounds))
        self.stream = NoiseStream(f, dim, seed=self.seed, std=self.std)

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        t = server_round - 1
        for cid in sorted(c for c, r in self.in_flight.items() if r == server_round):
            past = self.history.get(cid, [])
            if self.schema is not None and not self.schema.allows(past, t):
                raise ParticipationViolation(
                    f"round {server_round}: client {cid} (past rounds {[r + 1 for r in past]}) would break the "
                    f"{self.schema.kind} pattern the privacy guarantee assumes (k={self.schema.participations}, "
                    f"b={self.schema.separation}, n={self.schema.steps})")
            self.history[cid] = past + [t]
        return messages

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort):
        if server_round > self.rounds:
            raise ValueError(f"the privacy plan covers {self.rounds} rounds, round {server_round} was asked for")
        clipped, norms = clip_rows(cohort.updates, self.clip_norm)
        noise = self.stream.next()  # advance even for an empty cohort: round t's noise belongs to round t
        direction = (clipped.sum(0) + noise) / self.cohort_size
        spent = epsilon_after(server_round, self.noise_multiplier, self.delta, sampling=self.sampling,
                              factorization=self.factorization) if self.noise_multiplier > 0 else math.inf
        metrics = {"dp/epsilon": spent, "dp/delta": self.delta, "dp/noise_multiplier": self.noise_multiplier,
                   "dp/noise_std": self.std, "dp/clipped_fraction": float((norms > self.clip_norm).double().mean())
                   if norms.numel() else 0.0}
        return params + self.server_lr * direction, metrics

    def privacy_summary(self, rounds_done: int) -> dict:
        """Privacy of the first ``rounds_done`` rounds (epsilon by RDP, as in the metrics, and by PLD)."""
        eps = {a: epsilon_after(rounds_done, self.noise_multiplier, self.delta, sampling=self.sampling,
                                factorization=self.factorization, accountant=a) if self.noise_multiplier > 0
               else math.inf for a in ("rdp", "pld")}
        return {"epsilon": eps["rdp"], "epsilon_pld": eps["pld"], "delta": self.delta, "mechanism": self.mechanism,
                "noise_multiplier": self.noise_multiplier, "clip_norm": self.clip_norm, "noise_std": self.std,
                "schema": None if self.schema is None else self.schema.to_dict(), "sampling": self.sampling}

    # --- state ---------------------------------------------------------------------------------------
    def algorithm_state(self) -> dict:
        return {"noise": self.stream.state_dict(), "history": {c: list(h) for c, h in self.history.items()}}

    def load_algorithm_state(self, state: dict) -> None:
        if state:
            self.stream.load_state_dict(state["noise"])
            self.history = {int(c): list(h) for c, h in state["history"].items()}


class DPFedAvgStrategy(DPStrategy):
    name = "dp-fedavg"
