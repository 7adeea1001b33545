"""Streaming correlated noise: row t of ``W·Z`` (W = C⁻¹, or the tree's noise map), generated
online, where Z has i.i.d. N(0, 1) rows drawn from a generator keyed by (seed, row).

The server adds ``next()`` = ``std · w_t`` to the sum of clipped updates at round t, with
``std = noise_multiplier · clip_norm · sens(C)`` (see :func:`noise_std`); the whole release is
then one Gaussian mechanism with that noise multiplier (arXiv 2211.06530, §2). Kernels by factor
structure:

| structure | recursion | memory |
|---|---|---|
| banded (b bands; identity b = 1) | forward substitution over the last b−1 w's (BandMF, arXiv 2306.08153, Alg. 9) | (b−1)·D |
| blt (m buffers) | ``w_t = z_t − Σ_j ω_j S_j``, then ``S_j ← θ_j S_j + w_t`` (arXiv 2404.16706, §5) | m·D |
| tree | the non-zero entries of row t of the epoch's noise map (prefix noise t minus t−1; a node's z is regenerated from its key, amortised O(log b) nodes a round for both estimators) | D |
| dense / toeplitz (fallback) | forward substitution over all past w's, or, when those would pass ``store_limit`` bytes, ``w_t = Σ_j W[t, j] z_j`` with W = C⁻¹ and every z_j regenerated from its key | t·D ≤ n·D, or D (O(t·D) work a round) |

Internal state is float64 (the anti-correlated noise cancels in prefix sums; keep it exact);
``next()`` returns ``dtype`` (float32 by default). State (step, buffers) is explicit:
``state_dict()`` / ``load_state_dict()`` continue identically.
"""

from __future__ import annotations

import numpy as np
import torch

from .factorization import Factorization
from .tree import epoch_noise_maps


STORE_LIMIT = 1 << 30  # bytes of past noise a dense-factor stream keeps before it regenerates instead


def noise_std(noise_multiplier: float, clip_norm: float, sensitivity: float) -> float:
    """Std of Z per coordinate: σ·ζ·sens(C)."""
    return float(noise_multiplier) * float(clip_norm) * float(sensitivity)


def gaussian_row(seed: int, row: int, dim: int) -> torch.Tensor:
    """Row ``row`` of Z: N(0, 1) [dim] float64 from a torch.Generator keyed by (seed, row)."""
    if seed < 0 or row < 0:
        raise ValueError("seed and row must be non-negative integers")
    key = np.random.SeedSequence([int(seed), int(row)]).generate_state(2, np.uint32)
    g = torch.Generator().manual_seed(int(key[0]) << 31 ^ int(key[1]))
    return torch.randn(dim, generator=g, dtype=torch.float64)


