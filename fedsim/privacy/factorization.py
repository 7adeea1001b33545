"""A factorization ``A = B·C`` of a workload, its error metrics, and its file format.

Conventions:

- C is lower-triangular [n, n] (the binary tree's C is its node × step matrix [m, n]);
  ``X = CᵀC``; the release is ``B(CG + Z)`` = ``A(G + W·Z)`` with W the *noise map*
  (``W = C⁻¹`` for square C), so the noise added to the summed gradient at step t is row t of W·Z.
- ``B = A·W``; per-query error ``‖B[t]‖²``; ``loss = sens²·mean_t‖B[t]‖²``; ``rmse = sqrt(loss)``;
  ``max_error = sens·sqrt(max_t‖B[t]‖²)`` (jax_privacy conventions, per unit σ and clip norm).
- ``C_from_gram`` is the flip–Cholesky–flip: ``np.linalg.cholesky(X)`` returns L with X = L·Lᵀ,
  so neither L (wrong Gram) nor Lᵀ (upper-triangular, not streamable) is the right factor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

import numpy as np

from .patterns import ParticipationSchema
from .sensitivity import Sensitivity, gram, sensitivity_squared, squared_for_pattern

FORMAT_VERSION = 1


def C_from_gram(X: np.ndarray) -> np.ndarray:
    """Lower-triangular C with CᵀC = X: with P the reversal, M = chol(P·X·P), C = (P·M·P)ᵀ."""
    M = np.linalg.cholesky(X[::-1, ::-1])
    return np.ascontiguousarray(M[::-1, ::-1].T)


def normalize_columns(C: np.ndarray) -> np.ndarray:
    """Scale C so its largest column norm is 1 (the loss is scale invariant)."""
    return C / np.sqrt((C * C).sum(axis=0).max())


@dataclass(frozen=True)
class Metrics:
    sensitivity: float
    sensitivity_exact: bool
    rmse: float
    max_error: float
    loss: float
    mean_error: float  # mean_t ‖B[t]‖² per unit noise (before the sensitivity factor)

    def to_dict(self) -> dict:
        return {k: (bool(v) if isinstance(v, (bool, np.bool_)) else float(v))
                for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Factorization:
    """A factor C for workload A under a participation schema.

    ``structure``: ``{"kind": "dense"}``, ``{"kind": "banded", "bands": b}``,
    ``{"kind": "toeplitz", "coefs": [...]}``, ``{"kind": "blt", "theta": [...], "omega": [...]}``,
    or ``{"kind": "tree", "epoch": b, "estimator": "streaming" | "honaker"}`` (files from before
    restarts hold ``{"kind": "tree"}``: one tree, streaming); :class:`fedsim.privacy.noise.NoiseStream` streams accordingly.
    ``solver`` holds the optimiser's convergence info (empty for closed forms).
    """

    mechanism: str
    C: np.ndarray  # [n, n] lower-triangular (tree: [m, n])
    A: np.ndarray  # [n, n] workload
    schema: ParticipationSchema
    structure: dict = field(default_factory=lambda: {"kind": "dense"})
    solver: dict = field(default_factory=dict)

    def __post_init__(self):
        n = self.A.shape[0]
        if self.C.ndim != 2 or self.C.shape[1] != n or self.A.shape != (n, n):
            raise ValueError(f"C {self.C.shape} and A {self.A.shape} do not describe {n} steps")
        if self.schema.steps != n:
            raise ValueError(f"schema has {self.schema.steps} steps, factor has {n}")
        if self.structure["kind"] != "tree":
            if self.C.shape[0] != n or np.any(np.triu(self.C, 1) != 0):
                raise ValueError("C must be square and lower-triangular")
            if np.any(np.diag(self.C) == 0):
                raise ValueError("C must be invertible (zero on its diagonal)")

    @property
    def steps(self) -> int:
        return self.A.shape[0]

    def gram(self) -> np.ndarray:
        return gram(self.C)

    def noise_map(self) -> np.ndarray:
        """W [n, m]: the gradient-space noise is W·Z (C⁻¹ for square C)."""
        if self.structure["kind"] == "tree":
            from .tree import tree_noise_map
            return tree_noise_map(self.steps, self.structure.get("epoch"),
                                  str(self.structure.get("estimator", "streaming")))
        from scipy.linalg import solve_triangular  # scipy loads on first use (start-up time)

        return solve_triangular(self.C, np.eye(self.steps), lower=True)

    def B(self) -> np.ndarray:
        return self.A @ self.noise_map()

    def sensitivity(self, schema: ParticipationSchema | None = None) -> Sensitivity:
        schema = schema or self.schema
        if self.structure["kind"] in ("toeplitz", "blt") and schema.participations > 1:
            from .toeplitz import toeplitz_sensitivity_squared
            exact = toeplitz_sensitivity_squared(self.C[:, 0], schema)
            if exact is not None:
                return Sensitivity(exact, True)
        return sensitivity_squared(self.gram(), schema)

    def prefix_sensitivity(self, t: int, schema: ParticipationSchema | None = None) -> Sensitivity:
        """Sensitivity of the release's first t rounds: the rows of C supported on steps < t."""
        schema = schema or self.schema
        if t >= self.steps:
            return self.sensitivity(schema)
        rows = ~np.any(self.C[:, t:] != 0, axis=1)
        X = gram(self.C[rows][:, :t])
        return squared_for_pattern(X, schema.kind, schema.participations, schema.separation)

    def metrics(self, schema: ParticipationSchema | None = None) -> Metrics:
        sens = self.sensitivity(schema)
        err = (self.B() ** 2).sum(axis=1)  # [n] per-query error per unit noise
        loss = sens.squared * err.mean()
        return Metrics(sens.value, sens.exact, float(np.sqrt(loss)), float(sens.value * np.sqrt(err.max())),
                       float(loss), float(err.mean()))

    def with_schema(self, schema: ParticipationSchema) -> "Factorization":
        """The same factor evaluated under another schema (e.g. min-separation sampling)."""
        return replace(self, schema=schema)

    def noise_row_norms(self) -> np.ndarray:
        """‖row t of W‖ [n]: the per-round noise std is σ·ζ·sens·this."""
        return np.sqrt((self.noise_map() ** 2).sum(axis=1))

    def fingerprint(self) -> str:
        """sha256 of C (float64 bytes) and A: identifies the factor in privacy events."""
        h = hashlib.sha256()
        for a in (self.C, self.A):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    # -- file format ---------------------------------------------------------------------

    def save(self, path) -> None:
        """``.npz`` with arrays C, A, structure arrays, and a JSON ``meta`` string."""
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in self.structure.items() if k != "kind"
                  and not np.isscalar(v)}
        scalars = {k: v for k, v in self.structure.items() if k == "kind" or np.isscalar(v)}
        meta = {"format": FORMAT_VERSION, "mechanism": self.mechanism, "schema": self.schema.to_dict(),
                "structure": scalars, "structure_arrays": sorted(arrays), "solver": self.solver,
                "fingerprint": self.fingerprint()}
        with open(path, "wb") as fh:
            np.savez_compressed(fh, C=self.C, A=self.A, meta=np.array(json.dumps(meta)),
                                **{f"structure_{k}": v for k, v in arrays.items()})

    @classmethod
    def load(cls, path) -> "Factorization":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"{path}: unknown factorization format {meta.get('format')!r}")
            structure = dict(meta["structure"])
            structure.update({k: z[f"structure_{k}"] for k in meta["structure_arrays"]})
            s = meta["schema"]
            out = cls(meta["mechanism"], z["C"], z["A"],
                      ParticipationSchema(s["kind"], s["steps"], s["participations"], s["separation"]),
                      structure, meta["solver"])
        if out.fingerprint() != meta["fingerprint"]:
            raise ValueError(f"{path}: fingerprint mismatch (file corrupted)")
        return out
