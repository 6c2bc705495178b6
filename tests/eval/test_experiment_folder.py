"""The README's CLI tour into one experiment folder, on tiny models: reward models, their Table 2, an RL
run, an SO-weighted sweep and a P-GAPO sweep, evaluation (which adds the sweep runs and writes the sweep
files) and the report, with no part "not run"."""

from __future__ import annotations

import json
import re

import pytest

from molma.cli.main import main
from tests.conftest import REPO_ROOT
from tests.rewards.toy import save_tiny_base

RM_FAST = ["batch_size=32", "epochs=1", "learning_rate=1e-3", "max_length=96", "logging_steps=50",
           "eval_fraction=0.1", "precision=fp32"]


def rl_fast(policy):
    return [f"model={policy}", "iterations=2", "experience_size=4", "minibatch_size=4", "max_new_tokens=4",
            "critic_backbone=frozen", "progress=false", "save_every=0", "precision=fp32", "lr=1e-3",
            "report_to=none"]


def tour(policy, exp):
    """The README tour's steps (same commands and folder layout), with tiny-model settings."""
    rm = [f"objectives.help={exp}/rm/help", f"objectives.safe={exp}/rm/safe"]
    return [
        ["rm", "train", "--objective", "help", "--data", "builtin", "--base", str(policy), "--out",
         f"{exp}/rm/help", *RM_FAST],
        ["rm", "train", "--objective", "safe", "--data", "builtin", "--base", str(policy), "--out",
         f"{exp}/rm/safe", *RM_FAST],
        ["rm", "eval", "--model", f"{exp}/rm/help", "--model", f"{exp}/rm/safe", "--data", "builtin:help",
         "--data", "builtin:safe", "--limit", "16", "--out", f"{exp}/rm"],
        ["train", "--algo", "molma", "--out", f"{exp}/runs/molma", *rl_fast(policy), *rm],
        ["sweep", "--algo", "so-weighted", "--weights", "0.2,0.8", "--out", str(exp), *rl_fast(policy), *rm],
        ["sweep", "--algo", "pgapo", "--weights", "0.3,0.7", "--out", str(exp), *rl_fast(policy), *rm],
        ["eval", "--models", f"ref={policy},molma={exp}/runs/molma/final", "--prompts", f"heldout:{exp}/runs/molma",
         "--n-prompts", "6", "--max-new-tokens", "4", "--rm", f"help={exp}/rm/help", "--rm",
         f"safe={exp}/rm/safe", "--kl-reference", "ref", "--no-progress", "--out", f"{exp}/eval"],
        ["report", str(exp)],
    ]


def test_readme_tour_uses_one_experiment_folder():
    """The tour in the README runs the same subcommands into one folder as the test below."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Quick tour: the CLI", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("molma ")]
    steps = [" ".join(c.split()[:3 if c.split()[1] == "rm" else 2]) for c in commands]
    wanted = ["molma rm train", "molma rm train", "molma rm eval", "molma train", "molma sweep", "molma sweep",
              "molma eval", "molma report"]
    it = iter(steps)
    assert all(any(s == w for s in it) for w in wanted), steps  # in this order
    for path in ("exp/rm/help", "exp/rm/safe", "--out exp/rm ", "exp/runs/molma", "--out exp ", "--out exp/eval",
                 "molma report exp"):
        assert path in block + " ", path


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tour_into_one_folder_gives_a_full_report(tmp_path, capsys):
    policy = save_tiny_base(tmp_path / "tiny", seed=0, num_layers=2)
    exp = tmp_path / "exp"
    for argv in tour(policy, exp):
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    manifest = json.loads((exp / "sweeps.json").read_text())
    assert manifest["so-weighted"]["runs"]["so-weighted-w0.2"]["weights"] == [0.2, 0.8]
    assert set(manifest) == {"so-weighted", "pgapo"}
    assert (exp / "sweep" / "so-weighted.json").is_file() and (exp / "pareto" / "pgapo.json").is_file()
    sweep = json.loads((exp / "sweep" / "so-weighted.json").read_text())
    assert [p["label"] for p in sweep["points"]] == ["so-weighted-w0.2", "so-weighted-w0.8"]
    assert sweep["versus"] == "molma" and "win_rates" in sweep["points"][0]
    summary = json.loads((exp / "eval" / "summary.json").read_text())
    assert {"ref", "molma", "so-weighted-w0.2", "pgapo-w0.7"} <= set(summary["models"])
    assert "All parts present." in (exp / "report" / "report.md").read_text()
    assert "not run" not in out.split("report:")[-1]
    assert re.search(r"\d+ tables, \d+ figures\n", out.split("report:")[-1])
