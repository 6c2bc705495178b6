"""``molma rm eval`` marks the pairs a reward model was trained on (from the saved hashes, or rebuilt from
``molma_rm.json`` for older checkpoints), reports the accuracy on the other pairs or leaves the training
pairs out, and averages real and builtin sets apart."""

from __future__ import annotations

import json

import pytest

from molma.cli.main import main
from molma.data import load_builtin_preferences
from molma.rewards import RewardTrainConfig, evaluate_many, format_table, train_reward_model
from molma.rewards.data import TRAINING_PAIRS_FILE
from molma.rewards.evaluate import training_keys
from tests.rewards.toy import save_tiny_base, toy_pairs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("overlap")
    base = save_tiny_base(root / "base", seed=0, num_layers=2)
    config = RewardTrainConfig(objective="safe", data="builtin", base=str(base), output_dir=str(root / "rm-safe"),
                               batch_size=32, epochs=1.0, learning_rate=1e-3, max_length=96, eval_fraction=0.1,
                               logging_steps=50)
    rm = train_reward_model(config)
    real = root / "real.jsonl"
    real.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in toy_pairs(12, seed=3)))
    return root, rm, real


def test_training_pairs_are_marked_and_sets_kept_apart(setup, capsys):
    root, rm, real = setup
    n_builtin = len(load_builtin_preferences("safe"))
    n_train = json.loads((rm / "molma_rm.json").read_text())["counts"]["train_pairs"]
    assert 0 < n_train < n_builtin
    code = main(["rm", "eval", "--model", str(rm), "--model", "rule:length", "--data", "builtin:safe",
                 "--data", str(real), "--out", str(root / "eval")])
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("model"))
    assert header.split()[-4:] == ["Avg", "real", "Avg", "builtin"]
    rm_line = next(line for line in out.splitlines() if line.startswith("rm-safe"))
    assert "*" in rm_line.split()[1]  # the builtin:safe cell
    assert (f"* rm-safe on builtin:safe: {n_train} of {n_builtin} pairs are training pairs of the model; "
            f"accuracy on the other {n_builtin - n_train}:") in out
    assert "real and builtin sets are averaged apart" in out
    rows = json.loads((root / "eval" / "results.json").read_text())
    builtin_row = next(r for r in rows if r["model"] == "rm-safe" and r["data"] == "builtin:safe")
    assert builtin_row["train_overlap"]["pairs"] == n_train and builtin_row["train_overlap"]["of"] == n_builtin
    assert builtin_row["train_overlap"]["source"] == TRAINING_PAIRS_FILE
    assert builtin_row["unseen"]["n"] == n_builtin - n_train and builtin_row["n"] == n_builtin
    real_row = next(r for r in rows if r["model"] == "rm-safe" and r["data"] == "real")
    assert real_row["train_overlap"]["pairs"] == 0
    assert all("train_overlap" not in r for r in rows if r["model"] == "rule:length")


def test_exclude_train_scores_only_the_other_pairs(setup):
    _, rm, real = setup
    rows = evaluate_many([str(rm)], ["builtin:safe"], exclude_train=True)
    n_train = json.loads((rm / "molma_rm.json").read_text())["counts"]["train_pairs"]
    assert rows[0]["n"] == len(load_builtin_preferences("safe")) - n_train
    assert rows[0]["train_overlap"]["excluded"] is True
    assert "were left out" in format_table(rows)


def test_older_checkpoints_rebuild_their_training_split(setup, tmp_path):
    import shutil

    _, rm, _ = setup
    old = tmp_path / "rm-old"
    shutil.copytree(rm, old)
    (old / TRAINING_PAIRS_FILE).unlink()
    saved, rebuilt = training_keys(rm), training_keys(old)
    assert rebuilt[2] == "rebuilt from molma_rm.json"
    assert rebuilt[0] == saved[0] and rebuilt[1] == saved[1]
    # trained on in-memory pairs: unknown, marked '?'
    meta = json.loads((old / "molma_rm.json").read_text())
    meta["data"] = "<pairs>"
    (old / "molma_rm.json").write_text(json.dumps(meta))
    assert training_keys(old) is None
    rows = evaluate_many([str(old)], ["builtin:safe"], limit=10)
    assert rows[0]["train_overlap"] is None and "unseen" not in rows[0]
    table = format_table(rows)
    assert "?" in table.splitlines()[2] and "training pairs are unknown" in table


def test_table_of_rows_without_overlap_information():
    """Rows as molma.experiment builds them (labels only, no overlap): real and builtin averaged apart."""
    stats = {"n": 10, "correct": 8, "ties": 0, "incorrect": 2}
    rows = [{"model": "RMsafe", "data": "builtin-safe (held out)", "accuracy": 0.9, **stats},
            {"model": "RMsafe", "data": "HH-RLHF harmless (validation dialogues)", "accuracy": 0.6, **stats},
            {"model": "RMhelp", "data": "builtin-help (held out)", "accuracy": 0.8, **stats}]
    table = format_table(rows).splitlines()
    assert table[0].split()[-4:] == ["Avg", "real", "Avg", "builtin"]
    assert table[2].split()[-2:] == ["60.0", "90.0"] and table[3].split()[-2:] == ["-", "80.0"]
    single = format_table(rows[:1]).splitlines()
    assert single[0].split()[-1] == "Avg" and single[2].split()[-1] == "90.0"
