from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from molma.config import ConfigError, check_range, load_config, parse_overrides, to_dict


@dataclass
class Optim:
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)

    def __post_init__(self) -> None:
        check_range("lr", self.lr, low=0.0, low_open=True)


@dataclass
class Stage:
    name: str = "x"
    steps: int = 3
    mode: Literal["exact", "fast"] = "exact"
    weights: list[float] | None = None
    lora: bool = False
    optim: Optim = field(default_factory=Optim)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 0.001\n")
    cfg = load_config(Stage, path, ["optim.betas=[0.8, 0.99]", "--mode=fast", "weights=[1, 2]"])
    assert cfg.steps == 5 and cfg.mode == "fast"
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.optim.betas == (0.8, 0.99)
    assert cfg.weights == [1.0, 2.0] and isinstance(cfg.weights[0], float)
    assert to_dict(cfg)["optim"]["betas"] == [0.8, 0.99]


def test_unknown_key_names_file_and_known_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stepz: 5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'stepz'.*known keys: .*steps"):
        load_config(Stage, path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps=abc", r"steps: expected an integer, got 'abc'"),
        ("steps=1.5", r"steps: expected an integer"),
        ("lora=3", r"lora: expected true/false"),
        ("mode=slow", r"mode: expected one of \['exact', 'fast'\]"),
        ("optim.lr=-1", r"lr must be > 0"),
        ("novalue", r"not of the form key=value"),
        ("optim.nope=1", r"unknown key\(s\) 'nope' for Optim"),
    ],
)
def test_bad_values_are_reported(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Stage, None, [override])


def test_missing_file_and_section(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Stage, tmp_path / "none.yaml")
    path = tmp_path / "s.yaml"
    path.write_text("a: {steps: 2}\n")
    assert load_config(Stage, path, section="a").steps == 2
    with pytest.raises(ConfigError, match="no section 'b'"):
        load_config(Stage, path, section="b")


def test_extends_starts_from_another_file_merging_mappings_and_replacing_lists(tmp_path):
    """``extends: base.yaml`` (relative to the file): mappings merge key by key, lists and scalars are replaced,
    and the command line still wins."""
    (tmp_path / "base").mkdir()
    base = "steps: 5\nweights: [1, 2, 3]\noptim: {lr: 0.001, betas: [0.8, 0.9]}\n"
    (tmp_path / "base" / "base.yaml").write_text(base)
    path = tmp_path / "child.yaml"
    path.write_text("extends: base/base.yaml\nweights: [4]\noptim: {lr: 0.002}\n")
    cfg = load_config(Stage, path, ["steps=7"])
    assert cfg.steps == 7 and cfg.weights == [4.0]
    assert cfg.optim.lr == pytest.approx(2e-3) and cfg.optim.betas == (0.8, 0.9)
    assert load_config(Stage, path).steps == 5


def test_extends_errors_name_the_file(tmp_path):
    path = tmp_path / "child.yaml"
    path.write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: extends: no such file .*missing\.yaml"):
        load_config(Stage, path)
    path.write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: extends: expected the path"):
        load_config(Stage, path)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="a cycle"):
        load_config(Stage, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: c.yaml\n")
    with pytest.raises(ConfigError, match="a cycle"):
        load_config(Stage, tmp_path / "c.yaml")


def test_parse_overrides_nested_and_yaml_values():
    assert parse_overrides(["a.b=1e-3", "c=true", "d=[x, y]", "e="]) == {
        "a": {"b": 1e-3}, "c": True, "d": ["x", "y"], "e": ""}


def test_cli_takes_overrides_before_and_after_options():
    from molma.cli.main import parse_args

    args = parse_args(["train", "--config", "c.yaml", "lr=1e-3", "--out", "runs/x", "fsdp=true", "iterations=2"])
    assert args.out == "runs/x"
    assert args.overrides == ["lr=1e-3", "fsdp=true", "iterations=2"]
    with pytest.raises(SystemExit):
        parse_args(["train", "--config", "c.yaml", "--out", "runs/x", "--no-such-flag"])
    with pytest.raises(SystemExit):  # a command without overrides still rejects stray words
        parse_args(["report", "runs/exp", "lr=1"])
