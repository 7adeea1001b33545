"""Experiment configuration as data: the schema (frozen dataclasses), TOML loading, dotted
``--set`` overrides and range checks. This module imports nothing else from fedsim.

A config is a TOML file (or a packaged preset, see ``fedsim presets``) plus dotted overrides
(``--set strategy.name=afa-cs``). Unknown keys, wrong types and out-of-range values fail here with a
message naming the field. Names (strategy, model, dataset, participation model, stages, plug-in
import strings) are resolved where objects are built, in ``fedsim.experiments.setup``, whose
``load`` runs the same checks plus name resolution before any training. A comparison preset lists
arms (``[arms.<name>]`` tables of dotted overrides); each arm runs on the same data, participation
and seed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


class ConfigError(ValueError):
    """A config that cannot be run; the message names the offending field."""


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # an offline dataset, or "package.module:loader" (loader(seed) -> dict of arrays)
    partition: str = "dirichlet"
    num_clients: int = 20
    alpha: float = 0.5
    shards_per_client: int = 2
    dir: str = ""
    eval_samples: int = 0  # 0 = the whole test split
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"  # a zoo model, or "package.module:factory" (factory(input_shape, num_classes))


@dataclass(frozen=True)
class ClientConfig:
    lr: float = 0.05
    batch_size: int = 32
    local_steps: int = 5
    trainer: str = "auto"  # auto | sequential | vectorized (torch.func over the cohort)
    workers: int = 1       # processes training a cohort: 1 = this one, 0 = one per CPU core (CPU only)
    device: str = "cpu"    # cpu | cuda | auto (cuda when there is one)
    clip_norm: float = 0.0  # > 0: a client stage clips each update to this L2 norm before compression
    # the local optimizer (fedsim.local.optimizer): SGD by default
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant | exponential (lr * lr_decay^(t-1)) | cosine (over the run's rounds)
    lr_decay: float = 0.99


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "fedavg"             # a registry name (fedsim.strategies.registry) or "package.module:Class"
    server_lr: float = 1.0
    args: dict = field(default_factory=dict)  # constructor keywords of a plug-in strategy class
    weighting: str = "num-examples"  # fedavg / ef14: num-examples | uniform | fixed (sum / expected cohort)
    cutoff: int = 100_000            # fedau: interval cutoff K
    mu: float = 0.01                 # fedprox: proximal weight (Li et al., arXiv 1812.06127)
    trim: float = 0.2                # fedtrimmedavg: fraction cut at each end of every coordinate
    byzantine: int = 0               # krum: assumed Byzantine clients f
    keep: int = 0                    # krum: 0 = Krum, m > 0 = Multi-Krum over the m best
    m: int = 10                      # afa-cd / afa-cs: answers to wait for per round
    ef_init: str = "full"            # ef21: first message uncompressed (full) or g_i = 0 (zero)
    ef_momentum: float = 1.0         # ef21: EF21-SGDM's client momentum eta in (0, 1] (1 = plain EF21)
    # asynchronous strategies (direct, weighted, fedasync, fedbuff, repair)
    round_time: float = 0.0          # > 0: a round collects what arrives within this many (virtual) seconds
    staleness_fn: str = "polynomial"  # constant | polynomial | hinge | exponential
    staleness_a: float = 0.5         # polynomial (tau+1)^-a, hinge 1/(a(tau-b)+1), exponential exp(-a tau)
    staleness_b: float = 4.0         # hinge: staleness up to b is not discounted
    mixing: float = 0.6              # fedasync: alpha in x <- (1 - alpha s(tau)) x + alpha s(tau) y
    staleness_unit: str = "round"    # fedasync: tau in rounds, or in server updates (the paper's)
    buffer_size: int = 10            # fedbuff: answers per server step
    max_staleness: int = 0           # fedbuff: drop answers staler than this (0 = keep all)
    history: int = 64                # fedasync / repair: most past global models kept


@dataclass(frozen=True)
class RepairConfig:
    """Staleness repair by gradient inversion (strategy ``repair``; ``fedsim.repair``)."""

    samples: int = 32           # synthetic samples in D_rec
    iterations: int = 200       # inversion steps (the paper: 10,000-40,000 on a GPU)
    image_lr: float = 0.1       # Adam on the signed image gradient
    label_lr: float = 0.1       # Adam on the label logits
    tv: float = 1e-4            # total-variation prior weight
    mode: str = "replace"       # replace (the paper) | correct (stale + estimated drift)
    switch: str = "estimated"   # estimated | never | round: when to go back to plain aggregation
    margin: float = 1.0         # estimated: repair while margin x its estimated error < the drift
    patience: int = 5           # estimated: declines in a row before switching for good
    switch_round: int = 0       # round: repair up to this round
    min_staleness: int = 1      # answers less stale than this are aggregated as they are
    warm_start: bool = False    # start a client's inversion from its previous synthetic set (fixed data)
    warm_step: float = 1.0      # image step of a warm-started inversion, as a fraction of image_lr
    plateau_steps: int = 0      # stop once no residual improved by plateau_tol within this many steps (0: off)
    plateau_tol: float = 0.01   # relative improvement that counts, for plateau_steps
    device: str = "cpu"         # where the server inverts: cpu | cuda | auto


@dataclass(frozen=True)
class CompressionConfig:
    name: str = "identity"  # identity | top-k | rand-k | natural | prune (Top-k within each tensor)
    k: int = 0              # top-k / rand-k: coordinates sent (or give density)
    density: float = 0.0    # top-k / rand-k: fraction of coordinates sent
    unbiased: bool = False  # rand-k scaled by D/k, natural without the 8/9 contraction


@dataclass(frozen=True)
class PrivacyConfig:
    # user-level DP (a server stage around any strategy that supports it; dp-fedavg / dp-mf turn it
    # on): the server clips each answer, and adds i.i.d. or correlated noise to each round's sum
    user_level: bool = False
    mechanism: str = "identity"    # identity | tree | sqrt-toeplitz | optimal | banded | blt
    clip_norm: float = 1.0         # L2 bound on each client's update
    noise_multiplier: float = 1.0  # noise std / (clip_norm x sensitivity); ignored when epsilon > 0
    epsilon: float = 0.0           # > 0: the smallest noise multiplier reaching this epsilon
    delta: float = 1e-5
    accountant: str = "pld"        # pld | rdp: calibrates the noise for epsilon and reports epsilon
    bands: int = 0                 # banded: number of bands (0 = the epoch length)
    factorization: str = ""        # a saved factorization (.npz from `fedsim privacy plan --save`)
    # adaptive clipping (Andrew et al., arXiv 1905.03871): clip_norm is the initial norm, tracked
    # towards the target_quantile of the update norms from a count noised with clip_count_noise
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clip_count_noise: float = 0.0  # sigma_b; 0 = the paper's expected cohort / 20
    # example-level DP (any strategy): DP-SGD on each client through Opacus
    example_dp: bool = False
    example_noise_multiplier: float = 1.0
    example_clip_norm: float = 1.0
    example_sampling: str = "poisson"  # poisson (what the accounting assumes) | shuffle (fixed-size; approximate)
    example_accountant: str = "rdp"    # rdp | prv (Opacus' accountants)


@dataclass(frozen=True)
class AdversaryConfig:
    """Byzantine clients (``fedsim.local.adversary``): a seeded ``fraction`` of the clients attacks."""
    behaviour: str = "none"       # none | sign-flip | scale | noise | label-flip | backdoor
    fraction: float = 0.0         # of the N clients, chosen from the seed
    scale: float = 10.0           # scale: the factor on the update
    noise_std: float = 1.0        # noise: std of the Gaussian sent instead of the update
    target_label: int = 0         # backdoor: the label stamped inputs are given
    poison_fraction: float = 0.5  # backdoor: share of each malicious client's examples stamped
    pattern_size: int = 3         # backdoor: side of the square (features for flat inputs)
    boost: float = 1.0            # backdoor / label-flip: the poisoned update is sent times this (model replacement)


@dataclass(frozen=True)
class DefenseConfig:
    """Server-side defenses that wrap any strategy (``fedsim.stages``)."""
    norm_bound: float = 0.0  # > 0: every update is clipped to this L2 norm before aggregation (0 = off)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    description: str = ""
    rounds: int = 20
    max_virtual_time: float = 0.0  # stop once the virtual clock passes this (0 = no budget)
    seed: int = 0
    seeds: list = field(default_factory=list)  # > 1 entries: every arm once per seed, mean ± std (overrides seed)
    eval_every: int = 5
    eval_clients: bool = False  # also evaluate on every client's own data: mean and worst-10% client accuracy
    staleness_oracle: bool = False  # experiment-only bound: stale answers replaced by fresh ones (in-process)
    stale_model_delay: int = 0  # experiment-only scenario: slow clients train on the model of this many rounds ago
    checkpoint_every: int = 10
    threads: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    repair: RepairConfig = field(default_factory=RepairConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    participation: dict = field(default_factory=lambda: {"name": "full"})
    server_optimizer: dict = field(default_factory=lambda: {"name": "sgd"})  # sgd | momentum (FedAvgM)
    arms: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_dataclass(cls, raw: dict, path: str = ""):
    """A frozen config dataclass from a raw TOML table; unknown keys and wrong types name the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{path or 'top level'}' must be a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown config key '{where}{unknown[0]}' (known keys: {', '.join(sorted(known))})")
    values = {}
    for name, value in raw.items():
        key = f"{path}.{name}" if path else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build_dataclass(hint, value, key)
        else:
            values[name] = _coerce(value, hint, key)
    return cls(**values)


