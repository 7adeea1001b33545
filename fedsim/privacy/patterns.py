"""Participation schemas: which sets of steps one user (client) may contribute to.

- ``fixed-epoch`` (k, b): n = k·b and a user may only take part at steps {j, j+b, …, j+(k−1)b}
  for one offset j (Choquette-Choo et al., ICML 2023, arXiv 2211.06530, §2 "multi-epoch").
- ``min-separation`` (k, b): at most k participations, any two at least b steps apart
  (Choquette-Choo et al., NeurIPS 2023, arXiv 2306.08153, Def. 2 "b-min-separation").

Fixed-epoch patterns are a subset of the b-separated ones, so a factor's min-separation
sensitivity is never below its fixed-epoch one. The sensitivity only holds if the sampler
*enforces* the schema: use :meth:`ParticipationSchema.allows` before admitting a client and
:meth:`ParticipationSchema.check` on each client's history.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

KINDS = ("fixed-epoch", "min-separation")


class ParticipationViolation(ValueError):
    """A client's participation history breaks the schema the sensitivity assumed."""


@dataclass(frozen=True)
class ParticipationSchema:
    """``kind`` in KINDS; ``steps`` n; ``participations`` k (max per user); ``separation`` b.

    Steps are 0-based. k = 1 is single participation (b is then irrelevant; use b = n).
    """

    kind: str
    steps: int
    participations: int = 1
    separation: int | None = None

    def __post_init__(self):
        n, k = self.steps, self.participations
        if self.kind not in KINDS:
            raise ValueError(f"pattern must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"steps must be a positive integer, got {n!r}")
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ValueError(f"participations must be an integer in [1, steps={n}], got {k!r}")
        b = self.separation
        if b is None:
            b = n // k
            object.__setattr__(self, "separation", b)
        if not isinstance(b, (int, np.integer)) or not 1 <= b <= n:
            raise ValueError(f"separation must be an integer in [1, steps={n}], got {b!r}")
        if self.kind == "fixed-epoch" and n != k * b:
            raise ValueError(f"fixed-epoch needs steps = participations * separation, got "
                             f"{n} != {k} * {b}")
        if self.kind == "min-separation" and k > 1 + (n - 1) // b:
            raise ValueError(f"participations={k} cannot be reached with separation={b} in "
                             f"steps={n} (at most {1 + (n - 1) // b})")

    @classmethod
    def single(cls, n: int) -> "ParticipationSchema":
        return cls("fixed-epoch", n, 1, n)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "steps": int(self.steps), "participations": int(self.participations),
                "separation": int(self.separation)}

    # -- enforcement -------------------------------------------------------------------------

    def allows(self, history: Sequence[int], t: int) -> bool:
        """May a user whose past participation steps are ``history`` take part at step ``t``?"""
        if not 0 <= t < self.steps or t in history:
            return False
        if not history:
            return True
        if len(history) >= self.participations:
            return False
        if self.kind == "fixed-epoch":
            return (t - history[0]) % self.separation == 0
        return min(abs(t - s) for s in history) >= self.separation

    def check(self, history: Sequence[int]) -> None:
        """Raise ParticipationViolation naming the first step that breaks the schema."""
        seen: list[int] = []
        for t in sorted(history):
            if not self.allows(seen, t):
                raise ParticipationViolation(
                    f"step {t} after {seen} breaks {self.kind} participation (k={self.participations}, "
                    f"b={self.separation}, n={self.steps})")
            seen.append(t)

    # -- enumeration (brute force, small n) ---------------------------------------------------

    def patterns(self) -> Iterator[tuple[int, ...]]:
        """Every allowed participation set (fixed-epoch: the b full residue classes; subsets are
        covered by zero contributions)."""
        n, k, b = self.steps, self.participations, self.separation
        if self.kind == "fixed-epoch":
            for j in range(b):
                yield tuple(range(j, n, b))
            return
        for size in range(1, min(k, 1 + (n - 1) // b) + 1):
            for combo in itertools.combinations(range(n), size):
                if all(y - x >= b for x, y in zip(combo, combo[1:])):
                    yield combo
