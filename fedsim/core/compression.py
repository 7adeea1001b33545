"""Compressors for uplink messages, with their contraction parameter and exact wire size.

A compressor C is *contractive* with parameter alpha in (0, 1] if E||C(v) - v||^2 <= (1 - alpha)||v||^2
(EF21, Richtarik, Sokolov, Fatkhullin, arXiv 2106.05203, Definition 1). An *unbiased* compressor has
E C(v) = v and E||C(v) - v||^2 <= omega ||v||^2; C / (omega + 1) is then contractive with
alpha = 1 / (omega + 1). Every compressor here acts on one flat vector ``[D]``, returns the dense
result (zeros where nothing is sent) and states its wire size in bits:

=================  ===========================  =====================================================
compressor         alpha / omega                bits per message (fedsim's convention)
=================  ===========================  =====================================================
identity           alpha = 1                    32 D
top-k              alpha = k/D (deterministic)  k (32 + ceil(log2 D)): fp32 values + minimal indices
rand-k             alpha = k/D (in expectation) 32 k + 64: values + the 64-bit seed of the index draw
rand-k, unbiased   omega = D/k - 1              32 k + 64 (values scaled by D/k)
natural            alpha = 8/9                  9 D: sign + 8-bit exponent (Horvath et al.,
                                                arXiv 1905.10988); the contractive form (8/9) C_nat
natural, unbiased  omega = 1/8                  9 D
prune              alpha = min_l k_l / D_l      k (32 + ceil(log2 D)), k = sum_l k_l: Top-k within each
                                                parameter tensor l, k_l = ceil(density D_l) (DLG's
                                                gradient pruning, Zhu et al., arXiv 1906.08935, Sec. 5)
=================  ===========================  =====================================================

Ties in Top-k are broken deterministically (larger magnitude first, then lower index), so every
runtime and trainer selects the same coordinates. Randomised compressors take an explicit
``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

VALUE_BITS = 32
SEED_BITS = 64
NATURAL_BITS = 9
COMPRESSORS = ("identity", "top-k", "rand-k", "natural", "prune")
SPARSE = ("top-k", "rand-k", "prune")


def index_bits(dim: int) -> int:
    return max(1, math.ceil(math.log2(dim)))


@dataclass(frozen=True)
class Compressor:
    """A compressor for vectors of length ``dim``; build it with ``make_compressor``."""

    name: str
    dim: int
    k: int            # coordinates sent (dim for dense compressors)
    unbiased: bool = False
    keep: tuple[tuple[int, int], ...] = ()  # prune: (tensor size, coordinates kept) per parameter tensor

    @property
    def alpha(self) -> float | None:
        """Contraction parameter, or None for the unbiased (non-contractive) variants."""
        if self.unbiased and self.name in ("rand-k", "natural"):
            return None
        if self.name == "prune":
            return min(kept / size for size, kept in self.keep)
        return {"identity": 1.0, "top-k": self.k / self.dim, "rand-k": self.k / self.dim,
                "natural": 8.0 / 9.0}[self.name]

    @property
    def omega(self) -> float | None:
        """Variance parameter of the unbiased variants, None for biased compressors."""
        if self.name == "identity":
            return 0.0
        if not self.unbiased:
            return None
        return self.dim / self.k - 1.0 if self.name == "rand-k" else 1.0 / 8.0

    @property
    def homogeneous(self) -> bool:
        """C(a v) = a C(v) for a > 0 (with fixed randomness): true for all but natural compression."""
        return self.name != "natural"

    @property
    def sparse(self) -> bool:
        return self.name in SPARSE and self.k < self.dim

    @property
    def bits(self) -> int:
        if self.name == "identity" or (self.name in SPARSE and self.k == self.dim):
            return VALUE_BITS * self.dim
        if self.name in ("top-k", "prune"):
            return self.k * (VALUE_BITS + index_bits(self.dim))
        if self.name == "rand-k":
            return VALUE_BITS * self.k + SEED_BITS
        return NATURAL_BITS * self.dim

    def __call__(self, v: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if v.shape != (self.dim,):
            raise ValueError(f"{self.name} compressor expects a vector of length {self.dim}, got shape {tuple(v.shape)}")
        if self.name == "identity":
            return v.clone()
        if self.name == "top-k":
            return _keep(v, top_k_indices(v, self.k))
        if self.name == "prune":
            idx, start = [], 0
            for size, kept in self.keep:
                idx.append(start + top_k_indices(v[start:start + size], kept))
                start += size
            return _keep(v, torch.cat(idx))
        if self.name == "rand-k":
            idx = torch.randperm(self.dim, generator=_need(gen, self.name))[: self.k].to(v.device)
            out = _keep(v, idx)
            return out * (self.dim / self.k) if self.unbiased else out
        out = natural_round(v, _need(gen, self.name))
        return out if self.unbiased else out * (8.0 / 9.0)


def make_compressor(name: str, dim: int, *, k: int | None = None, density: float | None = None,
                    unbiased: bool = False, sizes: tuple[int, ...] | None = None) -> Compressor:
    """Build a compressor; top-k / rand-k take ``k`` or ``density`` (k = max(1, round(density * dim)));
    prune takes ``density`` and the parameter tensors' ``sizes`` (k_l = max(1, ceil(density * D_l)))."""
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor '{name}', expected one of {COMPRESSORS}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if unbiased and name not in ("rand-k", "natural"):
        raise ValueError(f"'{name}' has no unbiased variant (only rand-k and natural do)")
    if name == "prune":
        if density is None or k is not None or not 0 < density <= 1:
            raise ValueError(f"prune needs a density in (0, 1] (and no k), got density={density}, k={k}")
        if not sizes or sum(sizes) != dim or min(sizes) < 1:
            raise ValueError(f"prune needs the parameter tensors' sizes summing to {dim}, got {sizes}")
        keep = tuple((int(s), max(1, math.ceil(density * s))) for s in sizes)
        return Compressor(name, dim, sum(kept for _, kept in keep), False, keep)
    if name in ("top-k", "rand-k"):
        if (k is None) == (density is None):
            raise ValueError(f"{name} needs exactly one of k and density")
        if density is not None:
            if not 0 < density <= 1:
                raise ValueError(f"density must be in (0, 1], got {density}")
            k = max(1, round(density * dim))
        if not 1 <= k <= dim:
            raise ValueError(f"k must be in 1..{dim}, got {k}")
    else:
        k = dim
    return Compressor(name, dim, int(k), unbiased)