def _coerce(value, hint, key: str):
    if hint is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be an array, got {value!r}")
        return list(value)
    if hint is bool or hint is str or hint is dict:
        if not isinstance(value, hint):
            raise ConfigError(f"config key '{key}' must be a {hint.__name__}, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):  # TOML allows inf and nan; no fedsim setting means either
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        return float(value)
    raise ConfigError(f"config key '{key}' has an unsupported type")  # pragma: no cover


def parse_value(text: str):
    """A ``--set`` value: TOML syntax (numbers, booleans, quoted strings, arrays) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like key.path=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a table")
    node[parts[-1]] = parse_value(text.strip())


def _presets(folder: str = ""):
    root = resources.files("fedsim.configs")
    return root.joinpath(folder) if folder else root


def preset_names(folder: str = "") -> list[str]:
    """Packaged presets (``fedsim/configs/<folder>/*.toml``)."""
    return sorted(p.name[:-5] for p in _presets(folder).iterdir() if p.name.endswith(".toml"))


def read_raw(source: str, folder: str = "", kind: str = "preset") -> dict:
    """Load a packaged preset by name (from ``folder``, e.g. ``attacks``) or a TOML file by path."""
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file '{source}' does not exist")
        text = path.read_text()
    else:
        names = preset_names(folder)
        if source not in names:
            raise ConfigError(f"'{source}' is neither a TOML file nor {'an' if kind[0] in 'aeiou' else 'a'} {kind} "
                              f"(presets: {', '.join(names)})")
        text = _presets(folder).joinpath(f"{source}.toml").read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: malformed TOML: {exc}") from None


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(source: str | dict, overrides: list[str] | tuple[str, ...] = (),
                check: typing.Callable[[ExperimentConfig], None] | None = None) -> ExperimentConfig:
    """Load, override and validate a config. Overrides apply to every arm too, after the arm's own
    settings, so ``--set strategy.server_lr=2`` wins over an arm's ``server_lr``; and
    ``--set strategy.name=X`` on a comparison keeps only the arm that runs X.

    ``check`` (e.g. ``fedsim.experiments.setup.check``: name resolution) runs on every arm and on the
    whole config after the range checks; arm errors are prefixed with ``arms.<name>``."""

    def checked(c: ExperimentConfig) -> ExperimentConfig:
        validate(c)
        if check is not None:
            check(c)
        return c

    raw = copy.deepcopy(source) if isinstance(source, dict) else read_raw(source)
    arms = raw.pop("arms", {})
    if not isinstance(arms, dict):
        raise ConfigError("config key 'arms' must be a table of arm tables")
    for arm, extra in arms.items():
        if not isinstance(extra, dict):
            raise ConfigError(f"arms.{arm} must be a table of overrides")
    chosen = [parse_value(a.split("=", 1)[1].strip()) for a in overrides
              if "=" in a and a.split("=", 1)[0].strip() == "strategy.name"]
    if chosen:  # decided on each arm's own strategy, before the override renames them all
        arms = {arm: extra for arm, extra in arms.items()
                if merge(raw, extra).get("strategy", {}).get("name") == chosen[-1]}
    resolved = {}
    for arm, extra in arms.items():
        arm_raw = merge(raw, extra)
        for assignment in overrides:
            apply_override(arm_raw, assignment)
        try:
            checked(build_dataclass(ExperimentConfig, arm_raw, ""))
        except ConfigError as exc:
            raise ConfigError(f"arms.{arm}: {exc}") from None
        resolved[arm] = arm_raw
    if chosen and resolved:
        return build_dataclass(ExperimentConfig, next(iter(resolved.values())), "")
    for assignment in overrides:
        apply_override(raw, assignment)
    cfg = build_dataclass(ExperimentConfig, raw, "")
    if resolved:  # a comparison: its arms were checked; the base may name a strategy no arm runs
        validate(cfg)
    else:
        checked(cfg)
    return dataclasses.replace(cfg, arms=resolved)


def select_arms(cfg: ExperimentConfig, names: list[str]) -> ExperimentConfig:
    """The comparison restricted to the arms ``names`` (``fedsim run --arms``), in the preset's order."""
    unknown = [n for n in names if n not in cfg.arms]
    if not cfg.arms:
        raise ConfigError(f"--arms: '{cfg.name}' is not a comparison (it has no [arms])")
    if unknown:
        raise ConfigError(f"--arms: no arm named {', '.join(map(repr, unknown))} in '{cfg.name}'; "
                          f"its arms are {', '.join(cfg.arms)}")
    return dataclasses.replace(cfg, arms={k: v for k, v in cfg.arms.items() if k in names})


def arm_configs(cfg: ExperimentConfig) -> dict[str, ExperimentConfig]:
    """The runs a config stands for: one per arm, or the config itself (named by its strategy)."""
    if not cfg.arms:
        return {cfg.strategy.name: cfg}
    return {arm: build_dataclass(ExperimentConfig, full, "") for arm, full in cfg.arms.items()}


def validate(cfg: ExperimentConfig) -> None:
    """Range checks that need no registry (names are checked in ``fedsim.experiments.setup``)."""

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"config key '{key}' {msg}")

    need(cfg.rounds >= 1, "rounds", f"must be >= 1, got {cfg.rounds}")
    need(cfg.max_virtual_time >= 0, "max_virtual_time", "must be >= 0 (0 = no budget)")
    need(cfg.eval_every >= 1, "eval_every", f"must be >= 1, got {cfg.eval_every}")
    need(cfg.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0 = only at the end)")
    need(cfg.stale_model_delay >= 0, "stale_model_delay", "must be >= 0 (0 = off)")
    need(cfg.threads >= 1, "threads", "must be >= 1")
    need(cfg.seed >= 0, "seed", "must be >= 0")
    need(isinstance(cfg.seeds, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                             for x in cfg.seeds) and len(set(cfg.seeds)) == len(cfg.seeds),
         "seeds", f"must be a list of distinct integers >= 0, got {cfg.seeds!r}")
    need(bool(cfg.data.name), "data.name", "must not be empty")
    need(cfg.data.num_clients >= 1, "data.num_clients", "must be >= 1")
    need(cfg.data.alpha > 0, "data.alpha", "must be > 0")
    need(cfg.data.eval_samples >= 0, "data.eval_samples", "must be >= 0")
    need(bool(cfg.model.name), "model.name", "must not be empty")
    need(cfg.client.lr > 0, "client.lr", "must be > 0")
    need(cfg.client.batch_size >= 1, "client.batch_size", "must be >= 1")
    need(cfg.client.local_steps >= 1, "client.local_steps", "must be >= 1")
    need(0 <= cfg.client.momentum < 1, "client.momentum", f"must be in [0, 1), got {cfg.client.momentum}")
    need(not cfg.client.nesterov or cfg.client.momentum > 0, "client.nesterov", "needs client.momentum > 0")
    need(cfg.client.weight_decay >= 0, "client.weight_decay", f"must be >= 0, got {cfg.client.weight_decay}")
    need(0 < cfg.client.lr_decay <= 1, "client.lr_decay", f"must be in (0, 1], got {cfg.client.lr_decay}")
    need(cfg.strategy.mu >= 0, "strategy.mu", f"must be >= 0, got {cfg.strategy.mu}")
    need(cfg.client.clip_norm >= 0, "client.clip_norm", f"must be >= 0 (0 = off), got {cfg.client.clip_norm}")
    need(cfg.client.workers >= 0, "client.workers", f"must be >= 0 (0 = one per CPU core), got {cfg.client.workers}")
    need(cfg.client.workers == 1 or cfg.client.device != "cuda", "client.workers",
         "must be 1 with client.device = 'cuda' (worker processes split CPU training)")
    need(cfg.strategy.server_lr > 0, "strategy.server_lr", "must be > 0")
    need(cfg.strategy.cutoff >= 1, "strategy.cutoff", "must be >= 1")
    need(cfg.strategy.m >= 1, "strategy.m", "must be >= 1")
    _validate_staleness(cfg, need)
    _validate_compression(cfg.compression, need)
    _validate_privacy(cfg.privacy, need)
    _validate_adversary(cfg.adversary, need)
    need(cfg.defense.norm_bound >= 0, "defense.norm_bound", f"must be >= 0 (0 = off), got {cfg.defense.norm_bound}")
    need("name" in cfg.participation, "participation.name", "is required")
    need("name" in cfg.server_optimizer, "server_optimizer.name", "is required")


def _validate_staleness(cfg: ExperimentConfig, need) -> None:
    s, r = cfg.strategy, cfg.repair
    need(s.round_time >= 0, "strategy.round_time", f"must be >= 0 (0 = wait for m answers), got {s.round_time}")
    need(s.staleness_a >= 0 and s.staleness_b >= 0, "strategy.staleness_a", "and staleness_b must be >= 0")
    need(0 < s.mixing <= 1, "strategy.mixing", f"must be in (0, 1], got {s.mixing}")
    need(s.buffer_size >= 1, "strategy.buffer_size", f"must be >= 1, got {s.buffer_size}")
    need(s.max_staleness >= 0, "strategy.max_staleness", "must be >= 0 (0 = no cap)")
    need(s.history >= 1, "strategy.history", f"must be >= 1, got {s.history}")
    need(r.samples >= 1 and r.iterations >= 1, "repair.samples", "and repair.iterations must be >= 1")
    need(r.image_lr > 0 and r.label_lr > 0, "repair.image_lr", "and repair.label_lr must be > 0")
    need(r.tv >= 0, "repair.tv", f"must be >= 0, got {r.tv}")
    need(r.margin >= 0, "repair.margin", f"must be >= 0, got {r.margin}")
    need(r.patience >= 1, "repair.patience", f"must be >= 1, got {r.patience}")
    need(r.switch_round >= 0, "repair.switch_round", "must be >= 0")
    need(r.min_staleness >= 1, "repair.min_staleness", "must be >= 1")
    need(0 < s.ef_momentum <= 1, "strategy.ef_momentum", f"must be in (0, 1] (1 = plain EF21), got {s.ef_momentum}")
    need(r.plateau_steps >= 0, "repair.plateau_steps", "must be >= 0 (0 = run every iteration)")
    need(0 <= r.plateau_tol < 1, "repair.plateau_tol", f"must be in [0, 1), got {r.plateau_tol}")
    need(0 < r.warm_step <= 1, "repair.warm_step", f"must be in (0, 1] (a fraction of repair.image_lr), got {r.warm_step}")


def _validate_adversary(a: AdversaryConfig, need) -> None:
    need(0 <= a.fraction < 1, "adversary.fraction", f"must be in [0, 1), got {a.fraction}")
    need(a.behaviour == "none" or a.fraction > 0, "adversary.fraction",
         f"must be > 0 with adversary.behaviour = '{a.behaviour}' (no client would attack)")
    need(a.behaviour != "none" or a.fraction == 0, "adversary.behaviour", "must be set when adversary.fraction > 0")
    need(a.scale > 0 and a.noise_std > 0 and a.boost > 0, "adversary.scale", ", noise_std and boost must be > 0")
    need(0 < a.poison_fraction <= 1, "adversary.poison_fraction", f"must be in (0, 1], got {a.poison_fraction}")
    need(a.pattern_size >= 1, "adversary.pattern_size", f"must be >= 1, got {a.pattern_size}")
    used = {"sign-flip": (), "scale": ("scale",), "noise": ("noise_std",), "label-flip": ("boost",),
            "backdoor": ("target_label", "poison_fraction", "pattern_size", "boost")}.get(a.behaviour, ())
    default = AdversaryConfig()
    for key in ("scale", "noise_std", "target_label", "poison_fraction", "pattern_size", "boost"):
        need(key in used or getattr(a, key) == getattr(default, key), f"adversary.{key}",
             f"is not read by adversary.behaviour = '{a.behaviour}'")


def _validate_compression(c: CompressionConfig, need) -> None:
    sparse = c.name in ("top-k", "rand-k")
    need(c.k >= 0 and 0 <= c.density <= 1, "compression", "needs k >= 0 and density in [0, 1]")
    if c.name == "prune":
        need(c.density > 0 and c.k == 0, "compression", "prune needs density > 0 (the fraction kept per tensor), not k")
    if sparse:
        need((c.k > 0) != (c.density > 0), "compression", f"{c.name} needs exactly one of k > 0 and density > 0")
    elif c.name in ("identity", "natural"):
        need(c.k == 0 and c.density == 0, "compression", f"{c.name} takes neither k nor density")
    need(not c.unbiased or c.name in ("rand-k", "natural"), "compression.unbiased",
         "applies to rand-k and natural only")


def _validate_privacy(p: PrivacyConfig, need) -> None:
    need(p.clip_norm > 0, "privacy.clip_norm", f"must be > 0, got {p.clip_norm}")
    need(p.noise_multiplier >= 0, "privacy.noise_multiplier", f"must be >= 0, got {p.noise_multiplier}")
    need(p.epsilon >= 0, "privacy.epsilon", f"must be >= 0 (0 = use noise_multiplier), got {p.epsilon}")
    need(0 < p.delta < 1, "privacy.delta", f"must be in (0, 1), got {p.delta}")
    need(p.bands >= 0, "privacy.bands", f"must be >= 0, got {p.bands}")
    need(0 < p.target_quantile < 1, "privacy.target_quantile", f"must be in (0, 1), got {p.target_quantile}")
    need(p.clip_lr > 0, "privacy.clip_lr", f"must be > 0, got {p.clip_lr}")
    need(p.clip_count_noise >= 0, "privacy.clip_count_noise", f"must be >= 0 (0 = expected cohort / 20), "
         f"got {p.clip_count_noise}")
    need(p.example_noise_multiplier >= 0, "privacy.example_noise_multiplier", "must be >= 0")
    need(p.example_clip_norm > 0, "privacy.example_clip_norm", "must be > 0")
