"""``molma rm train`` / ``molma rm eval`` end to end on a tiny model."""

from __future__ import annotations

import csv
import json

import pytest

from molma.cli.main import main
from tests.rewards.toy import save_tiny_base, toy_pairs


def write_pairs(path, pairs):
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    base = save_tiny_base(root / "base", seed=1)
    data = write_pairs(root / "toy.jsonl", toy_pairs(40, seed=7))
    (root / "rm.yaml").write_text("batch_size: 8\nmax_length: 64\nlogging_steps: 2\n")
    code = main(["rm", "train", "--objective", "toy", "--data", f"{data}[:32]", "--base", str(base),
                 "--config", str(root / "rm.yaml"), "-o", str(root / "rm-toy"), "epochs=2",
                 "learning_rate=3e-3", "eval_fraction=0.25"])
    return root, code


def test_train_writes_a_checkpoint_with_metadata(cli_run, capsys):
    root, code = cli_run
    assert code == 0
    meta = json.loads((root / "rm-toy" / "molma_rm.json").read_text())
    assert meta["counts"]["pairs_read"] == 32 and meta["counts"]["eval_pairs"] == 8
    assert meta["config"]["batch_size"] == 8 and meta["config"]["epochs"] == 2.0
    assert meta["data"].endswith("toy.jsonl[:32]")


def test_eval_prints_a_table_and_writes_csv_and_json(cli_run, capsys):
    root, _ = cli_run
    data = root / "toy.jsonl"
    code = main(["rm", "eval", "--model", str(root / "rm-toy"), "--model", "rule:length",
                 "--data", f"{data}[32:]", "--data", "builtin:safe", "--limit", "20",
                 "--out", str(root / "eval")])
    out = capsys.readouterr().out
    assert code == 0
    assert "toy[32:]" in out and "builtin:safe" in out and "Avg" in out and "rule:length" in out
    rows = list(csv.DictReader((root / "eval" / "results.csv").open()))
    assert [(r["model"], r["data"]) for r in rows] == [
        ("rm-toy", "toy[32:]"), ("rm-toy", "builtin:safe"), ("rule:length", "toy[32:]"),
        ("rule:length", "builtin:safe")]
    assert rows[0]["n"] == "8" and rows[1]["n"] == "20"
    assert {"chosen_mean", "rejected_q50", "margin_std", "ties", "loss"} <= set(rows[0])
    full = json.loads((root / "eval" / "results.json").read_text())
    assert full[0]["accuracy"] == pytest.approx(float(rows[0]["accuracy"]))
    assert full[0]["correct"] + full[0]["ties"] + full[0]["incorrect"] == full[0]["n"]


def test_bad_data_exits_2_naming_file_line_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                   '{"prompt": "a", "chosen": "", "rejected": "c"}\n')
    code = main(["rm", "train", "--data", str(bad), "--base", str(tmp_path / "unused"),
                 "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.jsonl:2: field 'chosen': empty text" in err
    code = main(["rm", "eval", "--model", "rule:length", "--data", str(bad)])
    assert code == 2 and "bad.jsonl:2" in capsys.readouterr().err


def test_bad_config_value_exits_2(tmp_path, capsys):
    code = main(["rm", "train", "--data", "builtin", "learning_rate=-1", "-o", str(tmp_path / "o")])
    assert code == 2 and "learning_rate must be > 0" in capsys.readouterr().err
