"""Config loading: presets, overrides, arms, validation messages."""

import pytest

from fedsim.config import ConfigError, arm_configs, parse_value, preset_names
from fedsim.experiments.setup import load as load_config


def test_every_preset_loads_and_validates():
    for name in preset_names():
        cfg = load_config(name)
        assert cfg.name == name and cfg.rounds >= 1
        for arm_cfg in arm_configs(cfg).values():
            assert not arm_cfg.arms


def test_overrides_win_over_arm_settings():
    cfg = load_config("anarchic-afa", ["strategy.server_lr=2", "seed=7"])
    arms = arm_configs(cfg)
    assert {a.strategy.server_lr for a in arms.values()} == {2.0}
    assert {a.seed for a in arms.values()} == {7}
    assert arms["afa-cs"].strategy.name == "afa-cs"


def test_select_arm_keeps_the_presets_data_and_participation():
    cfg = load_config("anarchic-afa")
    one = load_config("anarchic-afa", ["strategy.name=afa-cd"])
    assert one.strategy.name == "afa-cd" and one.strategy.server_lr == 5.0 and not one.arms
    assert one.participation == cfg.participation and one.data == cfg.data
    tuned = load_config("anarchic-afa", ["strategy.name=afa-cd", "strategy.server_lr=3"])
    assert tuned.strategy.server_lr == 3.0 and not tuned.arms
    other = load_config("fedau-vs-fedavg", ["strategy.name=afa-cs"])  # no such arm: the base with afa-cs
    assert other.strategy.name == "afa-cs" and other.data.num_clients == 250 and not other.arms


@pytest.mark.parametrize("text, value", [("3", 3), ("0.5", 0.5), ("true", True), ("fedau", "fedau"),
                                         ('"a b"', "a b"), ("[1, 2]", [1, 2])])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_bad_arm_is_named():
    raw = {"name": "x", "arms": {"good": {"strategy": {"name": "fedau"}}, "bad": {"strategy": {"name": "nope"}}}}
    with pytest.raises(ConfigError, match="arms.bad: config key 'strategy.name'"):
        load_config(raw)


def test_wrong_types_and_sections_are_named():
    with pytest.raises(ConfigError, match="'client.lr' must be a number"):
        load_config({"client": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="section 'data' must be a table"):
        load_config({"data": 3})
    with pytest.raises(ConfigError, match="neither a TOML file nor a preset"):
        load_config("no-such-preset")
