"""The composition root: build every component of one experiment from its config (data, model,
clients, environment, strategy and its stages). Names in the config are resolved here, and only
here: registry names (``fedsim.strategies.registry``, the model zoo, the datasets, ...) and user
plug-ins by import string (``fedsim.experiments.plugins``). Shared by ``fedsim run``, the gRPC
server and nodes, the ServerApp/ClientApp and tests, so each runtime wires the same objects the
same way.

``load(source, overrides)`` is ``fedsim.config.load_config`` plus ``check``: a bad name, or a
``strategy.*`` / ``repair.*`` key set for a strategy that does not read it, fails before any
training with a message naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..config import ConfigError, ExperimentConfig, load_config
from ..core.compression import COMPRESSORS
from ..core.staleness import STALENESS_FUNCTIONS
from ..data import DATASETS, SCHEMES, Dataset, label_histogram, load_dataset, partition
from ..local.device import DEVICES
from ..local.adversary import BEHAVIOURS, Adversary
from ..local.handler import ClientHandler
from ..local.vectorized import TRAINERS
from ..local.optimizer import LR_SCHEDULES, ClientOptimizer
from ..local.example_dp import ACCOUNTANTS as EXAMPLE_ACCOUNTANTS, SAMPLINGS as EXAMPLE_SAMPLINGS
from ..models import MODELS, build_model, seeded
from ..participation import PARTICIPATION, build_participation, slow_clients
from ..privacy import ACCOUNTANTS, MECHANISMS
from ..runtime.protocol import EF_INITS
from ..stages import SERVER_OPTIMIZERS, NormBound, UserLevelDP
from ..repair import MODES, SWITCHES
from ..strategies import FedsimStrategy
from ..strategies.fedavg import WEIGHTINGS
from ..strategies.flower import FlowerStrategy, check_args, flower_class, is_flower_name
from ..strategies.registry import COMMON_KEYS, OWNED_SECTIONS, STRATEGIES, StrategyRow
from . import plugins


@dataclass
class ClientData:
    dataset: Dataset
    parts: list[np.ndarray]


# --- config: names ---------------------------------------------------------------------------------
def load(source: str | dict, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a preset or TOML file with overrides, range checks and name resolution (every arm)."""
    return load_config(source, overrides, check=check)


def strategy_row(cfg: ExperimentConfig) -> StrategyRow:
    """The registry row of ``strategy.name``, or a row for a plug-in class named by import string."""
    name = cfg.strategy.name
    if is_flower_name(name):
        try:
            flower_class(name)
        except ValueError as exc:
            raise ConfigError(f"config key 'strategy.name': {exc}") from None
        return StrategyRow(FlowerStrategy, description=f"Flower's {name[len('flwr:'):]} (flwr.serverapp.strategy)")
    if plugins.is_import_string(name):
        cls = plugins.resolve("strategy.name", name)
        if not (isinstance(cls, type) and issubclass(cls, FedsimStrategy)):
            raise ConfigError(f"config key 'strategy.name': '{name}' is not a fedsim.strategies.FedsimStrategy subclass")
        return StrategyRow(cls, description=f"plug-in {name}")
    if name not in STRATEGIES:
        raise ConfigError(f"config key 'strategy.name' must be one of {', '.join(STRATEGIES)}, a Flower strategy "
                          f"'flwr:<Class>' or an import string 'package.module:Class'; got '{name}'")
    return STRATEGIES[name]


def effective(cfg: ExperimentConfig, row: StrategyRow) -> ExperimentConfig:
    """``cfg`` with what its strategy row implies (``dp-fedavg`` turns on ``privacy.user_level``)."""
    implied = row.implies
    if not implied:
        return cfg
    sections: dict[str, dict] = {}
    for key, value in implied.items():
        section, field = key.split(".")
        sections.setdefault(section, {})[field] = value
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **f) for s, f in sections.items()})


