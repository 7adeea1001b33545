"""Server stages: pieces that wrap any strategy's aggregation, in the spirit of pfl-research's
postprocessors (``pfl/postprocessor/base.py``) and optax's ``init``/``update`` pairs.

A round's aggregation runs as a pipeline (``ServerPipeline.aggregate``):

1. ``before``: each stage may transform the decoded cohort (user-level DP clips every answer) and may
   hand back a noise vector for the strategy's sum (user-level DP's i.i.d. or DP-MF noise);
2. the strategy's rule ``server_update`` runs on the (clipped) cohort, with the noise if one was drawn;
3. ``after``: each stage may transform the new global model (the server optimizer step).

A stage keeps what it must carry between rounds in ``state_dict`` / ``load_state_dict``, saved with
the strategy's checkpoint. Stages never read the participation model's true probabilities.
"""

from __future__ import annotations

import torch


class ServerStage:
    """Base of a server stage: every hook defaults to a no-op."""

    name = "stage"

    def init(self, dim: int) -> None:
        """Create state for a model of ``dim`` parameters (called once the layout is known)."""

    def on_send(self, server_round: int, clients: list[int]) -> None:
        """``clients`` were just sent work in ``server_round`` (DP-MF checks its participation schema)."""

    def before(self, server_round: int, cohort, metrics: dict):
        """-> (cohort, noise [D] or None); may add to ``metrics``."""
        return cohort, None

    def after(self, server_round: int, old: torch.Tensor, new: torch.Tensor, metrics: dict) -> torch.Tensor:
        """-> the new global model; may add to ``metrics``."""
        return new

    def summary(self, rounds_done: int) -> dict:
        """Fields this stage adds to ``summary.json`` (e.g. epsilon)."""
        return {}

    def row_fields(self, metrics: dict) -> dict:
        """Fields this stage adds to a ``metrics.jsonl`` row, given the round's metrics."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ServerPipeline:
    """The server stages of one strategy, in order."""

    def __init__(self, stages: list[ServerStage] | tuple[ServerStage, ...] = ()):
        self.stages = list(stages)

    def __bool__(self) -> bool:
        return bool(self.stages)

    def init(self, dim: int) -> None:
        for s in self.stages:
            s.init(dim)

    def on_send(self, server_round: int, clients: list[int]) -> None:
        for s in self.stages:
            s.on_send(server_round, clients)

    def aggregate(self, strategy, server_round: int, params: torch.Tensor, cohort, state: dict):
        """``(new params, new algorithm state, metrics)`` of one round through the stages."""
        metrics: dict = {}
        noise = None
        for s in self.stages:
            cohort, drawn = s.before(server_round, cohort, metrics)
            if drawn is not None:
                if noise is not None:
                    raise ValueError("two server stages draw noise for the same sum; keep one DP stage")
                noise = drawn * strategy.weight_bound(server_round)
        new, state, own = strategy.server_update(server_round, params, cohort, state, noise=noise)
        metrics.update(own)
        for s in self.stages:
            new = s.after(server_round, params, new, metrics)
        return new, state, metrics

    def summary(self, rounds_done: int) -> dict:
        out: dict = {}
        for s in self.stages:
            out.update(s.summary(rounds_done))
        return out

    def row_fields(self, metrics: dict) -> dict:
        out: dict = {}
        for s in self.stages:
            out.update(s.row_fields(metrics))
        return out

    def state_dict(self) -> dict:
        return {s.name: s.state_dict() for s in self.stages}

    def load_state_dict(self, state: dict) -> None:
        for s in self.stages:
            if s.name in state:
                s.load_state_dict(state[s.name])
