"""The past global models still needed (a bounded store of versions), for servers that need the model a stale answer was
computed on (FedAsync mixes ``y = x_s + delta``; staleness repair inverts ``delta`` at ``x_s``).

A version is the round whose global model was sent. Only versions some in-flight job was sent are
worth keeping (``retain``), so memory is ``O(distinct versions in flight x D)``; ``limit`` caps it
for unlimited staleness: beyond it the oldest version is dropped and an answer computed on it is
reported as a miss (the strategy then treats it as computed on the current model).
Stored tensors are shared, not copied: strategies replace their global vector, never mutate it.
"""

from __future__ import annotations

import torch


class ModelVersions:
    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"strategy.history (versions kept) must be >= 1, got {limit}")
        self.limit = limit
        self.versions: dict[int, torch.Tensor] = {}
        self.dropped = 0  # versions evicted by the limit while still wanted

    def record(self, version: int, params: torch.Tensor) -> None:
        self.versions[version] = params
        while len(self.versions) > self.limit:
            del self.versions[min(self.versions)]
            self.dropped += 1

    def get(self, version: int) -> torch.Tensor | None:
        return self.versions.get(version)

    def retain(self, wanted: set[int]) -> None:
        """Forget every version no in-flight job was sent."""
        self.versions = {v: p for v, p in self.versions.items() if v in wanted}

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.versions.values())

    def state_dict(self) -> dict:
        return {"limit": self.limit, "versions": dict(self.versions), "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        if int(state["limit"]) != self.limit:
            raise ValueError(f"model versions were saved with limit {state['limit']}, this run keeps {self.limit}")
        self.versions = {int(v): p.clone() for v, p in state["versions"].items()}
        self.dropped = int(state["dropped"])