def check(cfg: ExperimentConfig) -> None:
    """Resolve every name in ``cfg`` (no data is read); a ConfigError names the first bad key."""

    def one_of(key: str, value: str, names) -> None:
        if value not in names:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(names)}; got '{value}'")

    if plugins.is_import_string(cfg.data.name):
        plugins.resolve("data.name", cfg.data.name)
        if cfg.data.options or cfg.data.dir:
            raise ConfigError("config keys 'data.options' and 'data.dir' are for the built-in datasets; "
                              f"the loader '{cfg.data.name}' takes only the seed")
    else:
        one_of("data.name", cfg.data.name, DATASETS)
    one_of("data.partition", cfg.data.partition, SCHEMES)
    if plugins.is_import_string(cfg.model.name):
        plugins.resolve("model.name", cfg.model.name)
    else:
        one_of("model.name", cfg.model.name, MODELS)
    one_of("client.trainer", cfg.client.trainer, TRAINERS)
    one_of("client.lr_schedule", cfg.client.lr_schedule, LR_SCHEDULES)
    one_of("client.device", cfg.client.device, DEVICES)
    one_of("participation.name", cfg.participation["name"], PARTICIPATION)
    one_of("compression.name", cfg.compression.name, COMPRESSORS)
    one_of("privacy.mechanism", cfg.privacy.mechanism, MECHANISMS)
    one_of("privacy.accountant", cfg.privacy.accountant, ACCOUNTANTS)
    one_of("privacy.example_sampling", cfg.privacy.example_sampling, EXAMPLE_SAMPLINGS)
    one_of("privacy.example_accountant", cfg.privacy.example_accountant, EXAMPLE_ACCOUNTANTS)
    one_of("strategy.weighting", cfg.strategy.weighting, WEIGHTINGS)
    one_of("strategy.ef_init", cfg.strategy.ef_init, EF_INITS)
    one_of("strategy.staleness_fn", cfg.strategy.staleness_fn, STALENESS_FUNCTIONS)
    one_of("repair.mode", cfg.repair.mode, MODES)
    one_of("repair.device", cfg.repair.device, DEVICES)
    one_of("repair.switch", cfg.repair.switch, SWITCHES)
    one_of("adversary.behaviour", cfg.adversary.behaviour, BEHAVIOURS)
    _check_server_optimizer(cfg.server_optimizer)
    row = strategy_row(cfg)
    _check_keys_read(cfg, row)
    _check_client_optimizer(cfg, row)
    _check_user_level_dp(effective(cfg, row), row)
    if cfg.staleness_oracle and not row.asynchronous:
        raise ConfigError(f"config key 'staleness_oracle': strategy '{cfg.strategy.name}' is synchronous; the "
                          "oracle replaces stale answers, which only asynchronous strategies aggregate")
    if cfg.stale_model_delay:
        _check_model_delay(cfg, row)
    if is_flower_name(cfg.strategy.name):
        _check_flower(cfg)
    elif cfg.defense.norm_bound > 0 and (row.cls.update_kind != "delta" or row.cls.feedback != "none"):
        raise ConfigError(f"config key 'defense.norm_bound': strategy '{cfg.strategy.name}' aggregates "
                          "normalised gradients or error-feedback messages, not model deltas to bound")


def _check_flower(cfg: ExperimentConfig) -> None:
    """A Flower strategy aggregates as Flower does: fedsim's client and server stages do not apply to it."""
    try:
        check_args(cfg.strategy.name, cfg.strategy.args)
    except ValueError as exc:
        raise ConfigError(f"config key 'strategy.args': {exc}") from None
    if cfg.participation["name"] == "anarchic":
        raise ConfigError(f"config key 'participation.name': {cfg.strategy.name} sends every client of a round "
                          "the same config, so per-client local steps (anarchic) cannot be expressed")
    refused = [f"compression.{k}" for k in _changed(cfg.compression)]
    refused += [f"client.{k}" for k in _changed(cfg.client, ("clip_norm",))]
    refused += [f"privacy.{k}" for k in _changed(cfg.privacy, ("user_level", "example_dp"))]
    refused += ["server_optimizer.name"] if cfg.server_optimizer != {"name": "sgd"} else []
    refused += ["defense.norm_bound"] if cfg.defense.norm_bound > 0 else []
    refused += [f"strategy.{k}" for k in _changed(cfg.strategy) if k not in ("name", "args")]
    if refused:
        raise ConfigError(f"config key '{refused[0]}' does not apply to {cfg.strategy.name}: Flower's strategies "
                          "run with Flower's own rules (set their options in [strategy.args])")


