"""Every numeric config field has a declared valid range; NaN / inf / out-of-range values are refused
up front with the file (or "command line") and the key; nested unknown keys are named; dotted
overrides of dict fields merge into the default (issue 16)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, get_type_hints

import pytest

from molma.config import ConfigError, check_range, from_dict, load_config, numeric_fields, parse_overrides
from molma.mbhi.agents import DQNConfig
from molma.mbhi.blocker import BlockerConfig
from molma.mbhi.dynamics import DynamicsConfig
from molma.mbhi.lookahead import LookaheadConfig
from molma.mbhi.mpc import MPCConfig
from molma.mbhi.overseer import OverseerConfig
from molma.mbhi.train import RunConfig
from molma.rewards.train import RewardTrainConfig
from molma.rl import TrainConfig

CONFIGS = [TrainConfig, RewardTrainConfig, RunConfig, DQNConfig, BlockerConfig, DynamicsConfig,
           LookaheadConfig, MPCConfig, OverseerConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_field_has_a_declared_range(cls):
    fields = numeric_fields(cls)
    assert fields, cls
    missing = sorted(set(fields) - set(cls.RANGES))
    assert not missing, f"{cls.__name__}: numeric fields without a declared range: {missing}"
    stale = sorted(set(cls.RANGES) - {f.name for f in dataclasses.fields(cls)})
    assert not stale, f"{cls.__name__}: RANGES names no field {stale}"


def _with_first_number(value: Any, number: float) -> Any:
    """``value`` (a number, list, tuple or dict of numbers, or None) with its first number replaced."""
    if value is None or isinstance(value, (int, float)):
        return number
    if isinstance(value, (list, tuple)):
        return type(value)([number, *value[1:]])
    if isinstance(value, dict):
        key = next(iter(value))
        return {**value, key: number}
    raise TypeError(value)


def _probes(cls) -> list[tuple[str, Any]]:
    defaults = cls()
    probes = []
    for name in numeric_fields(cls):
        default = getattr(defaults, name)
        if name == "importance":  # None by default; a list of one weight per objective
            default = [0.5, 0.5]
        probes.append((name, default))
    return probes


CASES = [(cls, name, default) for cls in CONFIGS for name, default in _probes(cls)]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("cls", "name", "default"), CASES, ids=[f"{c.__name__}.{n}" for c, n, _ in CASES])
def test_non_finite_values_are_refused_for_every_numeric_field(cls, name, default, bad):
    value = _with_first_number(default, bad)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):  # the Python API: __post_init__
        cls(**{name: value})
    with pytest.raises(ConfigError, match=rf"^command line: .*\b{name}\b"):  # YAML values / overrides
        load_config(cls, overrides={name: value})


@pytest.mark.parametrize(("cls", "name", "default"), CASES, ids=[f"{c.__name__}.{n}" for c, n, _ in CASES])
def test_a_huge_negative_value_is_out_of_every_range(cls, name, default):
    """No numeric setting of these configs can be -1e12 (counts, rates, fractions, seeds, penalties)."""
    bad = -(10**12) if "float" not in str(get_type_hints(cls)[name]) else -1e12
    with pytest.raises(ConfigError, match=rf"^command line: .*\b{name}\b.* must be"):
        load_config(cls, overrides={name: _with_first_number(default, bad)})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("temperature=.nan", r"temperature: expected a finite number, got nan"),
        ("critic_lr=-1", r"critic_lr must be > 0"),
        ("top_p=7", r"top_p must be <= 1"),
        ("top_p=0", r"top_p must be > 0"),
        ("save_every=-3", r"save_every must be >= 0"),
        ("prompt_mix={help: .nan, safe: .nan}", r"prompt_mix\.help: expected a finite number"),
        ("prompt_mix.help=.nan", r"prompt_mix\.help: expected a finite number"),
        ("prompt_mix={help: 1.5, safe: -0.5}", r"prompt_mix\.help must be <= 1"),
        ("lr=.nan", r"lr: expected a finite number"),
        ("weight_decay=.nan", r"weight_decay: expected a finite number"),
        ("adam_betas=[0.9,1.5]", r"adam_betas\[1\] must be < 1"),
        ("clip_norm=-1", r"clip_norm must be > 0"),
        ("importance=[.nan,1]", r"importance\[0\]: expected a finite number"),
        ("importance=[-1,2]", r"importance\[0\] must be >= 0"),
        ("max_prompt_tokens=-1", r"max_prompt_tokens must be >= 1"),
        ("max_prompt_tokens=0", r"max_prompt_tokens must be >= 1"),
        ("logit_eps=0.5", r"logit_eps must be < 0.5"),
        ("ppo_clip=0", r"ppo_clip must be > 0"),
        ("top_k=-1", r"top_k must be >= 0"),
        ("seed=-1", r"seed must be >= 0"),
        ("max_bad_updates=0", r"max_bad_updates must be >= 1"),
        ("piecewise_delta=2", r"piecewise_delta must be <= 1"),
        ("lora.dropout=.nan", r"lora: dropout: expected a finite number"),
    ],
)
def test_the_audit_examples_name_the_command_line_and_the_key(override, message):
    with pytest.raises(ConfigError, match=rf"^command line: .*{message}"):
        load_config(TrainConfig, overrides=[override])


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("temperature: .nan\n", r"temperature: expected a finite number, got nan"),
        ("lr: .nan\n", r"lr: expected a finite number"),
        ("top_p: 7\n", r"top_p must be <= 1"),
        ("prompt_mix: {help: .nan, safe: .nan}\n", r"prompt_mix\.help: expected a finite number"),
        ("weight_decay: .inf\n", r"weight_decay: expected a finite number"),
    ],
)
def test_file_values_name_the_file_and_the_key(tmp_path, yaml_text, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"^{path}: .*{message}"):
        load_config(TrainConfig, path)
    # an unrelated override does not hide where the bad value came from
    with pytest.raises(ConfigError, match=rf"^{path}: .*{message}"):
        load_config(TrainConfig, path, ["iterations=3"])


def test_a_bad_override_names_the_command_line_not_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("iterations: 3\n")
    with pytest.raises(ConfigError, match=r"^command line: top_p must be <= 1(\.0)?, got 7"):
        load_config(TrainConfig, path, ["top_p=7"])


def test_rm_and_mbhi_examples():
    with pytest.raises(ConfigError, match=r"^command line: learning_rate: expected a finite number"):
        load_config(RewardTrainConfig, overrides=["learning_rate=.nan"])
    with pytest.raises(ConfigError, match=r"^command line: adam_beta2 must be < 1"):
        load_config(RewardTrainConfig, overrides=["adam_beta2=1.5"])
    with pytest.raises(ConfigError, match=r"^command line: dqn: lr: expected a finite number"):
        load_config(RunConfig, overrides=["dqn.lr=.nan"])
    with pytest.raises(ConfigError, match=r"^command line: blocker: hidden\[1\] must be >= 1"):
        load_config(RunConfig, overrides=["blocker.hidden=[64, 0]"])
    with pytest.raises(ConfigError, match=r"^command line: mpc: elites must be >= 1"):
        load_config(RunConfig, overrides=["mpc.elites=0"])


def test_check_range_refuses_nan_and_inf():
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="x must be a finite number"):
            check_range("x", bad)
        with pytest.raises(ValueError, match="x must be a finite number"):
            check_range("x", bad, low=0.0, high=1.0)


def test_an_unknown_nested_key_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lora: {alhpa: 16}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: lora: unknown key\(s\) 'alhpa' for LoraSettings; "
                                          r"known keys: .*alpha"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match=r"^command line: lora: unknown key\(s\) 'alhpa' for LoraSettings"):
        load_config(TrainConfig, overrides=["lora.alhpa=16"])
    with pytest.raises(ConfigError, match=r"^command line: dqn: unknown key\(s\) 'gama' for DQNConfig"):
        load_config(RunConfig, overrides=["dqn.gama=0.9"])


def test_a_dotted_override_of_a_dict_field_merges_into_the_default():
    cfg = load_config(TrainConfig, overrides=["prompts.help=my-prompts.jsonl", "objectives.help=runs/rm-h2"])
    assert cfg.prompts == {"help": "my-prompts.jsonl", "safe": "builtin:safe"}
    assert cfg.objectives == {"help": "runs/rm-h2", "safe": "runs/rm-safe"}
    cfg = load_config(TrainConfig, overrides=["prompt_mix.help=0.5", "prompt_mix.safe=0.5"])
    assert cfg.prompt_mix == {"help": 0.5, "safe": 0.5}
    # the way the CLI passes them: parsed first, then more keys added
    over = parse_overrides(["objectives.safe=rule:length"])
    over["algo"] = "molma"
    assert load_config(TrainConfig, overrides=over).objectives == {"help": "runs/rm-help", "safe": "rule:length"}


def test_a_dotted_override_merges_into_the_file_value_and_a_whole_mapping_replaces(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("objectives: {help: a, safe: b, extra: c}\nimportance: [1, 1, 1]\n")
    cfg = load_config(TrainConfig, path, ["objectives.extra=d"])
    assert cfg.objectives == {"help": "a", "safe": "b", "extra": "d"}
    cfg = load_config(TrainConfig, overrides=["objectives={help: a, other: b}", "safe_objective=other"])
    assert cfg.objectives == {"help": "a", "other": "b"}
    # a whole mapping replaces the file's value too (e.g. `lr_search={}` turns the experiment's search off)
    cfg = load_config(TrainConfig, path,
                      ["objectives={help: x, other: y}", "safe_objective=other", "importance=[1, 1]"])
    assert cfg.objectives == {"help": "x", "other": "y"}


def test_nested_dataclass_dotted_overrides_keep_their_other_defaults():
    cfg = load_config(RunConfig, overrides=["mpc.horizon=4"])
    assert cfg.mpc.horizon == 4 and cfg.mpc.population == MPCConfig().population


def test_bad_settings_fail_before_any_model_is_loaded(monkeypatch, capsys):
    import molma.rl
    from molma.cli.main import main

    def no_trainer(*args, **kwargs):
        raise AssertionError("the trainer (and its models) must not be built for a bad config")

    monkeypatch.setattr(molma.rl, "MultiObjectiveTrainer", no_trainer)
    assert main(["train", "--algo", "molma", "temperature=.nan"]) == 2
    err = capsys.readouterr().err
    assert "command line: temperature: expected a finite number, got nan" in err


def test_from_dict_reports_the_source_of_a_range_error():
    with pytest.raises(ConfigError, match=r"^demo: train: critic_lr must be > 0(\.0)?, got -1"):
        from_dict(TrainConfig, {"critic_lr": -1.0}, source="demo: train")
