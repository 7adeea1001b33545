"""Participation models: the *environment* deciding who starts work each round, how many local
steps it runs and how long (virtual seconds) its answer takes. They know nothing about aggregation.

Sources: FedAU's ``WorkerSampler`` (Wang & Ji, arXiv 2306.03401; ``IBM/fedau`` 6e9cce9,
``util/util.py``) for ``bernoulli``/``markov``/``cyclic``; Anarchic FL (Yang et al., arXiv
2108.09875) for ``anarchic`` (clients choose when to participate and how many local steps to run).

Determinism: all randomness comes from one ``np.random.default_rng([seed, tag])`` per model. Each
round draws a fixed number of variates over *all* N clients in a fixed order, whatever the
``available`` mask; unavailable clients (busy with an in-flight job) are then masked out. So the
mask never shifts the random stream, and Markov/cyclic states evolve for busy clients as well.
"""

from __future__ import annotations

import copy
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "RoundPlan", "Timing", "Participation", "FullParticipation", "UniformParticipation",
    "BernoulliParticipation", "MarkovParticipation", "CyclicParticipation", "AnarchicParticipation",
    "FixedEpochParticipation", "CyclicPoissonParticipation",
]

_TAG_TIMING = 0x7133_0000
_TAGS = {"full": 0x5A3F_0001, "uniform": 0x5A3F_0002, "bernoulli": 0x5A3F_0003,
         "markov": 0x5A3F_0004, "cyclic": 0x5A3F_0005, "anarchic": 0x5A3F_0006, "fixed-epoch": 0x5A3F_0007,
         "cyclic-poisson": 0x5A3F_0008}


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class RoundPlan:
    """Who starts work this round. Arrays are read-only and aligned; ``clients`` sorted ascending."""

    clients: np.ndarray      # int64 [K] client ids in 0..N-1, unique, ascending
    local_steps: np.ndarray  # int64 [K] >= 1
    latency: np.ndarray      # float64 [K] > 0: seconds from receiving the model to the answer arriving

    def __post_init__(self) -> None:
        c = np.asarray(self.clients, dtype=np.int64)
        s = np.asarray(self.local_steps, dtype=np.int64)
        t = np.asarray(self.latency, dtype=np.float64)
        if not (c.ndim == s.ndim == t.ndim == 1 and c.shape == s.shape == t.shape):
            raise ValueError("RoundPlan arrays must be 1-D with equal length")
        if np.any(np.diff(c) <= 0) or np.any(s < 1) or not np.all(t > 0):
            raise ValueError("RoundPlan needs ascending unique clients, local_steps >= 1, latency > 0")
        for name, arr in (("clients", c), ("local_steps", s), ("latency", t)):
            object.__setattr__(self, name, _frozen(arr.copy()))

    def __len__(self) -> int:
        return int(self.clients.shape[0])


@dataclass(frozen=True)
class Timing:
    """Per-client compute seconds per local step and network seconds per round trip.

    ``latency = step_time[i]·local_steps + comm_time[i]`` (times a jitter for ``anarchic``).
    """

    step_time: np.ndarray  # float64 [N] > 0
    comm_time: np.ndarray  # float64 [N] >= 0

    def __post_init__(self) -> None:
        st = np.asarray(self.step_time, dtype=np.float64)
        ct = np.asarray(self.comm_time, dtype=np.float64)
        if st.ndim != 1 or st.shape != ct.shape:
            raise ValueError("Timing.step_time and comm_time must be 1-D [N] arrays of equal length")
        if not (np.all(np.isfinite(st)) and np.all(st > 0)):
            raise ValueError("Timing.step_time must be finite and > 0")
        if not (np.all(np.isfinite(ct)) and np.all(ct >= 0)):
            raise ValueError("Timing.comm_time must be finite and >= 0")
        object.__setattr__(self, "step_time", _frozen(st.copy()))
        object.__setattr__(self, "comm_time", _frozen(ct.copy()))

    @classmethod
    def heterogeneous(cls, num_clients: int, seed: int, step_time: float = 0.05,
                      spread: float = 0.0, comm_time: float = 0.1) -> Timing:
        """Each client gets a speed factor ~ lognormal(0, spread) multiplying both its step time
        and its comm time (a slow device is slow overall); ``spread = 0`` ⇒ all identical."""
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        if not (step_time > 0 and comm_time >= 0 and spread >= 0):
            raise ValueError(f"need step_time > 0, comm_time >= 0, spread >= 0; got "
                             f"{step_time}, {comm_time}, {spread}")
        factor = np.random.default_rng([seed, _TAG_TIMING]).lognormal(0.0, spread, num_clients)
        return cls(step_time * factor, comm_time * factor)

    def slowed(self, slow: np.ndarray, factor: float) -> Timing:
        """The same timing with the clients in bool mask ``slow [N]`` ``factor`` times slower."""
        scale = np.where(np.asarray(slow, dtype=bool), float(factor), 1.0)
        return Timing(self.step_time * scale, self.comm_time * scale)

    def latency(self, clients: np.ndarray, local_steps: np.ndarray) -> np.ndarray:
        return self.step_time[clients] * local_steps + self.comm_time[clients]


