"""fedsim's round loop over a ``FedsimGrid``: synchronous rounds and asynchronous arrival.

Flower's ``Strategy.start`` waits for every answer each round. ``run_rounds`` instead pushes the
round's messages and waits only for what the strategy asks for (``round_wait``): all of this
round's answers for synchronous strategies, the first ``m`` of everything outstanding for AFA-CD,
or whatever arrives within a ``round_time`` window (FedFix-style rounds). The grid owns the
messages still outstanding: an asynchronous round waits on all of them, so answers not yet in are
pulled in later rounds; a synchronous round waits on its own and the grid forgets the rest. On
fedsim's grids the wait advances a virtual clock; any other Flower grid is polled on the wall clock
(``as_fedsim_grid``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from . import protocol as P
from .grid import as_fedsim_grid


@dataclass
class RoundResult:
    round: int
    virtual_time: float
    participants: int
    bytes_up: int
    bytes_down: int
    metrics: dict = field(default_factory=dict)


def run_rounds(strategy, grid: Grid, arrays: ArrayRecord, *, first_round: int, last_round: int,
               train_config: dict | None = None, timeout: float | None = None,
               on_round: Callable[[RoundResult, ArrayRecord], bool | None] | None = None) -> ArrayRecord:
    """Run rounds ``first_round..last_round``; ``on_round`` sees each result and the new global model
    and may return True to stop early (e.g. a virtual-time budget is spent). To continue an
    asynchronous run from a checkpoint, restore the grid's state first: it holds what is in flight."""
    grid = as_fedsim_grid(grid)
    for rnd in range(first_round, last_round + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(dict(train_config or {})), grid))
        bytes_down = sum(P.record_bytes(m.content) for m in messages)
        pushed = set(grid.push_messages(messages))
        outstanding = grid.outstanding()
        need, window = strategy.round_wait(len(pushed), len(outstanding))
        replies = grid.pull_until(outstanding if strategy.asynchronous else pushed, need, timeout=timeout,
                                  window=window)
        if not strategy.asynchronous:  # a synchronous round forgets answers that did not come in time
            grid.forget(pushed - {m.metadata.reply_to_message_id for m in replies})
        new_arrays, metrics = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = new_arrays
        metrics = dict(metrics or {})
        if "comm/bits_up" in metrics:  # the strategy counts what its compressor puts on the wire
            bytes_up = -(-int(metrics["comm/bits_up"]) // 8)
        else:
            bytes_up = sum(P.record_bytes(m.content) for m in replies if not m.has_error())
        result = RoundResult(rnd, float(grid.now), int(metrics.pop("participants", len(replies))),
                             bytes_up, bytes_down, metrics)
        if on_round is not None and on_round(result, arrays):
            break
    return arrays
