"""``molma train`` / ``molma sweep`` / ``molma rm train`` command lines: early checks before any model
loads (algorithm, optional extras, objective specs), ``threads:`` honoured, a run's saved ``config.yaml``
reloading, ``rm train --out`` / ``--threads``."""

from __future__ import annotations

import time

import pytest
import torch
import yaml

import molma.rl
from molma.cli.main import main, parse_args
from molma.config import ConfigError, to_dict
from molma.rewards import check_objective_spec
from molma.rl import TrainConfig

RULES = ["objectives.help=rule:length", "objectives.safe=rule:banned_words"]


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Any attempt to build a trainer (and so to load a model) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a trainer was built: the check did not come first")

    monkeypatch.setattr(molma.rl, "MultiObjectiveTrainer", refuse)
    yield
    torch.set_num_threads(1)  # as tests/conftest.py set it


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "rm-help").mkdir(parents=True)
    (tmp_path / "runs" / "rm-help" / "config.json").write_text("{}")
    return tmp_path


def run(argv, capsys):
    start = time.perf_counter()
    code = main(argv)
    return code, capsys.readouterr().err, time.perf_counter() - start


def test_unknown_algorithm_fails_before_any_model_loads(in_tmp, capsys):
    code, err, seconds = run(["train", "--algo", "foo", *RULES], capsys)
    assert code == 2 and "molma train: error: algo: unknown algorithm 'foo'" in err
    assert "molma, gapo, pgapo" in err and "pcgrad" in err and "Traceback" not in err
    assert seconds < 30  # imports only, on a loaded 2-core machine; no model, no network
    code, err, _ = run(["sweep", "--algo", "foo", "--weights", "0.5", "--out", "sweep", *RULES], capsys)
    assert code == 2 and "unknown algorithm 'foo'" in err


def test_nash_mtl_without_its_extra_fails_early(in_tmp, capsys, monkeypatch):
    import molma.gradients.weightings as weightings

    monkeypatch.setattr(weightings, "_find_spec", lambda name: None)
    code, err, _ = run(["train", "--algo", "nash-mtl", *RULES], capsys)
    assert code == 2 and "algo 'nash-mtl'" in err and "pip install molma[nash]" in err


def test_missing_reward_model_folder_fails_early(in_tmp, capsys):
    code, err, seconds = run(["train", "--algo", "molma", "objectives.help=runs/nope",
                              "objectives.safe=rule:length"], capsys)
    assert code == 2 and "objectives.help: objective 'help': reward-model folder runs/nope not found" in err
    assert "reward models in runs: rm-help" in err and seconds < 30
    code, err, _ = run(["train", "objectives.help=runs/rm-help", "objectives.safe=rule:nope"], capsys)
    assert code == 2 and "objectives.safe:" in err and "unknown rule 'nope'" in err


def test_objective_specs(in_tmp, monkeypatch):
    check_objective_spec("runs/rm-help", "help")
    check_objective_spec("rule:length:cap=30")
    check_objective_spec("someone/some-reward-model")  # a hub id: left to the hub (no network here)
    for spec, message in (("runs/nope", "runs/nope not found"), ("./rm", "./rm not found"),
                          ("a/b/c", "a/b/c not found"), ("rm-help", "rm-help not found"),
                          ("smollm2-135m-instruct", "is a language model, not a reward model")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            check_objective_spec(spec, "help")
    (in_tmp / "not-a-model").mkdir()
    with pytest.raises(FileNotFoundError, match="not a reward-model folder"):
        check_objective_spec("not-a-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="hub is offline"):
        check_objective_spec("someone/some-reward-model", "help")


def _saved_run_config(path, **kw):
    """A config.yaml as the trainer writes it (its TrainConfig plus 'processes')."""
    cfg = TrainConfig(algo="so-weighted", importance=[0.3, 0.7], objectives={"help": "rule:length",
                      "safe": "rule:banned_words"}, iterations=7, out="runs/x", **kw)
    path.write_text(yaml.safe_dump(to_dict(cfg) | {"processes": 2}, sort_keys=False))
    return cfg


def test_a_runs_saved_config_reloads(in_tmp, caplog):
    from molma.cli.train import _load

    original = _saved_run_config(in_tmp / "config.yaml")
    with caplog.at_level("INFO"):
        cfg = _load(parse_args(["train", "--config", "config.yaml"]))
    assert cfg == original
    assert "ignoring 'processes: 2'" in caplog.text
    cfg = _load(parse_args(["train", "--config", "config.yaml", "--out", "runs/y", "iterations=3"]))
    assert (cfg.out, cfg.iterations, cfg.algo) == ("runs/y", 3, "so-weighted")


def test_threads_from_the_config_are_set_before_training(in_tmp, capsys):
    from molma.cli.train import _load

    (in_tmp / "t.yaml").write_text("threads: 3\niterations: 2\n")
    _load(parse_args(["train", "--config", "t.yaml"]))
    assert torch.get_num_threads() == 3
    _load(parse_args(["train", "--config", "t.yaml", "--threads", "2"]))  # the flag wins
    assert torch.get_num_threads() == 2
    _load(parse_args(["train", "--config", "t.yaml", "threads=1"]))  # an override beats the file
    assert torch.get_num_threads() == 1
    (in_tmp / "s.yaml").write_text("threads: 2\ntrain:\n  iterations: 2\n")  # beside a train: section
    assert _load(parse_args(["train", "--config", "s.yaml"])).iterations == 2 and torch.get_num_threads() == 2
    (in_tmp / "bad.yaml").write_text("threads: 0\n")
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        _load(parse_args(["train", "--config", "bad.yaml"]))
    # and through the command: set, then the trainer (refused here) would be built
    with pytest.raises(AssertionError, match="a trainer was built"):
        main(["train", "--config", "t.yaml", *RULES])
    assert torch.get_num_threads() == 3


def test_rm_train_takes_out_and_threads(in_tmp, capsys, monkeypatch):
    import molma.rewards.train as rm_train

    for flag in ("--out", "--output", "-o"):
        assert parse_args(["rm", "train", flag, "runs/rm-x"]).output_dir == "runs/rm-x"
    seen = {}

    def fake_train(config, pairs=None):
        seen.update(out=config.output_dir, threads=torch.get_num_threads())
        return config.output_path

    monkeypatch.setattr(rm_train, "train_reward_model", fake_train)
    assert main(["rm", "train", "--data", "builtin", "--out", "runs/rm-x", "--threads", "2"]) == 0
    assert seen == {"out": "runs/rm-x", "threads": 2}
    (in_tmp / "rm.yaml").write_text("threads: 3\nepochs: 2\n")
    assert main(["rm", "train", "--config", "rm.yaml", "-o", "runs/rm-y"]) == 0
    assert seen == {"out": "runs/rm-y", "threads": 3}
