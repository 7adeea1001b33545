"""The message protocol between fedsim's server-side strategies and its client-side handler.

Both ends import these names so the keys are written once. Messages are plain Flower ``Message``s,
so they travel unchanged in-process, over fedsim's gRPC transport, or under ``flwr run``.

TRAIN   content: ``"arrays"`` (global model, ArrayRecord of named tensors) and ``"config"``:
        server-round, local-steps, lr, batch-size, seed, update-kind, and optionally sim-latency
        (virtual seconds the in-process runtime waits before delivering the answer); with
        compression also compressor, compress-k, compress-unbiased, error-feedback
        (none | ef21 | ef14), ef-init (full | zero) and, for EF21-SGDM, ef-momentum; with
        example-level DP also
        example-dp-noise and example-dp-clip (DP-SGD noise multiplier and per-example clip norm).
        SCAFFOLD adds ``"control"``: the server control variate c, flat float32 ``[D]`` named
        ``update``; the client corrects every local step by c - c_i and keeps its own c_i.
        Strategies with client-side state add state-count (answers of this client the server
        accepted) and state-keep (its count in the server's last checkpoint: the oldest version the
        server may still ask for); a node steps back to a kept earlier version, and a client whose
        state saw another number of updates and kept no such version answers with an error.
        reply:   ``"update"`` (ArrayRecord with one flat float32 vector ``[D]`` named ``update``, or,
        for a sparse compressor, ``values`` float32 ``[k']`` and ``indices`` int64 ``[k']``) and
        ``"metrics"``: num-examples, partition-id, local-steps, server-round, train-loss.
QUERY   asks a node which client (partition) it hosts; reply metrics: partition-id, num-partitions,
        num-examples.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

ARRAYS, CONFIG, UPDATE, METRICS = "arrays", "config", "update", "metrics"
CONTROL = "control"  # SCAFFOLD: the server control variate c sent with the model
# strategies with client-side state (EF21/EF14 vectors, SCAFFOLD's c_i): how many of this client's
# answers the server has accepted; a client whose state saw another number of updates refuses to train
STATE_COUNT = "state-count"
STATE_KEEP = "state-keep"  # the count in the server's last checkpoint: older versions may be forgotten
UPDATE_KIND = "update-kind"  # absent: the message is a Flower strategy's; the reply follows Flower's convention
UPDATE_DELTA = "delta"                  # y - x_s: the local model change
UPDATE_MEAN_GRADIENT = "mean-gradient"  # -(y - x_s) / (lr * local_steps): AFA's worker answer
UPDATE_KINDS = (UPDATE_DELTA, UPDATE_MEAN_GRADIENT)
SIM_LATENCY = "sim-latency"
VALUES, INDICES = "values", "indices"
COMPRESSOR, COMPRESS_K, COMPRESS_UNBIASED = "compressor", "compress-k", "compress-unbiased"
COMPRESS_DENSITY = "compress-density"  # prune: the fraction kept in each parameter tensor
ERROR_FEEDBACK, EF_INIT = "error-feedback", "ef-init"
EF_MOMENTUM = "ef-momentum"  # EF21-SGDM: the client's estimator v_i <- (1 - eta) v_i + eta Delta_i (absent: 1, EF21)
CLIENT_CLIP = "client-clip"  # > 0: the client clips its update to this L2 norm before compressing it
FEEDBACKS = ("none", "ef21", "ef14")
EF_INITS = ("full", "zero")
EXAMPLE_DP_NOISE, EXAMPLE_DP_CLIP = "example-dp-noise", "example-dp-clip"
MOMENTUM, NESTEROV, WEIGHT_DECAY, PROX_MU = "momentum", "nesterov", "weight-decay", "prox-mu"  # local optimizer
EXAMPLE_DP_SAMPLING = "example-dp-sampling"  # poisson | shuffle (absent: shuffle, the older protocol)


def flat_record(vector: torch.Tensor) -> ArrayRecord:
    """Wrap a flat ``[D]`` vector as an ArrayRecord with a single array named ``update``."""
    return ArrayRecord(array_dict={UPDATE: Array(vector.detach().cpu().numpy().astype(np.float32, copy=False))})


def read_flat(record: ArrayRecord) -> torch.Tensor:
    if list(record.keys()) != [UPDATE]:
        raise ValueError(f"update record must hold exactly one array named '{UPDATE}', got {list(record.keys())}")
    arr = record[UPDATE].numpy()
    if arr.dtype != np.float32:
        raise ValueError(f"update must be float32, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"update must be a flat vector, got shape {arr.shape}")
    return torch.from_numpy(np.array(arr, dtype=np.float32))


def sparse_record(values: torch.Tensor, indices: torch.Tensor) -> ArrayRecord:
    return ArrayRecord(array_dict={VALUES: Array(values.detach().cpu().numpy().astype(np.float32, copy=False)),
                                   INDICES: Array(indices.detach().cpu().numpy().astype(np.int64, copy=False))})


def is_sparse(record: ArrayRecord) -> bool:
    return sorted(record.keys()) == sorted([VALUES, INDICES])


def read_sparse(record: ArrayRecord) -> tuple[torch.Tensor, torch.Tensor]:
    values, indices = record[VALUES].numpy(), record[INDICES].numpy()
    if values.dtype != np.float32 or indices.dtype != np.int64:
        raise ValueError(f"sparse update must be float32 values and int64 indices, got {values.dtype}, {indices.dtype}")
    return torch.from_numpy(np.array(values)), torch.from_numpy(np.array(indices))


def train_reply(msg: Message, update: torch.Tensor | ArrayRecord, metrics: dict[str, int | float]) -> Message:
    record = update if isinstance(update, ArrayRecord) else flat_record(update)
    return Message(RecordDict({UPDATE: record, METRICS: MetricRecord(metrics)}), reply_to=msg)


def train_content(arrays: ArrayRecord, config: dict, extra: dict[str, ArrayRecord] | None = None) -> RecordDict:
    return RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(config), **(extra or {})})


def record_bytes(content: RecordDict) -> int:
    """Bytes of array payload in a message (what dominates the wire); metrics/config are ignored."""
    return sum(rec.count_bytes() for rec in content.array_records.values())
