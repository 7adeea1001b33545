"""Byzantine-robust aggregation of the clients' updates, with Flower's own aggregation rules
(``flwr.server.strategy.aggregate``; fedsim does not re-implement them):

- ``fedmedian``: coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, ICML 2018, arXiv
  1803.01498, Option I; Flower's ``aggregate_median``);
- ``fedtrimmedavg``: coordinate-wise mean after cutting the ``strategy.trim`` fraction at each end
  (same paper, Option II; Flower's ``aggregate_trimmed_avg``);
- ``krum``: the update whose n − f − 2 nearest updates are closest, f = ``strategy.byzantine``;
  with ``strategy.keep`` = m > 0, Multi-Krum: the example-weighted mean of the m best (Blanchard,
  El Mhamdi, Guerraoui, Stainer, NeurIPS 2017, Eq. 1 and §5; Flower's ``aggregate_krum``).

The rules run on the updates Δ_i (not on full weights, as Flower's strategies do; with one shared
starting model the two are the same up to adding x), then ``x ← x + η_g · rule(Δ)``. The sample
counts clients report are ignored by the median and the trimmed mean, as in Flower.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Cohort, FedsimStrategy

RULES = ("median", "trimmed-mean", "krum")


class RobustStrategy(FedsimStrategy):
    name = "robust"

    def __init__(self, participation, *, rule: str, trim: float = 0.2, byzantine: int = 0, keep: int = 0, **kw):
        super().__init__(participation, **kw)
        if rule not in RULES:
            raise ValueError(f"robust rule must be one of {RULES}, got '{rule}'")
        if not 0 <= trim < 0.5:
            raise ValueError(f"strategy.trim must be in [0, 0.5), got {trim}")
        if byzantine < 0 or keep < 0:
            raise ValueError(f"strategy.byzantine and strategy.keep must be >= 0, got {byzantine}, {keep}")
        self.rule, self.trim, self.byzantine, self.keep = rule, float(trim), int(byzantine), int(keep)
        self.name = {"median": "fedmedian", "trimmed-mean": "fedtrimmedavg", "krum": "krum"}[rule]

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        if cohort.updates.shape[0] == 0:
            return params, state, {}
        from flwr.server.strategy import aggregate as flower  # the rules as Flower ships them

        results = [([u.numpy()], int(n)) for u, n in zip(cohort.updates, cohort.num_examples.tolist())]
        if self.rule == "median":
            (agg,) = flower.aggregate_median(results)
        elif self.rule == "trimmed-mean":
            (agg,) = flower.aggregate_trimmed_avg(results, self.trim)
        else:
            (agg,) = flower.aggregate_krum(results, self.byzantine, self.keep)
        direction = torch.as_tensor(np.asarray(agg, dtype=np.float32))
        return params + self.server_lr * direction, state, {}