def top_k_indices(v: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest |v|; ties at the threshold go to the lower indices. O(D), no full sort."""
    mag = v.abs()
    threshold = torch.topk(mag, k, sorted=False).values.min()
    above = torch.nonzero(mag > threshold, as_tuple=True)[0]
    tied = torch.nonzero(mag == threshold, as_tuple=True)[0][: k - above.numel()]
    return torch.cat([above, tied])


def natural_round(v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Unbiased random rounding of each entry to one of its two neighbouring powers of two."""
    mag = v.abs()
    safe = torch.where(mag > 0, mag, torch.ones_like(mag))
    low = torch.exp2(torch.floor(torch.log2(safe)))
    p_up = (safe - low) / low  # P(round up to 2 low); E = low (1 - p) + 2 low p = |v|
    up = torch.rand(v.shape, generator=gen, dtype=torch.float64).to(v.device) < p_up.double()
    out = torch.where(up, 2 * low, low) * torch.sign(v)
    return torch.where(mag > 0, out, torch.zeros_like(v))


def to_sparse(dense: torch.Tensor, compressor: Compressor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values float32 [k'], indices int64 [k']) of a compressed vector's non-zeros, for transport."""
    idx = torch.nonzero(dense, as_tuple=True)[0]
    if idx.numel() > compressor.k:
        raise ValueError(f"{compressor.name} output has {idx.numel()} non-zeros, more than k={compressor.k}")
    return dense[idx].float(), idx


def from_sparse(values: torch.Tensor, indices: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    """Dense ``[dim]`` vector from a sparse message; rejects malformed messages by name."""
    if values.ndim != 1 or indices.shape != values.shape:
        raise ValueError(f"sparse update needs matching 1-D values and indices, got {tuple(values.shape)} "
                         f"and {tuple(indices.shape)}")
    if values.numel() > k:
        raise ValueError(f"sparse update has {values.numel()} values, the compressor sends at most {k}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= dim):
        raise ValueError(f"sparse update has indices outside 0..{dim - 1}")
    if torch.unique(indices).numel() != indices.numel():
        raise ValueError("sparse update repeats an index")
    out = torch.zeros(dim, dtype=torch.float32)
    out[indices.long()] = values.float()
    return out


def xi(alpha: float) -> float:
    """sqrt(beta / theta) at the best s: (1 + sqrt(1 - alpha)) / alpha - 1 (EF21, arXiv 2106.05203, Lemma 3)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return (1.0 + math.sqrt(1.0 - alpha)) / alpha - 1.0


def theta_beta(alpha: float, s: float | None = None) -> tuple[float, float]:
    """theta = 1 - (1 - alpha)(1 + s), beta = (1 - alpha)(1 + 1/s); s defaults to 1/sqrt(1 - alpha) - 1."""
    if alpha == 1.0:
        return 1.0, 0.0
    if s is None:
        s = 1.0 / math.sqrt(1.0 - alpha) - 1.0
    return 1.0 - (1.0 - alpha) * (1.0 + s), (1.0 - alpha) * (1.0 + 1.0 / s)


def _keep(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(v)
    out[idx] = v[idx]
    return out


def _need(gen: torch.Generator | None, name: str) -> torch.Generator:
    if gen is None:
        raise ValueError(f"the {name} compressor is randomised: pass an explicit torch.Generator")
    return gen
