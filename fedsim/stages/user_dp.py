"""User-level differential privacy as a server stage around any strategy with a noisy sum.

Each round the server clips every answer to L2 norm S (``fedsim.core.clipping``; DP-FedAvg,
McMahan et al., ICLR 2018, arXiv 1710.06963, Algorithm 1) and the strategy adds this round's noise
to its sum of contributions before its own normalisation (``server_update(..., noise=w_t)``, strategies with ``noisy_sum = True``):

- FedAvg with ``weighting = "fixed"``: ``x + eta_g (sum_i clip(Delta_i) + w_t) / K`` with K the
  expected cohort size (a fixed denominator, so who answered is not revealed by the scale);
- FedAU: ``x + eta_g (sum_i omega_i clip(Delta_i) + min(K, t) w_t) / N`` (omega_i is at most the
  cutoff K and at most the round t, so the noise is scaled by that public bound: ours);
- EF21: ``g <- g + (sum_i clip(c_i) + w_t) / N``; FedBuff: ``buf <- buf + w_t + sum_i s(tau_i) clip(Delta_i)``
  every round, flushed every K answers (the per-round noisy sums are released; the buffer is
  post-processing; ours, the FedBuff paper adds noise per flush).

``w_t`` is i.i.d. Gaussian (``privacy.mechanism = "identity"``, DP-FedAvg) or row t of ``C^{-1} Z`` for
a factorization of the prefix-sum workload (DP-MF: Choquette-Choo et al., ICML 2023, arXiv
2211.06530, §2; BandMF arXiv 2306.08153; BLT arXiv 2404.16706; tree aggregation arXiv 2103.00039),
streamed by ``fedsim.privacy.NoiseStream`` with std ``z S sens(C)``.

Accounting (the sampling that actually happens), every epsilon for the neighbouring relation
"add or remove one client" (its whole contribution; for DP-MF equivalently zeroing it out):
- ``fixed-epoch`` participation: the run follows a participation schema (every client exactly
  b = N/K rounds apart); the whole release is one Gaussian mechanism with multiplier z and the
  stage refuses to send work that would break the schema (``ParticipationViolation``);
- ``cyclic-poisson`` participation (b groups taking turns, each member of the eligible group joins
  with probability q) with ``identity`` or ``banded`` (at most b bands, column-normalised C):
  amplified BandMF (Choquette-Choo et al., arXiv 2306.08153, Thm 4), accounted as DP-SGD with
  Poisson sampling q and ceil(n / b) steps, with noise std z S (one participation's sensitivity);
  the stage refuses to send work to a client outside the round's group;
- ``bernoulli`` participation with one constant p, i.i.d. noise and a synchronous strategy: n
  Poisson-subsampled Gaussian steps with q = p (each client joins each round independently);
- ``full`` participation: n Gaussian steps, no amplification (q = 1);
- ``uniform`` participation (K of N drawn without replacement, i.i.d. noise, synchronous strategy):
  n without-replacement subsampled Gaussian steps for the *replace-one* relation (N is public),
  where one client moves the clipped sum by up to 2S (``fedsim.privacy.accounting.wor_event``);
  RDP only (PLD does not support the event), and outputs say so;
- an asynchronous strategy (FedBuff): a client answers at most once per round, so each round's
  sum has sensitivity S, but whether it is in a round's sum depends on earlier rounds and on
  latencies: no amplification is claimed (q = 1, n Gaussian steps), i.i.d. noise only.
``privacy.accountant`` (``pld``, the default, or ``rdp``; ``dp_accounting``) calibrates
``privacy.epsilon > 0`` to the smallest z reaching it (as ``fedsim privacy plan --epsilon`` does)
and reports ``dp/epsilon``, the epsilon spent so far, every round.

``privacy.adaptive_clip = true`` makes the clip norm track the ``privacy.target_quantile`` of the
update norms from a noised count, with any mechanism and participation above (Andrew et al., arXiv
1905.03871; ``stages.adaptive_clip``): the accounted multiplier z stays the one reported, and the
updates get the z_Δ that leaves room for the count. ``privacy.clip_norm`` is then the initial norm.

Note for EF21: the server clips c_i but client i keeps g_i + c_i unclipped, so once clipping is
active the server's g is no longer the mean of the clients' g_i (exact again with S large).
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np

from ..core.clipping import clip_rows
from ..participation import (CyclicPoissonParticipation, FixedEpochParticipation, FullParticipation,
                             UniformParticipation)
from ..participation.models import BernoulliParticipation
from ..privacy.accounting import NEIGHBOURING, REPLACE_ONE, amplified_steps, wor_epsilon, wor_noise_multiplier_for
from ..privacy.mechanisms import bandwidth
from ..privacy import (Factorization, NoiseStream, ParticipationSchema, ParticipationViolation, epsilon_after,
                       noise_multiplier_for, noise_std, plan_factorization)
from .adaptive_clip import QuantileClip, update_noise_multiplier
from .base import ServerStage

log = logging.getLogger("fedsim")
logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting logs every RDP order it skips


@functools.lru_cache(maxsize=8)
def _planned(mechanism: str, schema: ParticipationSchema, bands: int | None) -> Factorization:
    """Plans are pure: the arms and seeds of one process share them (an n = 1000 BandMF takes minutes)."""
    return plan_factorization(mechanism, schema, **({"bands": bands} if mechanism == "banded" else {}))


class UserLevelDP(ServerStage):
    name = "user-dp"

    def __init__(self, participation, *, privacy: dict, rounds: int, seed: int, asynchronous: bool = False):
        self.rounds, self.seed, self.asynchronous = int(rounds), int(seed), asynchronous
        self.accountant = privacy.get("accountant", "pld")
        self.neighbouring = NEIGHBOURING
        self.wor: tuple[int, int] | None = None  # (N, K) of fixed-size cohorts drawn without replacement
        self.cyclic_group: np.ndarray | None = None  # [N] group of each client under b-cyclic Poisson sampling
        self.clip_norm = float(privacy["clip_norm"])
        self.delta = float(privacy["delta"])
        self.mechanism = privacy.get("mechanism", "identity")
        self.sampling, self.schema = self._pattern(participation)
        self.factorization = None if self.schema is None else self._factorization(privacy)
        if self.cyclic_group is not None:
            sens = self._check_amplifiable(self.factorization)
        else:
            sens = 1.0 if self.factorization is None else self.factorization.sensitivity().value
        self.noise_multiplier = self._calibrate(privacy)
        self.adaptive = self._adaptive_clip(privacy, participation)
        # with adaptive clipping the stream is per unit clip and round t's noise is scaled by C_t
        self.std = (noise_std(self.update_multiplier, 1.0, sens) if self.adaptive
                    else noise_std(self.noise_multiplier, self.clip_norm, sens))
        self.participated: dict[int, list[int]] = {}  # client -> 0-based rounds it was sent work in
        self.stream: NoiseStream | None = None
        log.info("user-level DP: mechanism %s, noise multiplier %.4g, noise std %.4g, sampling %.4g",
                 self.mechanism, self.noise_multiplier, self.std, self.sampling)

    # --- planning ----------------------------------------------------------------------------------
    def _pattern(self, participation) -> tuple[float, ParticipationSchema | None]:
        """``(Poisson sampling rate q, participation schema or None)``; sets ``sampling_scheme``."""
        n = self.rounds
        if self.asynchronous:
            if self.mechanism != "identity":
                raise ValueError(f"privacy.mechanism '{self.mechanism}' plans for a participation schema by "
                                 "round, which answers arriving rounds late do not follow; an asynchronous "
                                 "strategy takes privacy.mechanism = 'identity'")
            self.sampling_scheme = "asynchronous arrivals, no amplification claimed"
            return 1.0, None
        if isinstance(participation, CyclicPoissonParticipation):
            if self.mechanism not in ("identity", "banded"):
                raise ValueError(f"participation 'cyclic-poisson' (amplified BandMF) takes privacy.mechanism "
                                 f"'identity' or 'banded', got '{self.mechanism}'")
            b, q = participation.groups, participation.p
            self.cyclic_group, self.cycle = participation.group, b
            k = amplified_steps(n, b)
            self.sampling_scheme = f"{b}-cyclic poisson (q={q:g}), amplified BandMF"
            return q, ParticipationSchema("min-separation", n, k, b) if k > 1 else ParticipationSchema.single(n)
        if isinstance(participation, FixedEpochParticipation):
            b = participation.epoch_rounds
            k = math.ceil(n / b)
            if k == 1:  # a run shorter than one epoch: everyone participates at most once
                self.sampling_scheme = "single participation"
                return 1.0, ParticipationSchema.single(n)
            kind = "fixed-epoch" if n == k * b else "min-separation"
            self.sampling_scheme = f"{kind} (k={k}, b={b})"
            return 1.0, ParticipationSchema(kind, n, k, b)
        if self.mechanism == "identity":
            rate = participation.expected_rate()
            if isinstance(participation, FullParticipation):
                self.sampling_scheme = "every client every round, no amplification"
                return 1.0, None
            if isinstance(participation, BernoulliParticipation) and np.allclose(rate, rate[0]):
                self.sampling_scheme = f"poisson (q={float(rate[0]):g})"
                return float(rate[0]), None
            if isinstance(participation, UniformParticipation):
                n_all, k = participation.num_clients, participation.clients_per_round
                self.wor, self.neighbouring = (n_all, k), REPLACE_ONE
                self.sampling_scheme = f"without replacement ({k} of {n_all})"
                if self.accountant != "rdp":
                    log.warning("privacy.accountant = '%s' cannot account sampling without replacement; "
                                "RDP is used (and reported) instead", self.accountant)
                    self.accountant = "rdp"
                return k / n_all, None
        raise ValueError(f"user-level DP with privacy.mechanism '{self.mechanism}' needs participation "
                         "'fixed-epoch'" + (", 'full' or constant-p 'bernoulli'" if self.mechanism == "identity"
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
        return _planned(self.mechanism, self.schema, privacy.get("bands") or None)

    def _check_amplifiable(self, f: Factorization) -> float:
        """Amplified BandMF needs at most b bands and column norms <= 1; -> the largest column norm."""
        b = self.cycle
        if bandwidth(f.C) > b:
            raise ValueError(f"amplified BandMF needs C with at most {b} bands (participation.groups), "
                             f"privacy.bands gives {bandwidth(f.C)}")
        norm = float(np.sqrt((f.C ** 2).sum(axis=0)).max())
        if norm > 1 + 1e-9:
            raise ValueError(f"amplified BandMF needs column norms <= 1, the factor has {norm:.6g}")
        return norm

    def _calibrate(self, privacy: dict) -> float:
        target = float(privacy.get("epsilon") or 0.0)
        if target <= 0:
            return float(privacy["noise_multiplier"])
        if self.cyclic_group is not None:
            return noise_multiplier_for(target, self.delta, steps=amplified_steps(self.rounds, self.cycle),
                                        sampling=self.sampling, accountant=self.accountant)
        if self.wor is not None:
            return wor_noise_multiplier_for(target, self.delta, self.rounds, *self.wor)
        if self.factorization is None:
            return noise_multiplier_for(target, self.delta, steps=self.rounds, sampling=self.sampling,
                                        accountant=self.accountant)
        return noise_multiplier_for(target, self.delta, correlated=True, accountant=self.accountant)

    def _adaptive_clip(self, privacy: dict, participation) -> QuantileClip | None:
        """Andrew et al.'s quantile-tracking clip norm (``stages.adaptive_clip``), or None."""
        self.update_multiplier = self.noise_multiplier
        if not privacy.get("adaptive_clip"):
            return None
        m = float(participation.expected_rate().sum())  # the public expected cohort size
        count_noise = float(privacy.get("clip_count_noise") or m / 20.0)
        # one Gaussian over the whole correlated release: a client's k participations move the counts by sqrt(k)/2
        k = self.schema.participations if self.factorization is not None and self.cyclic_group is None else 1
        self.update_multiplier = update_noise_multiplier(self.noise_multiplier, count_noise, k)
        return QuantileClip(self.clip_norm, target_quantile=float(privacy.get("target_quantile", 0.5)),
                            lr=float(privacy.get("clip_lr", 0.2)), count_noise=count_noise, expected_cohort=m,
                            seed=self.seed)

    # --- rounds --------------------------------------------------------------------------------------
    def init(self, dim: int) -> None:
        f = self.factorization or plan_factorization("identity", ParticipationSchema.single(self.rounds))
        self.stream = NoiseStream(f, dim, seed=self.seed, std=self.std)

    def on_send(self, server_round: int, clients: list[int]) -> None:
        t = server_round - 1
        for cid in sorted(clients):
            past = self.participated.get(cid, [])
            if self.cyclic_group is not None and self.cyclic_group[cid] != t % self.cycle:
                raise ParticipationViolation(
                    f"round {server_round}: client {cid} is in cyclic group {int(self.cyclic_group[cid])}, "
                    f"group {t % self.cycle} is the eligible one (amplified BandMF assumes b-cyclic sampling)")
            if self.schema is not None and not self.schema.allows(past, t):
                raise ParticipationViolation(
                    f"round {server_round}: client {cid} (past rounds {[r + 1 for r in past]}) would break the "
                    f"{self.schema.kind} pattern the privacy guarantee assumes (k={self.schema.participations}, "
                    f"b={self.schema.separation}, n={self.schema.steps})")
            self.participated[cid] = past + [t]

    def before(self, server_round, cohort, metrics):
        if server_round > self.rounds:
            raise ValueError(f"the privacy plan covers {self.rounds} rounds, round {server_round} was asked for")
        clip = self.adaptive.norm if self.adaptive else self.clip_norm
        clipped, norms = clip_rows(cohort.updates, clip)
        noise = self.stream.next()  # advance even for an empty cohort: round t's noise belongs to round t
        spent = self._epsilon(server_round, self.accountant)
        metrics.update({"dp/epsilon": spent, "dp/delta": self.delta, "dp/noise_multiplier": self.noise_multiplier,
                        "dp/noise_std": self.std * clip if self.adaptive else self.std,
                        "dp/clipped_fraction": float((norms > clip).double().mean()) if norms.numel() else 0.0})
        if self.adaptive:
            noise = noise * clip
            metrics.update({"dp/clip_norm": clip, "dp/unclipped_estimate": self.adaptive.observe(server_round, norms)})
        return cohort.replace(updates=clipped), noise

    def _epsilon(self, rounds_done: int, accountant: str) -> float:
        if self.noise_multiplier <= 0:
            return math.inf
        if self.cyclic_group is not None:
            return epsilon_after(amplified_steps(rounds_done, self.cycle), self.noise_multiplier, self.delta,
                                 sampling=self.sampling, accountant=accountant)
        if self.wor is not None:
            return wor_epsilon(rounds_done, self.noise_multiplier, self.delta, *self.wor) if accountant == "rdp" \
                else None  # PLD does not support sampling without replacement
        return epsilon_after(rounds_done, self.noise_multiplier, self.delta, sampling=self.sampling,
                             factorization=self.factorization, accountant=accountant)

    def accounting(self) -> dict:
        """What every epsilon is valid for."""
        return {"accountant": self.accountant, "neighbouring": self.neighbouring,
                "sampling_scheme": self.sampling_scheme}

    def row_fields(self, metrics: dict) -> dict:
        return {"epsilon": metrics["dp/epsilon"], "delta": metrics["dp/delta"], "mechanism": self.mechanism,
                **self.accounting()}

    def summary(self, rounds_done: int) -> dict:
        """Privacy of the first ``rounds_done`` rounds: ``epsilon`` by the run's accountant (as in the
        metrics), and by both accountants for comparison."""
        both = {f"epsilon_{a}": self._epsilon(rounds_done, a) for a in ("rdp", "pld")}
        return {"epsilon": both[f"epsilon_{self.accountant}"], **both, "delta": self.delta,
                "mechanism": self.mechanism, **self.accounting(), "noise_multiplier": self.noise_multiplier,
                "clip_norm": self.clip_norm, "noise_std": self.std,
                "schema": None if self.schema is None else self.schema.to_dict(), "sampling": self.sampling,
                **({"adaptive_clip": True, "final_clip_norm": self.adaptive.norm, "noise_std": None,
                    "update_noise_multiplier": self.update_multiplier,
                    "clip_count_noise": self.adaptive.count_noise} if self.adaptive else {})}

    # --- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"noise": self.stream.state_dict(), "participated": {c: list(h) for c, h in self.participated.items()},
                **({"clip": self.adaptive.state_dict()} if self.adaptive else {})}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.stream.load_state_dict(state["noise"])
            self.participated = {int(c): list(h) for c, h in state["participated"].items()}
            if self.adaptive:
                self.adaptive.load_state_dict(state["clip"])

