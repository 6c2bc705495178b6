"""Runs end to end (tiny budgets), comparison outputs and the ``molma mbhi`` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from molma.cli.main import main
from molma.config import ConfigError, from_dict
from molma.mbhi.compare import (
    check_targets,
    compare,
    load_results,
    return_auc,
    steps_to_threshold,
    t_interval,
)
from molma.mbhi.train import RunConfig, RunResult, run_experiment

TINY = {
    "total_steps": 400, "eval_episodes": 1, "log_every": 50,
    "dqn": {"hidden": [32], "learning_starts": 100},
    "overseer": {"label_budget": 300},
    "blocker": {"members": 3, "hidden": [32], "train_every": 100, "train_steps": 30},
    "dynamics": {"members": 3, "hidden": [32], "warmup": 100, "train_every": 200, "train_steps": 30},
    "lookahead": {"horizon": 5},
    "mpc": {"horizon": 5, "population": 8, "iterations": 2},
}


@pytest.mark.parametrize("method", ["none", "shaping", "hirl", "mbhi", "mbhi_nohuman", "pets"])
def test_run_experiment_records_consistent_curves(method: str) -> None:
    cfg = from_dict(RunConfig, {**TINY, "env": "molma/CliffCart-v0", "method": method, "seed": 1})
    r = run_experiment(cfg)
    assert r.steps == list(range(50, 401, 50))
    assert np.all(np.diff(r.catastrophes) >= 0) and np.all(np.diff(r.labels) >= 0)
    assert r.summary["catastrophes"] == r.catastrophes[-1]
    assert r.summary["catastrophes"] >= sum(e["catastrophe"] for e in r.episodes)
    assert sum(e["length"] for e in r.episodes) <= 400
    assert np.isfinite(r.summary["final_return"])
    if method in ("none", "shaping", "pets"):
        assert r.summary["labels_used"] == 0 and r.summary["blocks"] == 0
    elif method == "mbhi_nohuman":  # no human: its blocker learns from the agent's own steps
        assert r.summary["labels_used"] == 0 and r.summary["self_labels"] == 400
    else:
        assert 0 < r.summary["labels_used"] <= 300
    json.dumps(r.to_json())


def test_runs_are_reproducible() -> None:
    cfg = from_dict(RunConfig, {**TINY, "env": "molma/CliffWalk-v0", "method": "hirl", "total_steps": 200})
    a, b = run_experiment(cfg), run_experiment(cfg)
    assert a.catastrophes == b.catastrophes and a.labels == b.labels
    assert [e["return"] for e in a.episodes] == [e["return"] for e in b.episodes]


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="lookahead: horizon"):
        from_dict(RunConfig, {"lookahead": {"horizon": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(RunConfig, {"blocker": {"size": 3}})
    with pytest.raises(ConfigError, match="method"):
        from_dict(RunConfig, {"method": "ppo"})


def _overrides() -> list[str]:
    return ["eval_episodes=1", "log_every=50", "dqn.hidden=[32]", "dqn.learning_starts=100",
            "overseer.label_budget=200", "blocker.members=2", "blocker.train_steps=20",
            "dynamics.members=2", "dynamics.warmup=100", "dynamics.train_steps=20", "lookahead.horizon=4",
            "mpc.horizon=4", "mpc.population=8", "mpc.iterations=1"]


def test_cli_run_and_compare(tmp_path, capsys) -> None:
    out = str(tmp_path / "runs")
    for method in ("none", "shaping", "hirl", "mbhi"):
        code = main(["mbhi", "run", "--env", "molma/CliffCart-v0", "--method", method, "--seeds", "0",
                     "--steps", "300", "--out", out, *(["--checkpoints"] if method == "mbhi" else []),
                     *_overrides()])
        assert code == 0
    assert (tmp_path / "runs/CliffCart-v0/mbhi/seed0/dynamics.safetensors").exists()
    assert main(["mbhi", "compare", "--no-run", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "| CliffCart-v0 | mbhi |" in text
    for name in ("comparison.json", "summary.csv", "curves.csv", "CliffCart-v0.png"):
        assert (tmp_path / "runs" / name).stat().st_size > 0
    data = json.loads((tmp_path / "runs/comparison.json").read_text())
    assert {r["method"] for r in data["summary"]} == {"none", "shaping", "hirl", "mbhi"}
    assert "CliffCart-v0/mbhi/seed0" in data["curves"]
    header = (tmp_path / "runs/curves.csv").read_text().splitlines()[0]
    assert header == "env,method,seed,step,catastrophes,labels,return"
    assert len(load_results(out)) == 4
    assert set(compare(out)["targets"]) == {"molma/CliffCart-v0"}


def test_cli_reports_config_errors(tmp_path, capsys) -> None:
    code = main(["mbhi", "run", "--out", str(tmp_path), "--steps", "10", "blocker.size=3"])
    assert code == 2 and "unknown key" in capsys.readouterr().err
    assert main(["mbhi", "compare", "--no-run", "--out", str(tmp_path / "empty")]) == 2


def test_target_check_logic() -> None:
    def row(method, cat, ret):
        return {"env": "e", "method": method, "catastrophes_mean": cat, "final_return_mean": ret}

    rows = [row("none", 50, 90), row("shaping", 40, 92), row("hirl", 10, 91), row("mbhi", 3, 85)]
    t = check_targets(rows)["e"]
    assert t["met"] and t["return_floor"] == pytest.approx(82.8)
    rows[-1] = row("mbhi", 3, 80)
    assert not check_targets(rows)["e"]["met"]
    rows[-1] = row("mbhi", 10, 91)
    assert not check_targets(rows)["e"]["fewer_catastrophes_than"]["hirl"]


def test_t_interval_and_sample_efficiency_metrics() -> None:
    ci = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert ci["mean"] == 3.0 and ci["n"] == 5
    assert ci["hi"] - 3.0 == pytest.approx(2.776 * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5))
    assert np.isnan(t_interval([7.0])["lo"]) and t_interval([None, float("nan")])["n"] == 0
    episodes = [{"end_step": 100 * (i + 1), "return": float(i), "length": 100, "catastrophe": False,
                 "success": False} for i in range(10)]
    r = RunResult("e", "m", 0, [200, 400, 600, 800, 1000], [0] * 5, [0] * 5, episodes, {}, {})
    assert steps_to_threshold(r, 2.0, window=2) == 400  # episodes ending at 300, 400 -> mean 2.5
    assert steps_to_threshold(r, 100.0) is None
    assert return_auc(r, window=1) == pytest.approx(np.mean([1, 3, 5, 7, 9]))


def test_variant_names_name_the_result_folder(tmp_path) -> None:
    code = main(["mbhi", "run", "--env", "molma/CliffCart-v0", "--method", "mbhi", "--name", "mbhi_h1",
                 "--seeds", "0", "--steps", "120", "--out", str(tmp_path), *_overrides(),
                 "lookahead.horizon=1"])
    assert code == 0
    r = load_results(tmp_path)[0]
    assert r.method == "mbhi_h1" and r.config["method"] == "mbhi" and r.config["lookahead"]["horizon"] == 1


def test_nan_summaries_are_saved_as_null(tmp_path) -> None:
    cfg = from_dict(RunConfig, {**TINY, "method": "none", "total_steps": 60, "eval_episodes": 0})
    r = run_experiment(cfg)
    assert np.isnan(r.summary["final_return"])
    path = r.save(tmp_path / "r.json")
    assert json.loads(path.read_text())["summary"]["final_return"] is None


@pytest.mark.slow
def test_mbhi_avoids_non_local_catastrophes_that_hirl_suffers() -> None:
    """End to end on CliffCart (one seed, 5000 steps): MBHI crashes far less often than HIRL."""
    results = {}
    for method in ("hirl", "mbhi"):
        cfg = from_dict(RunConfig, {"env": "molma/CliffCart-v0", "method": method, "seed": 0,
                                    "total_steps": 5000, "eval_episodes": 3})
        results[method] = run_experiment(cfg).summary
    assert results["mbhi"]["catastrophes"] * 3 < results["hirl"]["catastrophes"]
    assert results["mbhi"]["final_return"] > 0.9 * results["hirl"]["final_return"]
