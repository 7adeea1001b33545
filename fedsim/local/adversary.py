"""Byzantine clients: poisoning attacks run by a seeded fraction of the federation (``[adversary]``).

The server does not know which clients are malicious; they are chosen from the seed
(``adversary.fraction`` of the N clients) and act on the client side, so every strategy, stage and
runtime faces them unchanged. Behaviours:

- ``sign-flip``: the client sends −Δ_i (the sign-flipping attack of the Byzantine-robust
  literature, e.g. Karimireddy, He, Jaggi, ICML 2021, arXiv 2012.10333, Sec. 6);
- ``scale``: the client sends λ·Δ_i with λ = ``adversary.scale`` (boosting, as in model replacement:
  Bagdasaryan et al., AISTATS 2020, arXiv 1807.00459, Sec. 4);
- ``noise``: the client sends Gaussian noise N(0, σ²I), σ = ``adversary.noise_std``, instead of its
  update (Blanchard et al., NeurIPS 2017, Sec. 5's Gaussian Byzantine workers);
- ``label-flip``: the client trains honestly on its data with every label y replaced by C − 1 − y
  (Fang et al., USENIX Security 2020, arXiv 1911.11815, Sec. 4);
- ``backdoor``: a pixel-pattern backdoor (BadNets, Gu et al., arXiv 1708.06733): a
  ``pattern_size``² square of the data's maximum value in the bottom-right corner of the input,
  stamped on ``poison_fraction`` of each malicious client's examples, relabelled ``target_label``
  (the poisoned share of local data as in Bagdasaryan et al., Sec. 4.1; they mix per batch, fedsim
  poisons a fixed seeded subset of rows, ours). For flat inputs the last ``pattern_size`` features.
  ``adversary.boost`` > 1 multiplies the poisoned update (label-flip too), Bagdasaryan et al.'s
  model replacement (Sec. 4.2, which boosts by about N / η).

Model poisoning (the first three) replaces what the client sends after honest training; data
poisoning (the last two) changes the rows the client trains on, in a view of the training split,
so both trainers, worker processes and example-level DP see the same poisoned data.

``attack_success`` measures the targeted attacks on the test split: for ``backdoor`` the share of
test examples of other classes that, stamped, are classified ``target_label``; for ``label-flip`` the
share classified C − 1 − y. Untargeted model poisoning has no success rate beyond the clean accuracy
it destroys (None).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.datasets import Split
from .evaluate import evaluate

BEHAVIOURS = ("none", "sign-flip", "scale", "noise", "label-flip", "backdoor")
TARGETED = ("label-flip", "backdoor")
_STREAM = 0xBAD5EED


@dataclass(frozen=True)
class Adversary:
    behaviour: str
    clients: np.ndarray  # int64, sorted: the malicious clients
    num_classes: int
    scale: float = 10.0
    noise_std: float = 1.0
    target_label: int = 0
    poison_fraction: float = 0.5
    pattern_size: int = 3
    boost: float = 1.0
    seed: int = 0

    @classmethod
    def choose(cls, behaviour: str, fraction: float, num_clients: int, *, seed: int, num_classes: int,
               **settings) -> "Adversary | None":
        """``round(fraction · N)`` malicious clients drawn from the seed (None when there are none)."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"adversary.behaviour must be one of {BEHAVIOURS}, got '{behaviour}'")
        count = int(round(fraction * num_clients))
        if behaviour == "none" or count == 0:
            return None
        rng = np.random.default_rng([seed, _STREAM])
        clients = np.sort(rng.choice(num_clients, size=count, replace=False)).astype(np.int64)
        adv = cls(behaviour, clients, num_classes, seed=seed, **settings)
        if not 0 <= adv.target_label < num_classes:
            raise ValueError(f"adversary.target_label must be a class in 0..{num_classes - 1}, got {adv.target_label}")
        return adv

    def is_malicious(self, cid: int) -> bool:
        i = int(np.searchsorted(self.clients, cid))
        return i < len(self.clients) and int(self.clients[i]) == cid

    # --- model poisoning: what a malicious client sends --------------------------------------------
    def tamper(self, cid: int, delta: torch.Tensor, seed: int) -> torch.Tensor:
        """The update client ``cid`` sends in place of its honest ``delta``."""
        if not self.is_malicious(cid):
            return delta
        if self.behaviour in TARGETED:  # trained on poisoned rows; boosted to survive averaging
            return delta if self.boost == 1 else self.boost * delta
        if self.behaviour == "sign-flip":
            return -delta
        if self.behaviour == "scale":
            return self.scale * delta
        gen = torch.Generator().manual_seed(seed ^ _STREAM)
        return self.noise_std * torch.randn(delta.shape, generator=gen, dtype=delta.dtype).to(delta.device)

    # --- data poisoning -----------------------------------------------------------------------------
    def poison(self, split, parts) -> "PoisonedSplit | object":
        """The training split as the clients see it (unchanged for model poisoning)."""
        if self.behaviour not in TARGETED:
            return split
        if self.behaviour == "backdoor" and not split.x.is_floating_point():
            raise ValueError("adversary.behaviour = 'backdoor' stamps a pixel pattern: it needs image or feature "
                             f"inputs, this dataset's are {split.x.dtype}")
        y = split.y.clone()
        stamped_rows = []
        rng = np.random.default_rng([self.seed, _STREAM, 1])
        for cid in self.clients.tolist():
            rows = torch.as_tensor(np.asarray(parts[cid]), dtype=torch.int64)
            if self.behaviour == "label-flip":
                y[rows] = self.num_classes - 1 - y[rows]
            else:
                chosen = rows[torch.as_tensor(rng.permutation(len(rows))[:int(round(self.poison_fraction * len(rows)))],
                                              dtype=torch.int64)]
                y[chosen] = self.target_label
                stamped_rows.append(chosen)
        rows = torch.cat(stamped_rows) if stamped_rows else torch.zeros(0, dtype=torch.int64)
        return PoisonedSplit(split, y, rows, self._stamp(split.x[rows], float(split.x.max())) if len(rows) else None)

    def stamp(self, x: torch.Tensor, high: float) -> torch.Tensor:
        return self._stamp(x.clone(), high)

    def _stamp(self, x: torch.Tensor, high: float) -> torch.Tensor:
        s = self.pattern_size
        if x.ndim >= 4:       # [B, C, H, W]
            x[..., -s:, -s:] = high
        elif x.ndim == 3:     # [B, H, W]
            x[:, -s:, -s:] = high
        else:                 # [B, features]
            x[:, -s:] = high
        return x

    # --- evaluation -----------------------------------------------------------------------------------
    def attack_success(self, model, spec, params: torch.Tensor, test, *, limit: int | None = None) -> float | None:
        """The targeted attack's success rate on the test split (None for untargeted behaviours)."""
        n = len(test) if limit is None else min(limit, len(test))
        x, y = test.take(torch.arange(n))
        if self.behaviour == "backdoor":
            keep = y != self.target_label
            view = Split(self.stamp(x[keep], float(test.x.max())), torch.full_like(y[keep], self.target_label))
        elif self.behaviour == "label-flip":
            keep = (self.num_classes - 1 - y) != y
            view = Split(x[keep], self.num_classes - 1 - y[keep])
        else:
            return None
        return evaluate(model, spec, params, view)[1] if len(view) else None


class PoisonedSplit:
    """A split whose labels are replaced and whose ``rows`` have stamped inputs (what malicious
    clients train on); every other row reads through to the original split."""

    def __init__(self, base, y: torch.Tensor, rows: torch.Tensor, stamped: torch.Tensor | None):
        self.base, self.y, self.x = base, y, base.x
        self._slot = torch.full((len(y),), -1, dtype=torch.int64)  # row -> index into stamped, or -1
        self._slot[rows] = torch.arange(len(rows))
        self._stamped = stamped

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        x, _ = self.base.take(idx)
        if self._stamped is not None:
            slot = self._slot[idx]
            hit = slot >= 0
            if hit.any():
                x[hit] = self._stamped[slot[hit]]
        return x, self.y[idx]
