"""Norm bounding: a server-side defense against poisoning that wraps any strategy.

Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", arXiv 1911.07963,
Sec. 3 ("norm thresholding of updates"): every received update Δ_i is scaled to
Δ_i · min(1, M / ‖Δ_i‖₂) before the strategy aggregates it, M = ``defense.norm_bound``. Boosted
(scaled) malicious updates then weigh no more than an honest update of norm M. The paper pairs it
with weak DP noise; that half is fedsim's user-level DP stage (``privacy.user_level``), which clips
again with its own bound.
"""

from __future__ import annotations

from ..core.clipping import clip_rows
from .base import ServerStage


class NormBound(ServerStage):
    name = "norm_bound"

    def __init__(self, bound: float):
        if not bound > 0:
            raise ValueError(f"defense.norm_bound must be > 0, got {bound}")
        self.bound = float(bound)

    def before(self, server_round: int, cohort, metrics: dict):
        if cohort.updates.shape[0] == 0:
            return cohort, None
        clipped, norms = clip_rows(cohort.updates, self.bound)
        metrics["defense/clipped"] = int((norms > self.bound).sum())
        return cohort.replace(updates=clipped), None
