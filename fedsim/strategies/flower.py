"""Flower's own strategies on fedsim's runtimes: ``strategy.name = "flwr:FedAdam"``.

Any class exported by ``flwr.serverapp.strategy`` (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi,
FedAdagrad, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan, QFedAvg, ...) is built from
``[strategy.args]`` (its constructor keywords) and used as it is: it samples the nodes, builds the
TRAIN messages and aggregates the replies. ``FlowerStrategy`` only adapts it to fedsim's round loop
(``fedsim.runtime.loop``), checkpoints and outputs:

- fedsim's participation model (the environment) decides which clients are available in a round and
  how long each takes on the virtual clock; the Flower strategy sees only those nodes and samples its
  ``fraction_train`` of them (default 1.0: all). A round with fewer available nodes than the strategy's
  ``min_available_nodes`` / ``min_train_nodes`` is skipped with a warning (Flower would wait forever);

- the train config it hands the Flower strategy carries the round's local learning rate
  (``client.lr_schedule``), ``local-steps``, ``batch-size``, ``seed`` and the client optimizer, so
  fedsim's clients train as configured; Flower's strategies pass the config through unchanged (FedProx
  adds ``proximal-mu``, which fedsim's clients apply as the proximal term);
- fedsim's ClientHandler answers these messages in Flower's convention (trained weights under
  ``arrays``, ``num-examples`` and ``train_loss`` in ``metrics``) and answers EVALUATE messages too;
- Flower samples nodes with Python's ``random``: it is seeded per round from (seed, round), so a run is
  reproducible and a resumed run samples as the uninterrupted one;
- replies are screened before Flower sees them, as fedsim's own decoder does: error replies, missing or
  wrong-shaped weights, NaN/Inf, and a ``num-examples`` that is missing, not positive or above what the
  client registered with are rejected one by one
  (logged, counted in ``server/rejected``); if Flower's aggregation raises, the round keeps the model;
- the strategy's own state (server optimizer moments, momentum, current weights: every array-valued
  attribute) is saved with fedsim's checkpoint, so ``--resume`` continues exactly.

Central evaluation is fedsim's (``eval_every``); Flower's federated evaluation runs when the strategy
is driven by Flower's own ``Strategy.start`` (fedsim's clients answer it on their own data).
Classes whose constructor needs another strategy object (the DP wrappers) or XGBoost models are not
expressible in a TOML config; ``fedsim.strategies.flower.flower_class`` says so.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
import logging
import math
import random

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from ..core.params import ParamSpec
from ..local.optimizer import ClientOptimizer, lr_at
from ..local.reference import job_seed
from ..runtime import protocol as P
from ..runtime.directory import ClientDirectory

log = logging.getLogger("fedsim")

PREFIX = "flwr:"
_NOT_FROM_CONFIG = ("DifferentialPrivacy", "FedXgb")  # need a strategy object / XGBoost models


def is_flower_name(name: str) -> bool:
    return name.startswith(PREFIX)


def flower_class(name: str) -> type:
    """The ``flwr.serverapp.strategy`` class named by ``flwr:<Class>``."""
    from flwr.serverapp import strategy as fs

    cls_name = name[len(PREFIX):]
    usable = sorted(n for n in fs.__all__ if n not in ("Strategy", "Result") and not n.startswith(_NOT_FROM_CONFIG))
    cls = getattr(fs, cls_name, None)
    if cls_name.startswith(_NOT_FROM_CONFIG):
        raise ValueError(f"'{name}' wraps another strategy object or XGBoost models, which a config cannot "
                         f"express; use it from your own ServerApp (usable here: {', '.join(usable)})")
    if not (isinstance(cls, type) and issubclass(cls, fs.Strategy)) or cls_name not in usable:
        raise ValueError(f"'{name}' is not a strategy class of flwr.serverapp.strategy; one of "
                         + ", ".join(PREFIX + n for n in usable))
    return cls


def check_args(name: str, args: dict) -> None:
    """Raise ValueError naming the first keyword ``flwr:<Class>``'s constructor does not take."""
    params = inspect.signature(flower_class(name).__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in args:
        if key not in params or key == "self":
            raise ValueError(f"strategy.args.{key} is not a keyword of {name[len(PREFIX):]} "
                             f"(it takes {', '.join(k for k in params if k != 'self')})")


class FlowerStrategy:
    """A ``flwr.serverapp.strategy`` instance behind the interface of fedsim's round loop."""

    asynchronous = False
    noisy_sum = False  # no user-level DP stage around a Flower strategy

    def __init__(self, name: str, args: dict, participation, *, local_lr: float, batch_size: int, seed: int,
                 client_optimizer: ClientOptimizer | None = None,
                 lr_schedule: tuple[str, float, int] = ("constant", 1.0, 1)):
        check_args(name, args)
        try:
            self.inner = flower_class(name)(**args)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} with strategy.args {args}: {exc}") from None
        self.name, self.participation = name, participation
        self.directory = ClientDirectory(participation.num_clients)
        self.local_lr, self.batch_size, self.seed = local_lr, batch_size, seed
        self.client_optimizer = client_optimizer or ClientOptimizer()
        self.lr_schedule = lr_schedule
        self.spec: ParamSpec | None = None
        self.params: torch.Tensor | None = None
        self.rejections: list[str] = []

    # --- fedsim's round loop ------------------------------------------------------------------------
    def round_wait(self, pushed: int, in_flight: int) -> tuple[int, float | None]:
        return pushed, None  # Flower's strategies are synchronous: every answer of the round

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> list[Message]:
        self.bind(arrays)
        if not self.directory.complete:
            self.directory.discover(grid)
        plan = self.participation.sample(server_round, np.ones(self.participation.num_clients, dtype=bool))
        available = [self.directory.node_of[c] for c in plan.clients.tolist()]
        need = self._nodes_needed(len(available))
        if len(available) < need:  # Flower would wait for more nodes forever: this round trains no one
            log.warning("round %d: %d clients available, %s needs %d; the round is skipped", server_round,
                        len(available), self.name, need)
            return []
        train = {**dict(config), "lr": lr_at(self.local_lr, *self.lr_schedule[:2], server_round, self.lr_schedule[2]),
                 "local-steps": self.participation.local_steps, "batch-size": self.batch_size, "seed": self.seed,
                 **self.client_optimizer.config()}
        random.seed(job_seed(self.seed, server_round, 0))  # Flower's node sampling draws from Python's random
        with _quiet_flower():
            messages = self.inner.configure_train(server_round, arrays, ConfigRecord(train),
                                                  _Available(grid, available))
        latency = dict(zip(available, plan.latency.tolist()))
        return [_with_latency(m, latency[m.metadata.dst_node_id]) for m in messages]

    def _nodes_needed(self, available: int) -> int:
        """What Flower's ``sample_nodes`` waits for (FedAvg's attributes; 0 for a strategy without them)."""
        inner = self.inner
        sample = int(available * getattr(inner, "fraction_train", 1.0))
        return max(getattr(inner, "min_available_nodes", 0), getattr(inner, "min_train_nodes", 0), sample)

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord]:
        valid, self.rejections = [], []
        for msg in replies:
            try:
                self._screen(msg)
                valid.append(msg)
            except (KeyError, ValueError, TypeError) as exc:
                self._reject(server_round, f"node {msg.metadata.src_node_id}: {type(exc).__name__}: {exc}")
        metrics: dict = {}
        bits_up = 8 * sum(P.record_bytes(m.content) for m in valid)  # before Flower's rules touch the replies
        if valid:
            before = self._snapshot()
            try:
                with _quiet_flower():
                    arrays, metrics = self.inner.aggregate_train(server_round, valid)
            except Exception as exc:  # noqa: BLE001 - Flower refused the round (e.g. inconsistent replies)
                self._restore(before)
                arrays, metrics = None, {}
                for msg in valid:
                    self._reject(server_round, f"node {msg.metadata.src_node_id}: {self.name} did not aggregate: "
                                               f"{type(exc).__name__}: {exc}")
                valid = []
            if arrays is not None:
                new = self.spec.flatten(arrays.to_torch_state_dict()).float()
                if not torch.isfinite(new).all():
                    self._restore(before)
                    raise FloatingPointError(f"round {server_round}: {self.name}'s aggregated model is not finite; "
                                             "the previous global model and strategy state are kept")
                self.params = new
        out = {"participants": len(valid), "server/rejected": len(self.rejections), "comm/bits_up": bits_up}
        for key, value in dict(metrics or {}).items():  # Flower's weighted means of the clients' metrics
            if isinstance(value, (int, float)) and key != "num-examples":
                out["train_loss" if key == "train_loss" else f"clients/{key}"] = float(value)
        return self.global_arrays(), MetricRecord(out)

    # --- what fedsim's run needs ----------------------------------------------------------------------
    def bind(self, arrays: ArrayRecord) -> None:
        state = arrays.to_torch_state_dict()
        if self.spec is None:
            self.spec = ParamSpec.of(state)
        self.params = self.spec.flatten(state).float()

    def global_arrays(self) -> ArrayRecord:
        return ArrayRecord(torch_state_dict={k: v.clone() for k, v in self.spec.unflatten(self.params).items()})

    def summary_fields(self, rounds_done: int) -> dict:
        return {"flower_strategy": type(self.inner).__name__}

    def row_fields(self, metrics: dict) -> dict:
        return {}

    def summary(self) -> None:
        self.inner.summary()

    def state_dict(self) -> dict:
        return {"params": self.params, "flower": self._snapshot(), "participation": self.participation.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        params = state["params"]
        if self.spec is not None and params is not None and params.shape != (self.spec.dim,):
            raise ValueError(f"checkpoint model has {params.numel()} parameters, this model has {self.spec.dim}")
        self.params = params
        self._restore(state["flower"])
        self.participation.load_state_dict(state["participation"])

    # --- helpers --------------------------------------------------------------------------------------
    def _screen(self, msg: Message) -> None:
        if msg.has_error():
            raise ValueError(f"client error: {msg.error.reason}")
        n = msg.content[P.METRICS]["num-examples"]
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
            raise ValueError(f"num-examples must be a finite number > 0, got {n!r}")
        cid = self.directory.client_of(msg.metadata.src_node_id)
        registered = None if cid is None else self.directory.num_examples.get(cid)
        if registered is not None and n > registered:  # one node must not take over a weighted average
            raise ValueError(f"num-examples {n:g} exceeds the {registered} examples client {cid} registered with")
        weights = self.spec.flatten(msg.content[P.ARRAYS].to_torch_state_dict())
        if not torch.isfinite(weights).all():
            raise ValueError("the weights contain NaN or Inf")

    def _reject(self, server_round: int, reason: str) -> None:
        self.rejections.append(reason)
        log.warning("round %d: rejected the answer of %s", server_round, reason)

    def _snapshot(self) -> dict:
        """The Flower strategy's array-valued (and unset) attributes, as torch tensors."""
        return {k: _to_torch(v) for k, v in vars(self.inner).items() if v is None or _is_arrays(v)}

    def _restore(self, snapshot: dict) -> None:
        for key, value in snapshot.items():
            setattr(self.inner, key, _from_torch(copy.deepcopy(value)))


@contextmanager
def _quiet_flower():
    """Flower's strategies log two INFO lines per round; fedsim reports rounds itself (warnings pass)."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


class _Available:
    """The grid as the Flower strategy sees it this round: only the nodes the participation model made
    available (Flower's ``fraction_train`` then samples among them)."""

    def __init__(self, grid, nodes: list[int]):
        self._grid, self._nodes = grid, nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name):
        return getattr(self._grid, name)


def _with_latency(msg: Message, latency: float) -> Message:
    """The message with its own config holding its virtual latency (Flower's messages of a round share
    one content; the arrays stay shared)."""
    content = msg.content
    records = {k: content[k] for k in content.keys()}
    key = P.CONFIG if P.CONFIG in records else None
    if key is None:
        return msg
    records[key] = ConfigRecord({**dict(content[key]), P.SIM_LATENCY: float(latency)})
    return Message(RecordDict(records), dst_node_id=msg.metadata.dst_node_id,
                   message_type=msg.metadata.message_type, group_id=msg.metadata.group_id)


def _is_arrays(v) -> bool:
    if isinstance(v, (np.ndarray, ArrayRecord)):
        return True
    if isinstance(v, dict) and v:
        return all(isinstance(x, np.ndarray) for x in v.values())
    if isinstance(v, list) and v:
        return all(isinstance(x, np.ndarray) for x in v)
    return False


def _to_torch(v):
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v.copy())
    if isinstance(v, ArrayRecord):
        return {"__arrayrecord__": {k: torch.from_numpy(a.numpy().copy()) for k, a in v.items()}}
    if isinstance(v, dict):
        return {k: _to_torch(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_to_torch(x) for x in v]
    return v


def _from_torch(v):
    if isinstance(v, torch.Tensor):
        return v.numpy()
    if isinstance(v, dict) and "__arrayrecord__" in v:
        return _record(v["__arrayrecord__"])
    if isinstance(v, dict):
        return {k: _from_torch(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_from_torch(x) for x in v]
    return v


def _record(tensors: dict) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(t.numpy()) for k, t in tensors.items()})
