"""Client-side message handling, shared by every runtime.

``ClientHandler`` turns TRAIN messages into replies for a whole cohort at once (the in-process runtime
hands it every message of a round; a Flower ClientApp hands it one) and answers QUERY messages with
the partition id the node hosts. It only decodes messages and calls the local trainer: the training
algorithm lives in ``fedsim.local.reference``, the worker-side AFA rule in ``fedsim.core.afa`` and
the uplink compression / error feedback (with its per-client state) in ``fedsim.local.uplink``; SCAFFOLD's
client control variates c_i are kept here (``controls``).

Where training runs: on ``device`` (``client.device``, ``fedsim.local.device``) in this process, or,
with ``workers > 1`` (``client.workers``, CPU only), split over forked worker processes
(``fedsim.local.pool``). Either way the uplink stage (compression, error-feedback state) runs here,
after training, and example-level DP (Opacus) jobs train in this process on the CPU. Clients' row
lists are stored compactly (``fedsim.local.client_rows``), so a handler can host 100,000 clients.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from ..core import afa
from ..core.params import ParamSpec
from ..runtime import protocol as P
from .example_dp import ExampleDP, private_copy, train_cohort_dp
from .optimizer import ClientOptimizer
from .device import resolve_device
from .evaluate import evaluate
from .client_rows import ClientRows
from .pool import WorkerPool, resolve_workers
from .reference import Job, job_seed
from .vectorized import TRAINERS, train
from .uplink import Uplink, UplinkSpec
from .client_state import ClientStateStore, StateVersions
from .adversary import Adversary

BAD_REQUEST = 400
FLOWER_PROX_MU = "proximal-mu"  # what Flower's FedProx strategy puts in its train config
UPLINK_STATE = "fedsim.uplink"
CONTROL_STATE = "fedsim.control"
MOMENTUM_STATE = "fedsim.ef-momentum"
COUNT_STATE = "fedsim.state-count"


def partition_id(context: Context) -> int:
    try:
        return int(context.node_config["partition-id"])
    except KeyError:
        raise ValueError("node_config has no 'partition-id': this node does not know which client it hosts") from None


class ClientHandler:
    """Hosts the data of many virtual clients and trains any subset of them on request."""

    def __init__(self, model: torch.nn.Module, train_split, parts: Sequence[np.ndarray], trainer: str = "auto", *,
                 workers: int = 1, device: str = "cpu", defaults: dict | None = None, adversary: Adversary | None = None):
        if trainer not in TRAINERS:
            raise ValueError(f"client.trainer must be one of {TRAINERS}, got '{trainer}'")
        self.device = resolve_device(device)
        self.workers = resolve_workers(workers)
        if self.workers > 1 and self.device.type != "cpu":
            if device != "auto":
                raise ValueError(f"client.workers = {workers} splits CPU training over processes; with "
                                 f"client.device '{device}' use client.workers = 1")
            self.workers = 1  # auto found an accelerator: the cohort trains there, in this process
        self.model = model.to(self.device)
        self.trainer = trainer
        self.spec = ParamSpec.of(model)
        self.adversary = adversary  # Byzantine clients: they train on poisoned rows or tamper with what they send
        self.data = train_split if adversary is None else adversary.poison(train_split, parts)
        self.parts = ClientRows(parts)
        self.uplink = Uplink(len(self.parts), self.spec.dim)
        self.controls = ClientStateStore(len(self.parts), self.spec.dim)  # SCAFFOLD's c_i
        self.state_counts = np.zeros(len(self.parts), dtype=np.int64)  # updates of each client's state so far
        self.versions: StateVersions | None = None  # earlier versions a server may ask for (keep_versions)
        self._gsm = None  # Opacus wrapper of a model copy, built on first example-level DP job
        self._eval_model = None  # a CPU copy for EVALUATE messages when training runs on an accelerator
        # train settings a message may leave out (a Flower strategy sends only server-round): the experiment's
        self.defaults = dict(defaults or {})
        self._pool: WorkerPool | None = None  # forked on the first cohort when workers > 1

    def close(self) -> None:
        """Stop the worker processes, if any (a later cohort forks new ones)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def num_examples(self) -> np.ndarray:
        """Training examples of every hosted client, int64 [N]."""
        return self.parts.sizes()

    def keep_versions(self) -> None:
        """Keep earlier versions of the clients' state so that a server resuming its checkpoint (or one
        that lost an answer) gets exactly the state it counted. A node process needs this; in-process
        the client state is part of the server's own checkpoint."""
        if self.versions is None:
            self.versions = StateVersions()

    def state_dict(self) -> dict:
        """Client-side state that outlives a round (error-feedback vectors, SCAFFOLD's c_i)."""
        state = {"uplink": self.uplink.store.state_dict(), "control": self.controls.state_dict(),
                 "momentum": self.uplink.momentum.state_dict(),
                 "counts": torch.from_numpy(self.state_counts.copy())}
        if self.versions is not None:
            state["versions"] = self.versions.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.uplink.store.load_state_dict(state["uplink"])
        if "control" in state:  # checkpoints from before SCAFFOLD have none
            self.controls.load_state_dict(state["control"])
        if "momentum" in state:  # nor from before EF21-SGDM
            self.uplink.momentum.load_state_dict(state["momentum"])
        if "counts" in state:
            self.state_counts = state["counts"].numpy().astype(np.int64).copy()
        if "versions" in state and self.versions is not None:
            self.versions.load_state_dict(state["versions"])

    @contextmanager
    def client_state(self, context: Context):
        """Load the hosted client's state from ``context.state`` and write it back afterwards: under
        Flower's runtimes the node Context, not this (possibly re-created) handler, is what persists."""
        cid = partition_id(context)
        stores = ((UPLINK_STATE, self.uplink.store), (CONTROL_STATE, self.controls),
                  (MOMENTUM_STATE, self.uplink.momentum))
        for key, store in stores:
            if key in context.state.array_records:
                store.from_record(cid, context.state.array_records[key])
        if COUNT_STATE in context.state.config_records:
            self.state_counts[cid] = int(context.state.config_records[COUNT_STATE]["count"])
        try:
            yield
        finally:
            for key, store in stores:
                record = store.to_record(cid)
                if record is not None:
                    context.state[key] = record
            context.state[COUNT_STATE] = ConfigRecord({"count": int(self.state_counts[cid])})

    def query(self, msg: Message, context: Context) -> Message:
        cid = partition_id(context)
        metrics = {"partition-id": cid, "num-partitions": len(self.parts), "num-examples": self._size(cid)}
        return Message(RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=msg)

    def train(self, messages: Sequence[Message], contexts: Sequence[Context]) -> list[Message]:
        """Answer TRAIN messages; messages sharing one global ArrayRecord are decoded once."""
        replies: list[Message | None] = [None] * len(messages)
        groups: dict[tuple, list[int]] = {}
        for i, msg in enumerate(messages):
            if P.ARRAYS not in msg.content.array_records:
                replies[i] = _error(msg, f"a TRAIN message carries the model under '{P.ARRAYS}'")
                continue
            key = (id(msg.content[P.ARRAYS]), _example_dp_key(self._config(msg)))
            groups.setdefault(key, []).append(i)
        for (_, dp_key), members in groups.items():
            arrays = messages[members[0]].content[P.ARRAYS]
            try:
                global_params = self.spec.flatten(arrays.to_torch_state_dict())
            except Exception as exc:  # noqa: BLE001 - a bad model is answered, not raised
                for i in members:
                    replies[i] = _error(messages[i], f"cannot read the global model: {exc}")
                continue
            jobs, ok = [], []
            for i in members:
                try:
                    jobs.append(self._job(messages[i], contexts[i]))
                    ok.append(i)
                except ValueError as exc:
                    replies[i] = _error(messages[i], str(exc))
            if not jobs:
                continue
            if dp_key is not None:
                deltas, losses = train_cohort_dp(self._private_model(), self.spec, global_params, jobs, self.data,
                                                 ExampleDP(*dp_key))
            else:
                deltas, losses = self._train(global_params, jobs)
            for k, i in enumerate(ok):
                replies[i] = self._reply(messages[i], jobs[k], deltas[k], float(losses[k]))
        return replies  # type: ignore[return-value]

    def _train(self, global_params: torch.Tensor, jobs: list[Job]) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-DP jobs: on ``self.device`` in this process, or split over the worker processes.
        Error-feedback encoding (``_reply``) stays in this process, after training."""
        if self.workers > 1:
            if self._pool is None:
                self._pool = WorkerPool(self.model, self.spec, self.data, self.trainer, self.workers)
            return self._pool.train(global_params, jobs)
        deltas, losses = train(self.model, self.spec, global_params.to(self.device), jobs, self.data, self.trainer)
        return deltas.cpu(), losses.cpu()

    def _private_model(self):
        if self._gsm is None:  # example-level DP jobs always train in this process, on the CPU
            self._gsm = private_copy(self.model if self.device.type == "cpu" else copy.deepcopy(self.model).cpu())
        return self._gsm

    def _size(self, cid: int) -> int:
        return self.parts.size(cid)

    def evaluate(self, messages: Sequence[Message], contexts: Sequence[Context]) -> list[Message]:
        """Answer Flower's EVALUATE messages: the model sent, on the client's own data (fedsim clients hold
        a partition of the training split); metrics ``eval_loss``, ``eval_acc``, ``num-examples``."""
        replies = []
        for msg, context in zip(messages, contexts):
            try:
                cid = self._client(context)
                params = self.spec.flatten(msg.content[P.ARRAYS].to_torch_state_dict())
                loss, acc = evaluate(self._cpu_model(), self.spec, params.cpu(), _Rows(self.data, self.parts[cid]))
            except Exception as exc:  # noqa: BLE001 - a bad message is answered, not raised
                replies.append(_error(msg, f"cannot evaluate: {type(exc).__name__}: {exc}"))
                continue
            metrics = {"eval_loss": loss, "eval_acc": acc, "num-examples": self._size(cid)}
            replies.append(Message(RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=msg))
        return replies

    def _cpu_model(self) -> torch.nn.Module:
        if self.device.type == "cpu":
            return self.model
        if self._eval_model is None:
            self._eval_model = copy.deepcopy(self.model).cpu()
        return self._eval_model

    def _config(self, msg: Message) -> dict:
        """The message's train config over the experiment's defaults: a Flower strategy's message carries
        only what its strategy sets (server-round, FedProx's proximal-mu, ...)."""
        sent = dict(msg.content.config_records.get(P.CONFIG, {}))
        if FLOWER_PROX_MU in sent:
            sent.setdefault(P.PROX_MU, sent[FLOWER_PROX_MU])
        return {**self.defaults, **sent}

    def _client(self, context: Context) -> int:
        cid = partition_id(context)
        if not 0 <= cid < len(self.parts):
            raise ValueError(f"unknown client: partition-id {cid} not in 0..{len(self.parts) - 1}")
        return cid

    def _job(self, msg: Message, context: Context) -> Job:
        cid = self._client(context)
        cfg = self._config(msg)
        missing = [k for k in ("local-steps", "lr", "batch-size", "seed", "server-round") if k not in cfg]
        if missing:
            raise ValueError(f"the train config has no {', '.join(missing)} and this client has no default")
        steps, lr, batch = int(cfg["local-steps"]), float(cfg["lr"]), int(cfg["batch-size"])
        if steps < 1 or lr <= 0 or batch < 1:
            raise ValueError(f"bad train config: local-steps={steps}, lr={lr}, batch-size={batch}")
        kind = str(cfg.get(P.UPDATE_KIND, P.UPDATE_DELTA))
        if kind not in P.UPDATE_KINDS:
            raise ValueError(f"unknown update-kind '{kind}', expected one of {P.UPDATE_KINDS}")
        UplinkSpec.from_config(cfg, self.spec.dim, self.spec.sizes)  # a bad compression config is answered before training
        dp = _example_dp_key(cfg)
        if dp is not None:
            ExampleDP(*dp)  # validates
            if P.CONTROL in msg.content.array_records:
                raise ValueError("example-level DP training does not apply SCAFFOLD's control variates")
        if P.STATE_COUNT in cfg:
            self._sync_state(cid, int(cfg[P.STATE_COUNT]), int(cfg.get(P.STATE_KEEP, cfg[P.STATE_COUNT])))
        seed = job_seed(int(cfg["seed"]), int(cfg["server-round"]), cid)
        return Job(cid, self.parts[cid], steps, lr, batch, seed, ClientOptimizer.from_config(cfg),
                   self._correction(msg, cid))

    def _sync_state(self, cid: int, count: int, keep: int) -> None:
        """Bring client ``cid``'s state to the server's count of its accepted answers, or refuse."""
        stores = (self.uplink.store, self.controls, self.uplink.momentum)
        if count != int(self.state_counts[cid]):
            earlier = None if self.versions is None else self.versions.take(cid, count)
            if earlier is None:
                raise ValueError(f"client {cid}'s state is out of sync: this node has applied "
                                 f"{int(self.state_counts[cid])} updates to it, the server has accepted {count} of its "
                                 "answers (a node restarted without its state, or one that kept no earlier versions "
                                 "met a server that resumed an older checkpoint); answering would corrupt the aggregate")
            for store, value in zip(stores, earlier):  # step back to the version the server counted
                store.put(cid, value)
            self.state_counts[cid] = count
        if self.versions is not None:  # this job updates the state: keep the version it starts from
            self.versions.forget_before(cid, keep)
            self.versions.record(cid, count, tuple(store.get(cid) for store in stores))

    def _correction(self, msg: Message, cid: int) -> torch.Tensor | None:
        """SCAFFOLD: c - c_i when the message carries the server control variate c (c_i = 0 at first)."""
        if P.CONTROL not in msg.content.array_records:
            return None
        c = P.read_flat(msg.content[P.CONTROL])
        if c.shape != (self.spec.dim,) or not torch.isfinite(c).all():
            raise ValueError(f"the control variate must be {self.spec.dim} finite values")
        own = self.controls.get(cid)
        return c if own is None else c - own

    def _reply(self, msg: Message, job: Job, delta: torch.Tensor, loss: float) -> Message:
        cfg = self._config(msg)
        if job.correction is not None:  # SCAFFOLD option II: c_i+ = c_i - c + (x - y_i) / (K lr)
            self.controls.set(job.client, -job.correction - delta / (job.local_steps * job.lr))
        if P.STATE_COUNT in cfg:  # this answer updates the client's state (error feedback, c_i)
            self.state_counts[job.client] += 1
        if self.adversary is not None:  # a Byzantine client sends something else than it computed
            delta = self.adversary.tamper(job.client, delta, job.seed)
        if P.UPDATE_KIND not in cfg:  # a Flower strategy's message: Flower's reply convention
            weights = ArrayRecord(torch_state_dict={k: v.clone() for k, v in self.spec.unflatten(
                self.spec.flatten(msg.content[P.ARRAYS].to_torch_state_dict()) + delta).items()})
            metrics = {"num-examples": self._size(job.client), "train_loss": loss}
            return Message(RecordDict({P.ARRAYS: weights, P.METRICS: MetricRecord(metrics)}), reply_to=msg)
        update = delta
        if cfg.get(P.UPDATE_KIND, P.UPDATE_DELTA) == P.UPDATE_MEAN_GRADIENT:
            update = afa.mean_gradient(delta, torch.tensor(job.local_steps), job.lr)
        uplink = UplinkSpec.from_config(cfg, self.spec.dim, self.spec.sizes)
        record = P.flat_record(update) if uplink is None else self.uplink.encode(uplink, job.client, update, job.seed)
        metrics = {"num-examples": self._size(job.client), "partition-id": job.client,
                   "local-steps": job.local_steps, "server-round": int(cfg["server-round"]),
                   "train-loss": loss}
        return P.train_reply(msg, record, metrics)


class _Rows:
    """One client's rows of a split, as a split (``take``, ``len``)."""

    def __init__(self, split, rows: torch.Tensor):
        self.split, self.rows = split, rows

    def __len__(self) -> int:
        return self.rows.numel()

    def take(self, idx: torch.Tensor):
        return self.split.take(self.rows[idx])


def _example_dp_key(cfg) -> tuple[float, float, str] | None:
    if P.EXAMPLE_DP_NOISE not in cfg:
        return None
    return float(cfg[P.EXAMPLE_DP_NOISE]), float(cfg[P.EXAMPLE_DP_CLIP]), str(cfg.get(P.EXAMPLE_DP_SAMPLING, "shuffle"))


def _error(msg: Message, reason: str) -> Message:
    return Message(Error(code=BAD_REQUEST, reason=reason), reply_to=msg)
