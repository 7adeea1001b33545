"""The staleness oracle: an experiment-only bound on what any staleness repair can gain.

With ``staleness_oracle = true`` (in-process runs of an asynchronous strategy only; ``fedsim server``
refuses it) every stale answer is replaced, when it arrives, by the update the same client would
have sent had it trained on the *current* global model: same data, local steps, learning rate and
optimizer, a fresh minibatch draw for the current round, delivered at the stale answer's arrival
time and counted as fresh (staleness 0). Arrival times, participation and everything else stay as
they were, so the gap between the oracle and ``direct`` aggregation is the most a per-update repair
(``repair``, weighting, ...) could recover; the rest of the gap to an unstale run is lost
contributions, which no repair can fix.

This is not a strategy a server could run: it needs every client's data at the moment the answer
arrives. It lives in the experiment layer, wrapping the in-process grid, and its outputs say
``"staleness_oracle": true`` and count ``oracle/replaced`` answers per round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, Message, MessageType

from ..runtime import protocol as P
from .delay import DelayGrid


class OracleGrid(DelayGrid):
    """An in-process grid whose stale answers are replaced by fresh ones computed on ``current()``
    (stale by latency, or by a fixed model delay: ``DelayGrid``)."""

    def __init__(self, handler, num_clients: int, *, current: Callable[[], ArrayRecord], **kw):
        super().__init__(handler, num_clients, **kw)
        self.current = current
        self.sent: dict[str, tuple[int, dict]] = {}  # message id -> (node, train config), to re-run it
        self.replaced = 0                     # stale answers replaced in the current round

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.replaced = 0
        ids = list(super().push_messages(messages))  # counts the round (and ages the slow clients' models)
        for mid, msg in zip(ids, messages):
            if msg.metadata.message_type.startswith(MessageType.TRAIN):
                self.sent[mid] = (msg.metadata.dst_node_id, dict(msg.content[P.CONFIG]))
        return ids

    def pull_until(self, message_ids, min_replies: int, *, timeout=None, window=None) -> list[Message]:
        replies = super().pull_until(message_ids, min_replies, timeout=timeout, window=window)
        return [self._fresh(r) for r in replies]

    def forget(self, message_ids) -> None:
        super().forget(message_ids)
        for mid in message_ids:
            self.sent.pop(mid, None)

    def _fresh(self, reply: Message) -> Message:
        node, config = self.sent.pop(reply.metadata.reply_to_message_id, (None, None))
        if reply.has_error() or config is None or int(config["server-round"]) >= self.round:
            return reply
        msg = Message(P.train_content(self.current(), {**config, "server-round": self.round, P.SIM_LATENCY: 0.0}),
                      dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(self.round))
        self.replaced += 1
        return self.handler.train([msg], [self.contexts[node]])[0]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "oracle_sent": {m: (n, c) for m, (n, c) in self.sent.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sent = {m: (int(n), dict(c)) for m, (n, c) in state.get("oracle_sent", {}).items()}
