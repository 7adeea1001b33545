"""The client-side uplink stage: compress what a client sends, with optional error feedback.

After local training a client holds its update u_i (a model delta, or AFA/EF21's normalised mean
gradient, per the message's ``update-kind``). The stage sends

- ``none``: C(u_i)                          (plain compression, biased for Top-k);
- ``ef21``: c_i = C(u_i - g_i), g_i += c_i  (EF21, arXiv 2106.05203 Alg. 1; the client's first message
  is u_i uncompressed when ``ef-init = full``, the analogue of g_i^0 = grad f_i(x^0), else g_i^0 = 0);
- ``ef14``: m_i = C(e_i + u_i), e_i += u_i - m_i (classic error feedback, arXiv 1809.07599).

With ``client-clip`` S > 0 the update is first clipped to L2 norm S (``fedsim.core.clipping``), so
what a client sends is bounded whatever the strategy (the client half of local DP or of robust
aggregation). The per-client vectors g_i / e_i live in a compact ``ClientStateStore``. Randomised compressors draw
from a generator seeded by the job's seed, so a client's message does not depend on its cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord

from ..core.clipping import clip_vector
from ..core.compression import COMPRESSORS, Compressor, make_compressor, to_sparse
from ..core.error_feedback import ef14_step, ef21_step
from ..runtime import protocol as P
from .client_state import ClientStateStore

_COMPRESS_STREAM = 0x5DEECE66D


@dataclass(frozen=True)
class UplinkSpec:
    compressor: Compressor
    feedback: str = "none"
    ef_init: str = "full"
    clip: float = 0.0  # > 0: clip the update to this L2 norm first
    momentum: float = 1.0  # EF21-SGDM's eta (1: plain EF21)

    @staticmethod
    def from_config(cfg: ConfigRecord, dim: int, sizes: tuple[int, ...] = ()) -> UplinkSpec | None:
        """The stage a TRAIN message asks for, or None when it sends the update as is."""
        name = str(cfg.get(P.COMPRESSOR, "identity"))
        feedback = str(cfg.get(P.ERROR_FEEDBACK, "none"))
        clip = float(cfg.get(P.CLIENT_CLIP, 0.0))
        if not clip >= 0 or clip == float("inf"):
            raise ValueError(f"client-clip must be a finite number >= 0, got {clip}")
        if name == "identity" and feedback == "none" and clip == 0:
            return None
        if name not in COMPRESSORS:
            raise ValueError(f"unknown compressor '{name}', expected one of {COMPRESSORS}")
        if feedback not in P.FEEDBACKS:
            raise ValueError(f"unknown error-feedback '{feedback}', expected one of {P.FEEDBACKS}")
        ef_init = str(cfg.get(P.EF_INIT, "full"))
        if ef_init not in P.EF_INITS:
            raise ValueError(f"unknown ef-init '{ef_init}', expected one of {P.EF_INITS}")
        momentum = float(cfg.get(P.EF_MOMENTUM, 1.0))
        if not 0 < momentum <= 1:
            raise ValueError(f"ef-momentum must be in (0, 1], got {momentum}")
        if momentum < 1 and feedback != "ef21":
            raise ValueError("ef-momentum is EF21-SGDM's: it needs error-feedback ef21")
        k = int(cfg.get(P.COMPRESS_K, dim))
        if name == "prune":  # the client knows its tensors; the server's k must agree with them
            comp = make_compressor(name, dim, density=float(cfg.get(P.COMPRESS_DENSITY, 0.0)), sizes=sizes)
            if comp.k != k:
                raise ValueError(f"prune keeps {comp.k} coordinates of this model, the server expects {k}")
        else:
            comp = make_compressor(name, dim, k=k if name in ("top-k", "rand-k") else None,
                                   unbiased=bool(cfg.get(P.COMPRESS_UNBIASED, False)))
        return UplinkSpec(comp, feedback, ef_init, clip, momentum)


class Uplink:
    """Applies an ``UplinkSpec`` for many virtual clients; owns their error-feedback state."""

    def __init__(self, num_clients: int, dim: int):
        self.store = ClientStateStore(num_clients, dim)     # EF21's g_i or EF14's e_i
        self.momentum = ClientStateStore(num_clients, dim)  # EF21-SGDM's v_i

    def encode(self, spec: UplinkSpec, cid: int, update: torch.Tensor, seed: int) -> ArrayRecord:
        gen = torch.Generator().manual_seed(seed ^ _COMPRESS_STREAM)
        if spec.clip > 0:
            update = clip_vector(update, spec.clip)

        def compress(v: torch.Tensor) -> torch.Tensor:
            return spec.compressor(v, gen)

        state = self.store.get(cid)
        if spec.momentum < 1:  # EF21-SGDM: compress the client's momentum estimator instead of its update
            v = self.momentum.get(cid)
            update = update if v is None else (1 - spec.momentum) * v + spec.momentum * update
            self.momentum.set(cid, update)
        if spec.feedback == "ef21":
            if state is None and spec.ef_init == "full":
                self.store.set(cid, update)
                return P.flat_record(update)
            sent, new_state = ef21_step(torch.zeros_like(update) if state is None else state, update, compress)
            self.store.set(cid, new_state)
        elif spec.feedback == "ef14":
            sent, new_state = ef14_step(torch.zeros_like(update) if state is None else state, update, compress)
            self.store.set(cid, new_state)
        else:
            sent = compress(update)
        if spec.compressor.sparse:
            return P.sparse_record(*to_sparse(sent, spec.compressor))
        return P.flat_record(sent)