CLIENT_OPTIMIZER_KEYS = ("momentum", "nesterov", "weight_decay", "lr_schedule")


def _check_client_optimizer(cfg: ExperimentConfig, row: StrategyRow) -> None:
    """Strategies whose server rule assumes plain local SGD at a constant rate refuse the rest."""
    changed = _changed(cfg.client, CLIENT_OPTIMIZER_KEYS)
    if changed and row.plain_client_sgd:
        raise ConfigError(f"config key 'client.{changed[0]}': strategy '{cfg.strategy.name}' assumes plain local "
                          "SGD at a constant rate (its server step or replay uses client.lr)")
    if cfg.privacy.example_dp and "prox_mu" in row.reads:
        raise ConfigError("config key 'strategy.mu': example-level DP (privacy.example_dp) does not support "
                          "the proximal term")


def _check_server_optimizer(opt: dict) -> None:
    name = opt["name"]
    if name not in SERVER_OPTIMIZERS:
        raise ConfigError(f"config key 'server_optimizer.name' must be one of {', '.join(SERVER_OPTIMIZERS)}; "
                          f"got '{name}'")
    extra = sorted(set(opt) - {"name"} - set(SERVER_OPTIMIZERS[name][1]))
    if extra:
        raise ConfigError(f"config key 'server_optimizer.{extra[0]}' is not read by server optimizer '{name}'")


def _check_keys_read(cfg: ExperimentConfig, row: StrategyRow) -> None:
    """A strategy-owned key set away from its default must be read by the chosen strategy."""
    name, reads = cfg.strategy.name, row.keys()
    if cfg.strategy.args and not plugins.is_import_string(name) and not is_flower_name(name):
        raise ConfigError(f"config key 'strategy.args' is for Flower ('flwr:<Class>') and plug-in strategies "
                          f"('package.module:Class'); "
                          f"'{name}' takes its settings from strategy.* keys")
    for section in OWNED_SECTIONS:
        for field in _changed(getattr(cfg, section)):
            key = f"{section}.{field}"
            if key in COMMON_KEYS or key in reads or section in reads:
                continue
            readers = [n for n, r in STRATEGIES.items() if key in r.keys() or section in r.keys()]
            raise ConfigError(f"config key '{key}' is not read by strategy '{name}'"
                              + (f" (it is read by {', '.join(readers)})" if readers else ""))


def _changed(section, keys: tuple[str, ...] | None = None) -> list[str]:
    """The fields of a config section (``keys``, default all, in order) set away from their defaults."""
    default = type(section)()
    names = keys if keys is not None else [f.name for f in dataclasses.fields(section)]
    return [k for k in names if getattr(section, k) != getattr(default, k)]


# privacy keys that only mean something with user-level (resp. example-level) DP on; clip_norm,
# epsilon and delta may sit in a [privacy] table shared by private and non-private arms
USER_LEVEL_ONLY = ("mechanism", "bands", "factorization", "adaptive_clip", "target_quantile", "clip_lr",
                   "clip_count_noise")
EXAMPLE_LEVEL_ONLY = ("example_noise_multiplier", "example_clip_norm", "example_sampling", "example_accountant")


def _check_user_level_dp(cfg: ExperimentConfig, row: StrategyRow) -> None:
    for keys, switch in ((USER_LEVEL_ONLY, "user_level"), (EXAMPLE_LEVEL_ONLY, "example_dp")):
        changed = [] if getattr(cfg.privacy, switch) else _changed(cfg.privacy, keys)
        if changed:
            raise ConfigError(f"config key 'privacy.{changed[0]}' is set but privacy.{switch} is off"
                              + (" (use strategy dp-fedavg or dp-mf, or privacy.user_level = true)"
                                 if switch == "user_level" else ""))
    if not cfg.privacy.user_level:
        return
    if not row.user_level_dp:
        able = [n for n, r in STRATEGIES.items() if r.user_level_dp and not r.implies]
        raise ConfigError(f"config key 'privacy.user_level': strategy '{cfg.strategy.name}' has no noisy sum the "
                          f"DP stage can add to (it supports {', '.join(able)})")
    weighting = row.fixed.get("weighting", cfg.strategy.weighting)
    if ("weighting" in row.reads or "weighting" in row.fixed) and weighting != "fixed":
        raise ConfigError(f"config key 'strategy.weighting' must be 'fixed' with privacy.user_level (got "
                          f"'{weighting}'): a denominator that counts the answers or their examples is not private")


