"""Attack-evaluation configuration: TOML -> frozen dataclasses, validated on load.

Same conventions as :mod:`fedsim.config` (unknown keys fail naming the key, dotted ``--set``
overrides in TOML syntax). A config describes one attack x defense x batch size, or a grid when
the ``grid`` lists are non-empty (they replace ``attack.name``, ``[defense]`` and
``attack.batch_size``; each ``grid.defenses`` entry is a table of defense fields applied over the
``[defense]`` table). Presets live in ``fedsim/configs/attacks/`` (``fedsim attack PRESET``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from ..config import ConfigError, apply_override, build_dataclass, preset_names, read_raw
from .defenses import DEFENSES, DefenseConfig
from .dlg import DLGConfig
from .inverting import IGConfig, SMEConfig, UnrolledConfig
from .cpa import SCALINGS, CPAConfig
from .imprint import ImprintConfig

__all__ = ["ATTACKS", "AttackRunConfig", "ConfigError", "attack_preset_names", "load_attack_config"]

# ig-update: SME's baseline, IG on the weight update (SME with alpha fixed at 0), with attack.sme's settings
ATTACKS = ("dlg", "idlg", "ig", "sme", "ig-update", "unrolled", "cpa", "analytic", "imprint")


@dataclass(frozen=True)
class AnalyticConfig:
    model: str = "mlp"


@dataclass(frozen=True)
class AttackSection:
    name: str = "dlg"
    batch_size: int = 1
    dlg: DLGConfig = field(default_factory=DLGConfig)
    idlg: DLGConfig = field(default_factory=DLGConfig)
    ig: IGConfig = field(default_factory=IGConfig)
    sme: SMEConfig = field(default_factory=SMEConfig)
    unrolled: UnrolledConfig = field(default_factory=UnrolledConfig)
    cpa: CPAConfig = field(default_factory=CPAConfig)
    imprint: ImprintConfig = field(default_factory=ImprintConfig)
    analytic: AnalyticConfig = field(default_factory=AnalyticConfig)

    def family(self, name: str):
        if name == "ig-update":
            return dataclasses.replace(self.sme, alpha_init=0.0, learn_alpha=False)
        return getattr(self, name)


@dataclass(frozen=True)
class AttackDataConfig:
    name: str = "fashion-mnist"
    dir: str = ""
    pool: int = 2000           # seeded pool of train images the victims' batches come from
    unique_labels: bool = False


@dataclass(frozen=True)
class AttackModelConfig:
    name: str = ""             # "" = each attack's own model (attack.<name>.model)


@dataclass(frozen=True)
class ClientSection:
    lr: float = 0.1            # the victims' SGD learning rate (known to the attacker)
    local_steps: int = 1       # steps before sending for gradient attacks (1 = FedSGD)
    local_batch_size: int = 0  # 0 = full batch


@dataclass(frozen=True)
class GridSection:
    attacks: list = field(default_factory=list)
    defenses: list = field(default_factory=list)
    batch_sizes: list = field(default_factory=list)


@dataclass(frozen=True)
class UtilitySection:
    rounds: int = 0            # 0 = no utility training
    clients: int = 8           # clients per round (each with its own shard)
    samples_per_client: int = 250
    local_steps: int = 5
    batch_size: int = 32
    lr: float = 0.05
    eval_samples: int = 2000


@dataclass(frozen=True)
class ReportSection:
    grid_batch_size: int = 0   # batch size shown in grid.png (0 = the first listed)
    recovered_db: float = 20.0  # frac_recovered: the share of images reconstructed at or above this PSNR
    max_images: int = 8


@dataclass(frozen=True)
class AttackRunConfig:
    name: str = "attack"
    description: str = ""
    seed: int = 0
    trials: int = 1
    threads: int = 1
    # the model the victims train on: "init" (at initialisation), or "round-R": the global model after
    # R rounds of a real FedAvg federation with the cell's defense in place (utility.* sets its clients);
    # imprint rows always attack the malicious server's own model (state "malicious model")
    state: str = "init"
    data: AttackDataConfig = field(default_factory=AttackDataConfig)
    model: AttackModelConfig = field(default_factory=AttackModelConfig)
    client: ClientSection = field(default_factory=ClientSection)
    attack: AttackSection = field(default_factory=AttackSection)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    grid: GridSection = field(default_factory=GridSection)
    utility: UtilitySection = field(default_factory=UtilitySection)
    report: ReportSection = field(default_factory=ReportSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def train_rounds(self) -> int:
        """R of ``state = "round-R"`` (0 for ``"init"``)."""
        return 0 if self.state == "init" else int(self.state.split("-", 1)[1])

    @property
    def attacks(self) -> list[str]:
        return list(self.grid.attacks) or [self.attack.name]

    @property
    def batch_sizes(self) -> list[int]:
        return list(self.grid.batch_sizes) or [self.attack.batch_size]

    @property
    def defenses(self) -> list[DefenseConfig]:
        if not self.grid.defenses:
            return [self.defense]
        base = dataclasses.asdict(self.defense)
        return [build_dataclass(DefenseConfig, {**base, **entry}, f"grid.defenses[{i}]")
                for i, entry in enumerate(self.grid.defenses)]

    def model_for(self, attack: str) -> str:
        if attack == "imprint":  # the malicious server's own model, whatever model.name says
            return "imprint"
        return self.model.name or self.attack.family(attack).model


def attack_preset_names() -> list[str]:
    return preset_names("attacks")


def load_attack_config(source: str | dict, overrides: list[str] | tuple[str, ...] = ()) -> AttackRunConfig:
    """Load a preset name, TOML path or raw dict, apply ``key.path=value`` overrides, validate."""
    raw = copy.deepcopy(source) if isinstance(source, dict) else read_raw(source, "attacks", "attack preset")
    for assignment in overrides:
        apply_override(raw, assignment)
    cfg = build_dataclass(AttackRunConfig, raw, "")
    validate(cfg)
    return cfg


def validate(cfg: AttackRunConfig) -> None:
    from .data import POOLS
    from .models import ATTACK_MODELS

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"config key '{key}' {msg}")

    need(cfg.seed >= 0, "seed", "must be >= 0")
    need(cfg.state == "init" or (cfg.state.startswith("round-") and cfg.state[6:].isdigit() and int(cfg.state[6:]) >= 1),
         "state", f"must be 'init' or 'round-R' with R >= 1 rounds of training; got '{cfg.state}'")
    need(cfg.trials >= 1, "trials", "must be >= 1")
    need(cfg.threads >= 1, "threads", "must be >= 1")
    need(cfg.data.name in POOLS, "data.name", f"must be one of {', '.join(POOLS)}; got '{cfg.data.name}'")
    need(cfg.data.pool >= 1, "data.pool", "must be >= 1")
    need(cfg.client.lr > 0, "client.lr", "must be > 0")
    need(cfg.client.local_steps >= 1, "client.local_steps", "must be >= 1")
    need(cfg.client.local_batch_size >= 0, "client.local_batch_size", "must be >= 0 (0 = full batch)")
    need(not cfg.model.name or cfg.model.name in ATTACK_MODELS, "model.name",
         f"must be empty or one of {', '.join(ATTACK_MODELS)}; got '{cfg.model.name}'")
    key = "grid.attacks" if cfg.grid.attacks else "attack.name"
    for a in cfg.attacks:
        need(isinstance(a, str) and a in ATTACKS, key, f"must name attacks from {', '.join(ATTACKS)}; got {a!r}")
    for a in ATTACKS:
        fam = cfg.attack.family(a)
        need(fam.model in ATTACK_MODELS or a == "imprint", f"attack.{a}.model", f"must be one of {', '.join(ATTACK_MODELS)}")
        for name in ("evals", "steps", "plateau_steps"):
            if hasattr(fam, name):
                need(getattr(fam, name) >= 0, f"attack.{a}.{name}", "must be >= 0")
        if hasattr(fam, "plateau_tol"):
            need(0 <= fam.plateau_tol < 1, f"attack.{a}.plateau_tol", f"must be in [0, 1), got {fam.plateau_tol}")
    need(cfg.attack.cpa.scale_from in SCALINGS, "attack.cpa.scale_from",
         f"must be one of {', '.join(SCALINGS)}; got '{cfg.attack.cpa.scale_from}'")
    need(0 <= cfg.attack.sme.alpha_init <= 1, "attack.sme.alpha_init", "must be in [0, 1]")
    need(cfg.attack.imprint.bins >= 2, "attack.imprint.bins", "must be >= 2")
    need("imprint" not in cfg.attacks or cfg.client.local_steps == 1, "client.local_steps",
         "must be 1 for the imprint attack (it reads FedSGD's gradient)")
    for a in ("sme", "unrolled"):
        fam = getattr(cfg.attack, a)
        need(fam.local_steps >= 1, f"attack.{a}.local_steps", "must be >= 1")
        need(fam.client_lr > 0, f"attack.{a}.client_lr", "must be > 0")
        need(fam.local_batch_size >= 0, f"attack.{a}.local_batch_size", "must be >= 0")
    key = "grid.batch_sizes" if cfg.grid.batch_sizes else "attack.batch_size"
    for b in cfg.batch_sizes:
        need(isinstance(b, int) and not isinstance(b, bool) and b >= 1, key, f"must be integers >= 1; got {b!r}")
    for i, entry in enumerate(cfg.grid.defenses):
        need(isinstance(entry, dict), f"grid.defenses[{i}]", "must be a table of defense fields")
    for i, d in enumerate(cfg.defenses):
        where = f"grid.defenses[{i}]" if cfg.grid.defenses else "defense"
        need(d.name in DEFENSES, f"{where}.name", f"must be one of {', '.join(DEFENSES)}; got '{d.name}'")
        need(d.clip > 0, f"{where}.clip", "must be > 0")
        need(d.noise_multiplier >= 0, f"{where}.noise_multiplier", "must be >= 0")
        need(0 < d.density <= 1, f"{where}.density", "must be in (0, 1]")
        need(0 <= d.prune_ratio < 1, f"{where}.prune_ratio", "must be in [0, 1)")
        need(d.clients >= 1, f"{where}.clients", "must be >= 1")
        need(d.name != "secagg" or d.clients >= 2, f"{where}.clients", "must be >= 2 for secagg")
        need(d.local_steps >= 1, f"{where}.local_steps", "must be >= 1")
        need(0 < d.delta < 1, f"{where}.delta", "must be in (0, 1)")
        need(d.rounds >= 1, f"{where}.rounds", "must be >= 1")
        need(0 <= d.round < d.rounds, f"{where}.round", f"must be in [0, rounds={d.rounds})")
    need(cfg.utility.rounds >= 0, "utility.rounds", "must be >= 0")
    for name in ("clients", "samples_per_client", "local_steps", "batch_size", "eval_samples"):
        need(getattr(cfg.utility, name) >= 1, f"utility.{name}", "must be >= 1")
    need(cfg.utility.lr > 0, "utility.lr", "must be > 0")
    need(cfg.report.grid_batch_size >= 0, "report.grid_batch_size", "must be >= 0")
    need(cfg.report.max_images >= 1, "report.max_images", "must be >= 1")
