"""fedsim's round loop over any Flower ``Grid``: synchronous rounds and asynchronous arrival.

Flower's ``Strategy.start`` waits for every answer each round. ``run_rounds`` instead pushes the
round's messages and waits only for as many answers as the strategy asks for (``round_wait``):
all of this round's for synchronous strategies, the first ``m`` of everything in flight for AFA-CD,
or whatever arrives within a strategy's ``round_time`` window (FedFix-style rounds).
Answers not yet in stay in flight and are pulled in later rounds. On fedsim's in-process grid the
wait advances a virtual clock (``pull_until``); on any other grid it polls with wall-clock sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from . import protocol as P


@dataclass
class RoundResult:
    round: int
    virtual_time: float
    participants: int
    bytes_up: int
    bytes_down: int
    metrics: dict = field(default_factory=dict)


def wait_for(grid: Grid, message_ids: set[str], need: int, timeout: float | None, poll: float = 0.05,
             window: float | None = None) -> list[Message]:
    """Collect at least ``need`` answers among ``message_ids`` (fewer if ``timeout`` passes, or the
    ``window`` of the grid's arrival clock: virtual seconds on fedsim's grids, wall seconds elsewhere)."""
    if hasattr(grid, "pull_until"):
        return grid.pull_until(message_ids, need, timeout=timeout, window=window)
    if window is not None:
        timeout = window if timeout is None else min(timeout, window)
    got: list[Message] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        got.extend(grid.pull_messages(message_ids - {m.metadata.reply_to_message_id for m in got}))
        if len(got) >= need or (deadline is not None and time.monotonic() >= deadline):
            return got
        time.sleep(poll)


def clock(grid: Grid, t0: float) -> float:
    return float(grid.now) if hasattr(grid, "now") else time.monotonic() - t0


def run_rounds(strategy, grid: Grid, arrays: ArrayRecord, *, first_round: int, last_round: int,
               train_config: dict | None = None, timeout: float | None = None, pending: set[str] | None = None,
               on_round: Callable[[RoundResult, ArrayRecord], bool | None] | None = None) -> ArrayRecord:
    """Run rounds ``first_round..last_round``; ``on_round`` sees each result and the new global model
    and may return True to stop early (e.g. a virtual-time budget is spent).

    ``pending`` (updated in place) holds the ids of messages still in flight; pass the saved set to
    continue an asynchronous run from a checkpoint.
    """
    pending = set() if pending is None else pending
    t0 = time.monotonic()
    for rnd in range(first_round, last_round + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(dict(train_config or {})), grid))
        bytes_down = sum(P.record_bytes(m.content) for m in messages)
        pushed = set(grid.push_messages(messages))
        pending |= pushed
        need, window = strategy.round_wait(len(pushed), len(pending))
        replies = wait_for(grid, pending if strategy.asynchronous else pushed, need, timeout, window=window)
        pending -= {m.metadata.reply_to_message_id for m in replies}
        if not strategy.asynchronous:
            if hasattr(grid, "forget"):  # a remote grid withdraws the work and drops late answers
                grid.forget(pending)
            pending.clear()  # a synchronous round forgets answers that did not come in time
        new_arrays, metrics = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = new_arrays
        metrics = dict(metrics or {})
        if "comm/bits_up" in metrics:  # the strategy counts what its compressor puts on the wire
            bytes_up = -(-int(metrics["comm/bits_up"]) // 8)
        else:
            bytes_up = sum(P.record_bytes(m.content) for m in replies if not m.has_error())
        result = RoundResult(rnd, clock(grid, t0), int(metrics.pop("participants", len(replies))),
                             bytes_up, bytes_down, metrics)
        if on_round is not None and on_round(result, arrays):
            break
    return arrays
