"""Fixed model delay: Wang & Gao's staleness scenario (arXiv 2309.13536, their code's ring buffer).

With ``stale_model_delay = D`` (in-process runs only) the slow clients of ``participation.slow_classes``
are selected like every other client and answer within their round, but train on the global model of
D rounds earlier (the model of round 1 while fewer than D rounds have passed): each answer reports
that round as the model it was computed on, so the strategy sees staleness exactly D, and no
contribution is lost to a busy client. This differs from fedsim's latency-based staleness
(``slow_factor``), where a slow client is away for its answer's latency and contributes less often.
The paper's reference code keeps a ring whose oldest entry is one round younger than its stated
delay; here the delay is exact (tested).

This is an experiment setting, not a protocol a server could follow (a real server sends the
current model): it wraps the in-process grid, replacing the model and ``server-round`` of the
messages to slow clients. Strategies need the models of the last D rounds to repair or mix those
answers; ``run_single`` asks the strategy to keep them (``keep_recent``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType

from ..runtime import protocol as P
from ..runtime.inprocess import InProcessGrid


class DelayGrid(InProcessGrid):
    """An in-process grid that hands the clients flagged in ``stale`` the model of ``delay`` rounds ago."""

    def __init__(self, handler, num_clients: int, *, stale: np.ndarray | None = None, delay: int = 0,
                 first_round: int = 1, **kw):
        super().__init__(handler, num_clients, **kw)
        if delay < 0:
            raise ValueError(f"stale_model_delay must be >= 0, got {delay}")
        if delay and (stale is None or not np.any(stale)):
            raise ValueError("stale_model_delay needs stale clients (participation.slow_classes)")
        self.delay = int(delay)
        self.stale = np.zeros(num_clients, dtype=bool) if stale is None else np.asarray(stale, dtype=bool)
        self.round = first_round - 1  # the round being run: run_rounds pushes once per round
        self.models: dict[int, ArrayRecord] = {}  # round -> the global model sent that round (last delay + 1)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.round += 1
        train = [m for m in messages if m.metadata.message_type.startswith(MessageType.TRAIN)]
        if self.delay and train:
            self.models[self.round] = train[0].content[P.ARRAYS]
            self.models = {r: a for r, a in self.models.items() if r >= self.round - self.delay}
            for msg in train:
                if self.stale[self.client_of(msg.metadata.dst_node_id)]:
                    self._age(msg)
        return super().push_messages(messages)

    def _age(self, msg: Message) -> None:
        """Give ``msg`` the model of ``delay`` rounds ago (the oldest kept early in a run)."""
        version = max(self.round - self.delay, min(self.models))
        msg.content[P.ARRAYS] = self.models[version]
        msg.content[P.CONFIG] = ConfigRecord({**dict(msg.content[P.CONFIG]), "server-round": version})

    def state_dict(self) -> dict:
        models = {r: a.to_torch_state_dict() for r, a in self.models.items()}
        return {**super().state_dict(), "delayed_models": models}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.models = {int(r): ArrayRecord(torch_state_dict=sd) for r, sd in state.get("delayed_models", {}).items()}
