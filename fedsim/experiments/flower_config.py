"""Experiment configs carried in a Flower ``run_config`` (``[tool.flwr.app.config]`` / ``flwr run -c``).

Keys: ``preset`` (a preset name or TOML path), ``set`` (overrides separated by ``;``, e.g.
``"rounds=3;strategy.name=fedau"``), ``out`` (server output directory). A comparison preset needs
an arm chosen with ``strategy.name`` in ``set``.
"""

from __future__ import annotations

from ..config import ConfigError, ExperimentConfig
from .setup import load as load_config


def config_from_run_config(run_config: dict) -> ExperimentConfig:
    source = str(run_config.get("preset", "quickstart"))
    overrides = [s.strip() for s in str(run_config.get("set", "")).split(";") if s.strip()]
    cfg = load_config(source, overrides)
    if cfg.arms:
        raise ConfigError(f"preset '{source}' compares arms {list(cfg.arms)}; choose one with set='strategy.name=...'")
    return cfg
