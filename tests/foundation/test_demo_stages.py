"""The demo's content-addressed stage cache: same settings reuse a finished stage, changed ones rerun."""

from __future__ import annotations

from pathlib import Path

import pytest

from molma.config import ConfigError, load_config
from molma.demo import DemoConfig, Stages, _hash

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_stage_reused_for_same_key_and_rerun_for_new_key(tmp_path):
    calls = []
    folder = tmp_path / "rm"

    def work():
        calls.append(1)
        folder.mkdir(exist_ok=True)

    key = _hash("rm", {"epochs": 1})
    Stages(tmp_path).run("reward models", folder, key, work)
    second = Stages(tmp_path)
    second.run("reward models", folder, key, work)
    assert len(calls) == 1 and second.reused == ["reward models"]
    Stages(tmp_path).run("reward models", folder, _hash("rm", {"epochs": 2}), work)
    assert len(calls) == 2


def test_unfinished_stage_is_not_reused(tmp_path):
    def crash():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        Stages(tmp_path).run("train molma", tmp_path / "runs" / "molma", "k", crash)
    ran = []
    Stages(tmp_path).run("train molma", tmp_path / "runs" / "molma", "k", lambda: ran.append(1))
    assert ran == [1]


def test_demo_config_ships_valid_and_checks_values():
    cfg = load_config(DemoConfig, CONFIGS / "demo.yaml")
    assert "molma" in cfg.algos and cfg.threads == 1
    with pytest.raises(ConfigError, match="algos must include 'molma'"):
        load_config(DemoConfig, CONFIGS / "demo.yaml", ["algos=[so-help]"])


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIGS / "paper").glob("*.yaml")))
def test_paper_configs_load(name):
    from molma.rewards import RewardTrainConfig
    from molma.rl import TrainConfig

    cls = RewardTrainConfig if "-rm-" in name else TrainConfig
    cfg = load_config(cls, CONFIGS / "paper" / name)
    if cls is TrainConfig:
        assert cfg.iterations == 100 and cfg.experience_size == 64 and cfg.minibatch_size == 8