class NoiseStream:
    """Online noise for ``factorization``: ``next()`` -> ``std · w_t`` [dim] for t = 0, 1, …, n−1.

    ``NoiseStream(f, dim, seed, std)``. With the identity factor this is exactly
    ``std · N(0, I)`` i.i.d. per round (DP-FedAvg). Raises once all n rounds are used.
    """

    def __init__(self, factorization: Factorization, dim: int, seed: int, std: float = 1.0,
                 dtype: torch.dtype = torch.float32, store_limit: int = STORE_LIMIT):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std}")
        self.f, self.dim, self.seed, self.std, self.dtype = factorization, int(dim), int(seed), float(std), dtype
        self.n = factorization.steps
        self.kind = factorization.structure["kind"]
        C = factorization.C
        if self.kind == "banded":
            self.bands = int(factorization.structure["bands"])
            i = np.arange(self.n)
            # band[t, l] = C[t, t − l], l = 0..bands−1 (zero above the first row)
            self._band = np.stack([np.where(i >= l, C[i, np.clip(i - l, 0, None)], 0.0)
                                   for l in range(self.bands)], axis=1)
        elif self.kind == "blt":
            self._theta = torch.as_tensor(factorization.structure["theta"], dtype=torch.float64)
            self._omega = torch.as_tensor(factorization.structure["omega"], dtype=torch.float64)
        elif self.kind == "tree":
            self._epoch = int(factorization.structure.get("epoch", self.n))
            maps = epoch_noise_maps(self.n, self._epoch, str(factorization.structure.get("estimator", "streaming")))
            self._tree_maps = [maps[0], maps[-1]]  # every full epoch has the same block; the last may be shorter
            self._tree_nodes = maps[0].shape[1]
        elif self.kind not in ("dense", "toeplitz"):
            raise ValueError(f"unknown factor structure {self.kind!r}")
        # dense factors: keep every past w (n·D float64) only while that fits store_limit; beyond it the
        # noise is regenerated from the seeds each round (O(D) memory, O(t·D) work), the same numbers
        dense = self.kind in ("dense", "toeplitz")
        self.regenerate = dense and self.n * self.dim * 8 > store_limit
        self._stores_all = dense and not self.regenerate  # _buf holds every past w (row t = w_t)
        if self.regenerate:
            self._W = np.linalg.inv(C)  # the noise map, lower triangular
        self.reset()

    def reset(self) -> None:
        self.t = 0
        m = {"banded": self.bands - 1 if self.kind == "banded" else 0,
             "blt": len(self._omega) if self.kind == "blt" else 0}.get(self.kind, 0)
        if self._stores_all:
            m = self.n  # all past w's (allocated once)
        self._buf = torch.zeros(m, self.dim, dtype=torch.float64)  # banded: last b−1 w's, newest first

    def z(self, row: int) -> torch.Tensor:
        """Row ``row`` of this stream's Z (float64, unscaled)."""
        return gaussian_row(self.seed, row, self.dim)

    def next(self) -> torch.Tensor:
        """The noise to add at the current round (then advance)."""
        if self.t >= self.n:
            raise RuntimeError(f"the factorization covers {self.n} rounds; all are used")
        w = getattr(self, f"_next_{self.kind}")()
        self.t += 1
        return (self.std * w).to(self.dtype)

    def _next_banded(self) -> torch.Tensor:
        t, band = self.t, self._band[self.t]
        w = self.z(t)
        for l in range(1, min(self.bands, t + 1)):
            w -= float(band[l]) * self._buf[l - 1]
        w /= float(band[0])
        if self.bands > 1:
            self._buf = torch.cat([w[None], self._buf[:-1]])
        return w

    def _next_blt(self) -> torch.Tensor:
        w = self.z(self.t) - self._omega @ self._buf
        self._buf = self._theta[:, None] * self._buf + w[None]
        return w

    def _next_dense(self) -> torch.Tensor:  # O(t·D) memory: every past w is kept
        t = self.t
        if self.regenerate:  # O(D) memory: w_t = Σ_j W[t, j] z_j, each z_j drawn again from its key
            w = torch.zeros(self.dim, dtype=torch.float64)
            for j in np.flatnonzero(self._W[t, : t + 1]):
                w += float(self._W[t, j]) * self.z(int(j))
            return w
        row = torch.as_tensor(self.f.C[t, :t])
        w = (self.z(t) - row @ self._buf[:t]) / float(self.f.C[t, t])
        self._buf[t] = w
        return w

    _next_toeplitz = _next_dense

    def _next_tree(self) -> torch.Tensor:
        epoch, r = divmod(self.t, self._epoch)
        last = epoch == (self.n - 1) // self._epoch
        row = self._tree_maps[1 if last else 0][r]
        w = torch.zeros(self.dim, dtype=torch.float64)
        for j in np.flatnonzero(row):  # node rows of C are numbered epoch by epoch
            w += float(row[j]) * self.z(epoch * self._tree_nodes + int(j))
        return w

    # -- checkpointing ----------------------------------------------------------------------

    def _saved_buffers(self) -> torch.Tensor:
        return (self._buf[: self.t] if self._stores_all else self._buf).clone()

    def state_dict(self) -> dict:
        return {"step": self.t, "seed": self.seed, "dim": self.dim, "std": self.std,
                "fingerprint": self.f.fingerprint(), "buffers": self._saved_buffers()}

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.f.fingerprint():
            raise ValueError("noise state was saved for a different factorization")
        if int(state["dim"]) != self.dim or int(state["seed"]) != self.seed:
            raise ValueError("noise state was saved for a different dim or seed")
        self.t, self.std = int(state["step"]), float(state["std"])
        buf = state["buffers"].to(torch.float64)
        if self._stores_all:
            self._buf = torch.zeros(self.n, self.dim, dtype=torch.float64)
            self._buf[: len(buf)] = buf
        elif not self.regenerate:  # regenerated noise keeps no buffers
            self._buf = buf.clone()
        # (checkpoints of older versions also hold the tree's node noise: it is regenerated from its key)


def dense_noise(factorization: Factorization, Z: np.ndarray) -> np.ndarray:
    """Reference: the whole gradient-space noise W·Z [n, D] at once (tests, small n)."""
    return factorization.noise_map() @ Z
