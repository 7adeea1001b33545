"""Build every component of one experiment from its config (data, model, clients, environment,
strategy). Shared by ``fedsim run``, the ServerApp/ClientApp and tests, so each runtime wires the
same objects the same way."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..config import ConfigError, ExperimentConfig
from ..data import Dataset, label_histogram, load_dataset, partition
from ..local.handler import ClientHandler
from ..models import build_model
from ..participation import build_participation
from ..strategies import STRATEGIES, FedsimStrategy


@dataclass
class ClientData:
    dataset: Dataset
    parts: list[np.ndarray]


def load_client_data(cfg: ExperimentConfig) -> ClientData:
    return _client_data(cfg.data.name, cfg.data.dir or None, tuple(sorted(cfg.data.options.items())),
                        cfg.data.partition, cfg.data.num_clients, cfg.data.alpha, cfg.data.shards_per_client,
                        cfg.seed)


@lru_cache(maxsize=4)
def _client_data(name, data_dir, options, scheme, num_clients, alpha, shards, seed) -> ClientData:
    try:
        ds = load_dataset(name, data_dir, **dict(options))
    except TypeError as exc:  # an option the loader does not take
        raise ConfigError(f"data.options for '{name}': {exc}") from None
    labels = ds.train.y.numpy()
    try:
        parts = partition(labels, num_clients, scheme, seed=seed, alpha=alpha, shards_per_client=shards,
                          groups=ds.groups)
    except ValueError as exc:
        raise ConfigError(f"data.partition: {exc}") from None
    return ClientData(ds, parts)


def make_model(cfg: ExperimentConfig, ds: Dataset) -> torch.nn.Module:
    return build_model(cfg.model.name, ds.input_shape, ds.num_classes, vocab_size=ds.vocab_size, seed=cfg.seed)


def make_handler(cfg: ExperimentConfig, data: ClientData) -> ClientHandler:
    """The client side; ``client.device = cuda`` on a machine without one fails here, naming the key."""
    try:
        return ClientHandler(make_model(cfg, data.dataset), data.dataset.train, data.parts,
                             trainer=cfg.client.trainer, workers=cfg.client.workers, device=cfg.client.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def make_strategy(cfg: ExperimentConfig, data: ClientData) -> FedsimStrategy:
    params = {k: v for k, v in cfg.participation.items() if k != "name"}
    params.setdefault("local_steps", cfg.client.local_steps)
    hist = label_histogram(data.dataset.train.y.numpy(), data.parts, data.dataset.num_classes)
    try:
        participation = build_participation(cfg.participation["name"], cfg.data.num_clients, seed=cfg.seed,
                                            label_hist=hist, **params)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    s = cfg.strategy
    common = dict(local_lr=cfg.client.lr, batch_size=cfg.client.batch_size, seed=cfg.seed, server_lr=s.server_lr,
                  compression=dataclasses.asdict(cfg.compression), example_dp=_example_dp(cfg))
    extra = {"fedavg": {"weighting": s.weighting}, "fedau": {"cutoff": s.cutoff},
             "afa-cd": {"m": s.m}, "afa-cs": {"m": s.m}, "ef14": {},
             "ef21": {"local_steps": cfg.client.local_steps, "ef_init": s.ef_init}}.get(s.name, {})
    if s.name in ("dp-fedavg", "dp-mf"):
        extra = {"privacy": dataclasses.asdict(cfg.privacy), "rounds": cfg.rounds}
    if s.name in ASYNC_STRATEGIES:
        extra = _async_extra(cfg, data)
    try:
        return STRATEGIES[s.name](participation, **common, **extra)
    except ValueError as exc:  # e.g. a participation model the privacy plan cannot account for
        raise ConfigError(f"strategy {s.name}: {exc}") from None


ASYNC_STRATEGIES = ("direct", "weighted", "fedasync", "fedbuff", "repair")


def _async_extra(cfg: ExperimentConfig, data: ClientData) -> dict:
    s = cfg.strategy
    extra = {"m": s.m, "round_time": s.round_time, "history": s.history, "staleness_fn": s.staleness_fn,
             "staleness_a": s.staleness_a, "staleness_b": s.staleness_b}
    if s.name == "fedasync":
        extra["mixing"] = s.mixing
    elif s.name == "fedbuff":
        extra.update(buffer_size=s.buffer_size, max_staleness=s.max_staleness)
    elif s.name == "repair":
        x = data.dataset.train.x
        extra.update(model=make_model(cfg, data.dataset), input_shape=data.dataset.input_shape,
                     box=(float(x.min()), float(x.max())), repair=cfg.repair)
    return extra


def _example_dp(cfg: ExperimentConfig) -> dict | None:
    p = cfg.privacy
    if not p.example_dp:
        return None
    return {"noise_multiplier": p.example_noise_multiplier, "clip_norm": p.example_clip_norm, "delta": p.delta}