def _as_int(value: Any, what: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"{what} must be >= {lo}, got {value}")
    return int(value)


class Participation(ABC):
    """Base class. ``sample(round, available)`` must be called with rounds 1, 2, 3, ...

    ``state_dict()`` is JSON-serialisable; loading it into a model built with the same arguments
    continues bit for bit (a config digest guards against loading into a different model).
    """

    name: ClassVar[str]
    _state_arrays: ClassVar[tuple[str, ...]] = ()  # per-client arrays ``self._<k>`` saved as state

    def __init__(self, num_clients: int, *, seed: int, local_steps: int = 5,
                 timing: Timing | None = None) -> None:
        self.num_clients = _as_int(num_clients, "num_clients", 1)
        self.local_steps = _as_int(local_steps, "local_steps", 1)
        self.timing = timing if timing is not None else Timing.heterogeneous(self.num_clients, seed)
        if len(self.timing.step_time) != self.num_clients:
            raise ValueError(f"timing has {len(self.timing.step_time)} clients, expected {self.num_clients}")
        self._rng = np.random.default_rng([int(seed), _TAGS[self.name]])
        self._round = 0

    @abstractmethod
    def _draw(self, available: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Return (chosen bool [N], local steps int [N] or None = constant, jitter [N] or None)."""

    def expected_rate(self) -> np.ndarray:
        """Long-run fraction of rounds each client starts work, all clients idle; float64 [N]."""
        return np.ones(self.num_clients)

    def _config(self) -> dict[str, Any]:
        return {}

    def sample(self, round: int, available: np.ndarray | None = None) -> RoundPlan:
        """Plan for ``round``; a client with ``available[i] == False`` is never picked."""
        if round != self._round + 1:
            raise ValueError(f"{self.name}: expected round {self._round + 1}, got {round}")
        if available is None:
            avail = np.ones(self.num_clients, dtype=bool)
        else:
            avail = np.asarray(available)
            if avail.dtype != np.bool_ or avail.shape != (self.num_clients,):
                raise ValueError(f"available must be a bool array of shape ({self.num_clients},)")
        chosen, steps, jitter = self._draw(avail)
        self._round = round
        clients = np.flatnonzero(chosen & avail).astype(np.int64)
        k = (np.full(clients.shape, self.local_steps, dtype=np.int64) if steps is None
             else steps[clients].astype(np.int64))
        latency = self.timing.latency(clients, k)
        if jitter is not None:
            latency = latency * jitter[clients]
        return RoundPlan(clients, k, latency)

    def _digest(self) -> str:
        h = hashlib.sha256(f"{self.name}|{self.num_clients}|{self.local_steps}".encode())
        cfg = {"step_time": self.timing.step_time, "comm_time": self.timing.comm_time, **self._config()}
        for key in sorted(cfg):
            h.update(key.encode())
            h.update(np.ascontiguousarray(cfg[key], dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_clients": self.num_clients, "round": self._round,
                "config_digest": self._digest(),
                "rng": copy.deepcopy(self._rng.bit_generator.state),
                **{k: getattr(self, "_" + k).tolist() for k in self._state_arrays}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name or state.get("num_clients") != self.num_clients:
            raise ValueError(f"state is for {state.get('name')!r} with {state.get('num_clients')} "
                             f"clients, not {self.name!r} with {self.num_clients}")
        if state.get("config_digest") != self._digest():
            raise ValueError(f"{self.name}: state was saved from a model with different settings")
        for k in self._state_arrays:
            old = getattr(self, "_" + k)
            setattr(self, "_" + k, np.asarray(state[k], dtype=old.dtype).reshape(old.shape))
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._round = int(state["round"])


class FullParticipation(Participation):
    """Every available client, every round."""

    name = "full"

    def _draw(self, available):
        return available, None, None


class UniformParticipation(Participation):
    """``clients_per_round`` available clients uniformly without replacement (fewer if fewer are
    available). Draws a permutation of all N and keeps the first k available ones."""

    name = "uniform"

    def __init__(self, num_clients: int, clients_per_round: int, *, seed: int,
                 local_steps: int = 5, timing: Timing | None = None) -> None:
        super().__init__(num_clients, seed=seed, local_steps=local_steps, timing=timing)
        self.clients_per_round = _as_int(clients_per_round, "clients_per_round", 1)
        if self.clients_per_round > self.num_clients:
            raise ValueError(f"clients_per_round must be <= num_clients={self.num_clients}, "
                             f"got {self.clients_per_round}")

    def _draw(self, available):
        order = self._rng.permutation(self.num_clients)
        chosen = np.zeros(self.num_clients, dtype=bool)
        chosen[order[available[order]][: self.clients_per_round]] = True
        return chosen, None, None

    def expected_rate(self) -> np.ndarray:
        return np.full(self.num_clients, self.clients_per_round / self.num_clients)

    def _config(self):
        return {"k": self.clients_per_round}


class FixedEpochParticipation(Participation):
    """Fixed-epoch order (the multi-epoch setting of DP matrix factorization, Choquette-Choo et al.,
    arXiv 2211.06530, §2): the N clients are shuffled once (seeded) into b = N / clients_per_round
    groups, and round t trains group (t - 1) mod b. Every client participates exactly once per epoch
    of b rounds, so over n rounds at most ceil(n / b) times, always exactly b rounds apart. A busy
    client (still in flight) is skipped, never replaced, so the pattern is never violated."""

    name = "fixed-epoch"

    def __init__(self, num_clients: int, clients_per_round: int, *, seed: int,
                 local_steps: int = 5, timing: Timing | None = None) -> None:
        super().__init__(num_clients, seed=seed, local_steps=local_steps, timing=timing)
        self.clients_per_round = _as_int(clients_per_round, "clients_per_round", 1)
        if self.num_clients % self.clients_per_round:
            raise ValueError(f"fixed-epoch needs num_clients ({self.num_clients}) divisible by "
                             f"clients_per_round ({self.clients_per_round})")
        self.epoch_rounds = self.num_clients // self.clients_per_round  # b
        self.order = _frozen(self._rng.permutation(self.num_clients).astype(np.int64))

    def _draw(self, available):
        group = self._round % self.epoch_rounds  # self._round is the previous round
        chosen = np.zeros(self.num_clients, dtype=bool)
        chosen[self.order[group * self.clients_per_round:(group + 1) * self.clients_per_round]] = True
        return chosen, None, None

    def expected_rate(self) -> np.ndarray:
        return np.full(self.num_clients, 1.0 / self.epoch_rounds)

    def _config(self):
        return {"k": self.clients_per_round}


class CyclicPoissonParticipation(Participation):
    """b-cyclic Poisson sampling (Choquette-Choo et al., "Amplified BandMF", arXiv 2306.08153,
    Thm 4): the N clients are shuffled once (seeded) into ``groups`` = b groups (sizes differ by at
    most one); at round t only group (t − 1) mod b is eligible, and each of its clients takes part
    independently with probability ``p`` = q. A client is eligible once every b rounds, so it takes
    part at most ceil(n / b) times, at least b rounds apart. Every round draws N uniforms, whatever
    the group, so the stream never shifts."""

    name = "cyclic-poisson"

    def __init__(self, num_clients: int, groups: int, p: float, *, seed: int,
                 local_steps: int = 5, timing: Timing | None = None) -> None:
        super().__init__(num_clients, seed=seed, local_steps=local_steps, timing=timing)
        self.groups = _as_int(groups, "groups", 1)
        if self.groups > self.num_clients:
            raise ValueError(f"groups must be <= num_clients={self.num_clients}, got {self.groups}")
        if not 0.0 < float(p) <= 1.0:
            raise ValueError(f"p must be in (0, 1], got {p}")
        self.p = float(p)
        order = self._rng.permutation(self.num_clients)
        group = np.empty(self.num_clients, dtype=np.int64)
        for g, members in enumerate(np.array_split(order, self.groups)):
            group[members] = g
        self.group = _frozen(group)  # public: the schema the privacy accounting checks

    def eligible_group(self, round: int) -> int:
        return (int(round) - 1) % self.groups

    def _draw(self, available):
        u = self._rng.random(self.num_clients)
        return (self.group == self._round % self.groups) & (u < self.p), None, None

    def expected_rate(self) -> np.ndarray:
        return np.full(self.num_clients, self.p / self.groups)

    def _config(self):
        return {"groups": self.groups, "p": self.p}


class _ProbModel(Participation):
    """Models driven by per-client probabilities ``probs`` (clamped to [p_min, 1])."""

    def __init__(self, num_clients: int, probs: np.ndarray, *, seed: int, p_min: float = 0.0,
                 local_steps: int = 5, timing: Timing | None = None) -> None:
        super().__init__(num_clients, seed=seed, local_steps=local_steps, timing=timing)
        p = np.array(probs, dtype=np.float64)  # a scalar means the same p for every client
        p = np.full(self.num_clients, float(p)) if p.ndim == 0 else p
        if p.shape != (self.num_clients,) or not np.all(np.isfinite(p)):
            raise ValueError(f"probs must be finite with shape ({self.num_clients},), got {p.shape}")
        if not 0.0 <= p_min <= 1.0:
            raise ValueError(f"p_min must be in [0, 1], got {p_min}")
        p = np.clip(p, p_min, 1.0)
        if np.any(p <= 0):
            raise ValueError("probs must be > 0 after clamping to [p_min, 1]")
        self.probs = _frozen(p)  # environment truth; never hand to aggregators (oracle baselines aside)

    def expected_rate(self) -> np.ndarray:
        return self.probs.copy()

    def _config(self):
        return {"probs": self.probs}


class BernoulliParticipation(_ProbModel):
    """Client n participates independently each round with probability p_n (FedAU ``bernoulli``)."""

    name = "bernoulli"

    def _draw(self, available):
        return self._rng.random(self.num_clients) < self.probs, None, None


class MarkovParticipation(_ProbModel):
    """Two-state Markov chain per client (FedAU ``markov-a``): inactive→active w.p. ``a``,
    active→inactive w.p. ``b = a(1/p − 1)``; if b > 1: a ← a/b, b ← 1. Stationary P(active) = p,
    initial state ~ Bernoulli(p), state updated before it is read each round."""

    name = "markov"
    _state_arrays = ("active",)

    def __init__(self, num_clients: int, probs: np.ndarray, *, seed: int, a: float = 0.05,
                 p_min: float = 0.0, local_steps: int = 5, timing: Timing | None = None) -> None:
        super().__init__(num_clients, probs, seed=seed, p_min=p_min, local_steps=local_steps,
                         timing=timing)
        if not 0.0 < a <= 1.0:
            raise ValueError(f"markov a must be in (0, 1], got {a}")
        self.markov_a = float(a)
        b = self.markov_a * (1.0 / self.probs - 1.0)
        scale = np.maximum(b, 1.0)  # b > 1 ⇒ a ← a/b, b ← 1 (keeps the stationary rate a/(a+b) = p)
        self.a, self.b = _frozen(self.markov_a / scale), _frozen(b / scale)
        self._active = self._rng.random(self.num_clients) < self.probs

    def _draw(self, available):
        u = self._rng.random(self.num_clients)
        self._active = np.where(self._active, u >= self.b, u < self.a)
        return self._active.copy(), None, None

    def _config(self):
        return {"probs": self.probs, "a": self.markov_a}


class CyclicParticipation(_ProbModel):
    """Deterministic cycles (FedAU ``cyclic-c``): ``on = max(1, round(c·p))`` rounds active,
    then ``off = max(1, c − on)`` inactive; each client starts inactive with a random phase in
    [0, off). Effective rate on/(on+off) (``expected_rate``), which differs from p when clamped.
    Rounding is numpy's half-to-even, as in the reference."""

    name = "cyclic"
    _state_arrays = ("active", "left")

    def __init__(self, num_clients: int, probs: np.ndarray, *, seed: int, period: int = 100,
                 p_min: float = 0.0, local_steps: int = 5, timing: Timing | None = None) -> None:
        super().__init__(num_clients, probs, seed=seed, p_min=p_min, local_steps=local_steps,
                         timing=timing)
        self.period = _as_int(period, "period", 1)
        self.on_rounds = _frozen(np.maximum(1, np.round(self.period * self.probs)).astype(np.int64))
        self.off_rounds = _frozen(np.maximum(1, self.period - self.on_rounds).astype(np.int64))
        self._active = np.zeros(self.num_clients, dtype=bool)
        self._left = self._rng.integers(0, self.off_rounds).astype(np.int64)  # rounds to switch

    def _draw(self, available):
        switch = self._left == 0
        self._active = np.where(switch, ~self._active, self._active)
        self._left = np.where(switch, np.where(self._active, self.on_rounds, self.off_rounds),
                              self._left) - 1
        return self._active.copy(), None, None

    def expected_rate(self) -> np.ndarray:
        return self.on_rounds / (self.on_rounds + self.off_rounds)

    def _config(self):
        return {"probs": self.probs, "period": self.period}


class AnarchicParticipation(_ProbModel):
    """Anarchic FL (arXiv 2108.09875): each *idle* client chooses to participate w.p. p_n, and runs
    K ~ Uniform{min_steps..max_steps} local steps; latency is multiplied by an Exp(1) jitter (if
    ``jitter``), so answers arrive in random order. Per round draws: u [N], K [N], jitter [N]."""

    name = "anarchic"

    def __init__(self, num_clients: int, probs: np.ndarray, *, seed: int, min_steps: int = 1,
                 max_steps: int | None = None, jitter: bool = True, p_min: float = 0.0,
                 local_steps: int = 5, timing: Timing | None = None) -> None:
        super().__init__(num_clients, probs, seed=seed, p_min=p_min, local_steps=local_steps,
                         timing=timing)
        self.min_steps = _as_int(min_steps, "min_steps", 1)
        self.max_steps = _as_int(self.local_steps if max_steps is None else max_steps,
                                 "max_steps", self.min_steps)
        if not isinstance(jitter, (bool, np.bool_)):
            raise ValueError(f"jitter must be a bool, got {jitter!r}")
        self.jitter = bool(jitter)

    def _draw(self, available):
        n = self.num_clients
        chosen = self._rng.random(n) < self.probs
        steps = self._rng.integers(self.min_steps, self.max_steps + 1, size=n)
        if not self.jitter:
            return chosen, steps, None
        # Exp(1) can return exactly 0.0 (probability ~2^-53); keep latency strictly positive.
        return chosen, steps, np.maximum(self._rng.exponential(1.0, n), 1e-12)

    def _config(self):
        return {"probs": self.probs, "steps": [self.min_steps, self.max_steps],
                "jitter": float(self.jitter)}
