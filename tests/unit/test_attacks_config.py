"""Attack configs: presets load, overrides apply, bad keys and values fail naming the field."""

from __future__ import annotations

import pytest

from fedsim.attacks.config import ConfigError, attack_preset_names, load_attack_config
from fedsim.config import preset_names


def test_every_attack_preset_loads_and_main_presets_are_untouched():
    names = attack_preset_names()
    for name in ("dlg-fmnist", "grid-smoke", "grid-fmnist", "dlg-paper", "ig-paper", "sme-paper", "grid-fmnist-trained",
                 "grid-photos"):
        assert name in names
    for name in names:
        load_attack_config(name)
    assert not set(names) & set(preset_names())  # `fedsim presets` lists only experiment presets


def test_closing_note_grid_is_five_attacks_five_defenses_three_batch_sizes():
    cfg = load_attack_config("grid-fmnist")
    assert cfg.attacks == ["dlg", "idlg", "ig", "sme", "cpa"]
    assert cfg.batch_sizes == [1, 4, 16]
    d = cfg.defenses
    assert [x.name for x in d] == ["none", "dp", "dp", "top-k", "secagg"]
    assert [x.noise_multiplier for x in d[1:3]] == [1e-3, 1e-1] and d[1].clip == 1.0
    assert d[3].density == 0.01 and d[4].clients == 8


def test_overrides_in_toml_syntax():
    cfg = load_attack_config("dlg-fmnist", ["attack.batch_size=4", "defense.name=dp",
                                            "defense.noise_multiplier=0.01", "attack.dlg.evals=7"])
    assert cfg.batch_sizes == [4] and cfg.defenses[0].name == "dp"
    assert cfg.attack.dlg.evals == 7 and cfg.model_for("dlg") == "lenet-sigmoid"
    grid = load_attack_config("dlg-fmnist", ['grid.defenses=[{name="none"}, {name="top-k", density=0.1}]'])
    assert [d.display for d in grid.defenses] == ["none", "top-k(0.1)"]


@pytest.mark.parametrize("override,message", [
    ("attack.dlg.stepz=3", "unknown config key 'attack.dlg.stepz'"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("attack.name=magic", "attack.name"),
    ("defense.name=dp-magic", "defense.name"),
    ("defense.density=0", "defense.density"),
    ("attack.batch_size=0", "attack.batch_size"),
    ("data.name=cifar10", "data.name"),
    ("model.name=resnet", "model.name"),
    ('grid.defenses=[{name="none"}, {name="dp", clip="big"}]', "grid.defenses[1].clip"),
    ('grid.defenses=[{name="secagg", clients=1}]', "grid.defenses[0].clients"),
    ("grid.batch_sizes=[1, -2]", "grid.batch_sizes"),
    ("trials=0", "trials"),
])
def test_bad_configs_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_attack_config("dlg-fmnist", [override])


def test_unknown_source_lists_the_presets(tmp_path):
    with pytest.raises(ConfigError, match="grid-smoke"):
        load_attack_config("no-such-preset")
    with pytest.raises(ConfigError, match="does not exist"):
        load_attack_config(str(tmp_path / "missing.toml"))