def _value(cfg: ExperimentConfig, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# --- objects -----------------------------------------------------------------------------------------
def load_client_data(cfg: ExperimentConfig) -> ClientData:
    return _client_data(cfg.data.name, cfg.data.dir or None, tuple(sorted(cfg.data.options.items())),
                        cfg.data.partition, cfg.data.num_clients, cfg.data.alpha, cfg.data.shards_per_client,
                        cfg.seed)


@lru_cache(maxsize=4)
def _client_data(name, data_dir, options, scheme, num_clients, alpha, shards, seed) -> ClientData:
    if plugins.is_import_string(name):
        ds = plugins.load_dataset(name, seed)
    else:
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
    if plugins.is_import_string(cfg.model.name):
        return seeded(cfg.seed, lambda: plugins.build_model(cfg.model.name, ds.input_shape, ds.num_classes))
    return build_model(cfg.model.name, ds.input_shape, ds.num_classes, vocab_size=ds.vocab_size, seed=cfg.seed)


def make_handler(cfg: ExperimentConfig, data: ClientData) -> ClientHandler:
    """The client side; ``client.device = cuda`` on a machine without one fails here, naming the key."""
    try:
        c = cfg.client
        defaults = {"local-steps": c.local_steps, "lr": c.lr, "batch-size": c.batch_size, "seed": cfg.seed,
                    **client_optimizer(cfg).config()}  # what a Flower strategy's TRAIN message leaves out
        return ClientHandler(make_model(cfg, data.dataset), data.dataset.train, data.parts, trainer=c.trainer,
                             workers=c.workers, device=c.device, defaults=defaults,
                             adversary=make_adversary(cfg, data))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_model_delay(cfg: ExperimentConfig, row) -> None:
    key = "config key 'stale_model_delay'"
    if not row.asynchronous:
        raise ConfigError(f"{key}: strategy '{cfg.strategy.name}' is synchronous; it would aggregate the delayed "
                          "answers as fresh ones (use direct, weighted, fedasync, fedbuff or repair)")
    if not cfg.participation.get("slow_classes"):
        raise ConfigError(f"{key} delays the slow clients' models: set participation.slow_classes")
    if getattr(row.cls, "uses_versions", False) and cfg.strategy.history < cfg.stale_model_delay + 1:
        raise ConfigError(f"{key} = {cfg.stale_model_delay} needs strategy.history >= {cfg.stale_model_delay + 1} "
                          f"(the models of the last rounds), got {cfg.strategy.history}")


def make_adversary(cfg: ExperimentConfig, data: ClientData) -> Adversary | None:
    """The Byzantine clients of ``[adversary]`` (None when every client is honest)."""
    a = cfg.adversary
    settings = {k: getattr(a, k) for k in ("scale", "noise_std", "target_label", "poison_fraction", "pattern_size",
                                           "boost")}
    try:
        return Adversary.choose(a.behaviour, a.fraction, cfg.data.num_clients, seed=cfg.seed,
                                num_classes=data.dataset.num_classes, **settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def handler_for_config(raw: dict, device: str | None = None) -> ClientHandler:
    """A node's warm client handler for the experiment config a server sent (``fedsim client``);
    ``device`` (``fedsim client --device``) overrides where this node trains."""
    cfg = load(raw, [f"client.device={device}"] if device else [])
    torch.set_num_threads(cfg.threads)
    return make_handler(cfg, load_client_data(cfg))


def delayed_clients(cfg: ExperimentConfig, data: ClientData) -> np.ndarray:
    """Bool [N]: the slow clients (``participation.slow_classes``), who train on delayed models."""
    hist = label_histogram(data.dataset.train.y.numpy(), data.parts, data.dataset.num_classes)
    return slow_clients(hist, cfg.participation["slow_classes"], cfg.participation.get("slow_share", 0.5))


def make_participation(cfg: ExperimentConfig, data: ClientData):
    params = {k: v for k, v in cfg.participation.items() if k != "name"}
    params.setdefault("local_steps", cfg.client.local_steps)
    hist = label_histogram(data.dataset.train.y.numpy(), data.parts, data.dataset.num_classes)
    try:
        return build_participation(cfg.participation["name"], cfg.data.num_clients, seed=cfg.seed,
                                   label_hist=hist, **params)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def make_strategy(cfg: ExperimentConfig, data: ClientData) -> FedsimStrategy:
    """The strategy of ``cfg`` from its registry row, with its server stages."""
    check(cfg)
    if is_flower_name(cfg.strategy.name):
        c = cfg.client
        try:
            return FlowerStrategy(cfg.strategy.name, dict(cfg.strategy.args), make_participation(cfg, data),
                                  local_lr=c.lr, batch_size=c.batch_size, seed=cfg.seed,
                                  client_optimizer=client_optimizer(cfg),
                                  lr_schedule=(c.lr_schedule, c.lr_decay, cfg.rounds))
        except ValueError as exc:
            raise ConfigError(f"strategy {cfg.strategy.name}: {exc}") from None
    row = strategy_row(cfg)
    cfg = effective(cfg, row)
    participation = make_participation(cfg, data)
    kwargs = {kw: _value(cfg, key) for kw, key in row.reads.items()}
    kwargs.update(row.fixed)
    kwargs.update(_needs(cfg, data, row.needs))
    kwargs.update(cfg.strategy.args)
    try:
        stages = make_stages(cfg, participation, row)
        c = cfg.client
        return row.cls(participation, local_lr=c.lr, batch_size=c.batch_size, seed=cfg.seed,
                       server_lr=cfg.strategy.server_lr, compression=dataclasses.asdict(cfg.compression),
                       example_dp=_example_dp(cfg), stages=stages, client_clip=c.clip_norm,
                       client_optimizer=client_optimizer(cfg), lr_schedule=(c.lr_schedule, c.lr_decay, cfg.rounds),
                       **kwargs)
    except (ValueError, TypeError) as exc:  # e.g. a participation model the privacy plan cannot account for
        raise ConfigError(f"strategy {cfg.strategy.name}: {exc}") from None


def client_optimizer(cfg: ExperimentConfig) -> ClientOptimizer:
    c = cfg.client
    return ClientOptimizer(momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay)


def make_stages(cfg: ExperimentConfig, participation, row: StrategyRow) -> list:
    """Server stages in pipeline order: norm bounding, user-level DP (clip + noise), then the server
    optimizer."""
    stages = []
    if cfg.defense.norm_bound > 0:
        stages.append(NormBound(cfg.defense.norm_bound))
    if cfg.privacy.user_level:
        stages.append(UserLevelDP(participation, privacy=dataclasses.asdict(cfg.privacy), rounds=cfg.rounds,
                                  seed=cfg.seed, asynchronous=row.asynchronous))
    opt = dict(cfg.server_optimizer)
    stage_cls, _ = SERVER_OPTIMIZERS[opt.pop("name")]
    if stage_cls is not None:
        stages.append(stage_cls(**opt))
    return stages


def _needs(cfg: ExperimentConfig, data: ClientData, needs: tuple[str, ...]) -> dict:
    x = data.dataset.train.x
    made = {"model": lambda: make_model(cfg, data.dataset), "input_shape": lambda: data.dataset.input_shape,
            "box": lambda: (float(x.min()), float(x.max())), "rounds": lambda: cfg.rounds}
    return {n: made[n]() for n in needs}


def _example_dp(cfg: ExperimentConfig) -> dict | None:
    p = cfg.privacy
    if not p.example_dp:
        return None
    return {"noise_multiplier": p.example_noise_multiplier, "clip_norm": p.example_clip_norm, "delta": p.delta,
            "sampling": p.example_sampling, "accountant": p.example_accountant}
