"""Config precedence (CLI > YAML > defaults), validation and atomic writes."""

from dataclasses import dataclass, field

import pytest

from common.config import ConfigError, load_config, parse_cli_overrides
from common.files import atomic_write_json


@dataclass(frozen=True)
class Demo:
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    grid: dict = field(default_factory=dict)


def test_defaults_then_yaml_then_cli(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 3e-4\nsteps: 20\nname: yaml\n")
    assert load_config(Demo) == Demo()
    cfg = load_config(Demo, preset)
    assert (cfg.lr, cfg.steps, cfg.name) == (3e-4, 20, "yaml")  # YAML 1.1's "3e-4" string is coerced
    cfg = load_config(Demo, preset, parse_cli_overrides(["--steps=30", "--flag", "--sizes", "4,5"]))
    assert (cfg.lr, cfg.steps, cfg.name, cfg.flag, cfg.sizes) == (3e-4, 30, "yaml", True, (4, 5))


def test_unknown_keys_fail_with_a_suggestion(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("stpes: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load_config(Demo, preset)
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_config(Demo, None, {"lrr": "1"})


def test_wrong_types_fail_clearly():
    with pytest.raises(ConfigError, match="steps"):
        load_config(Demo, None, {"steps": "many"})
    with pytest.raises(ConfigError, match="steps"):
        load_config(Demo, None, {"steps": "2.5"})
    with pytest.raises(ConfigError, match="flag"):
        load_config(Demo, None, {"flag": "perhaps"})


def test_missing_preset_and_bad_flags():
    with pytest.raises(ConfigError, match="not found"):
        load_config(Demo, "nope.yaml")
    with pytest.raises(ConfigError, match="--field=value"):
        parse_cli_overrides(["positional"])


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_text().strip().endswith("}")
