"""``molma data inspect``: statistics, examples, every error, exit codes."""

from __future__ import annotations

import json

from molma.cli.main import main

from .helpers import hh, write_jsonl


def test_inspect_pairs_reports_stats_and_all_errors(tmp_path, capsys):
    rows = [
        {"chosen": hh("q1", "a1", "q2", "good"), "rejected": hh("q1", "a1", "q2", "bad!")},
        {"chosen": hh("hello", "hi there"), "rejected": hh("hello", "go")},
        "{broken",
        {"chosen": hh("x", "same"), "rejected": hh("x", "same")},
        {"chosen": 7, "rejected": hh("x", "y")},
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    code = main(["data", "inspect", str(path), "-n", "1"])
    out = capsys.readouterr().out
    assert code == 1  # invalid rows found
    assert "2 valid of 5 rows; 3 invalid" in out and "kind:     pairs (format hh)" in out
    assert "multi-turn 1 (50.0%)" in out
    assert "chosen    mean      6.0   min      4   max      8" in out  # "good", "hi there"
    assert out.count("--- record") == 1 and '"good"' in out
    for line in (3, 4, 5):
        assert f"hh.jsonl:{line}: " in out
    assert "field 'rejected': identical to 'chosen'" in out and "field 'chosen': expected text" in out


def test_inspect_json_and_prompts(tmp_path, capsys):
    rows = [{"instruction": "Do X", "input": "with Y"}, {"instruction": "Z"}]
    path = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    assert main(["data", "inspect", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "prompts" and result["format"] == "alpaca" and result["records"] == 2
    assert result["lengths"]["prompt"] == {"mean": 6.5, "min": 1, "max": 12}  # "Do X\n\nwith Y", "Z"
    assert result["errors"] == [] and result["examples"][0]["text"] == "Do X\n\nwith Y"


def test_inspect_csv_columns_and_pku_objective(tmp_path, capsys):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("q,good,bad\nWhy?,Because.,No.\n", encoding="utf-8")
    assert main(["data", "inspect", str(csv_path), "--columns", "q,good,bad", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"][0]["chosen"] == "Because."
    pku = write_jsonl(tmp_path / "pku.jsonl", [{"prompt": "p", "response_0": "a", "response_1": "b",
                                                "better_response_id": 1, "safer_response_id": 0}])
    assert main(["data", "inspect", str(pku), "--objective", "help", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"][0]["chosen"] == "b"


def test_inspect_source_level_errors_exit_2(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "missing.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err
    pku = write_jsonl(tmp_path / "pku.jsonl", [{"prompt": "p", "response_0": "a", "response_1": "b",
                                                "safer_response_id": 0}])
    assert main(["data", "inspect", str(pku)]) == 2
    assert "objective" in capsys.readouterr().err
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("a,b\n1,2\n", encoding="utf-8")
    assert main(["data", "inspect", str(csv_path), "--column", "text"]) == 2
    assert "x.csv:1: field 'text': column not in the header" in capsys.readouterr().err


def test_inspect_real_hh_file(hh_harmless_path, capsys):
    # four dialogues have an empty preferred reply: invalid for a reward model, as `molma rm train` says
    assert main(["data", "inspect", str(hh_harmless_path)]) == 1
    out = capsys.readouterr().out
    assert "1796 valid of 1800 rows; 4 invalid" in out
    assert f"{hh_harmless_path}:87: field 'chosen': empty text" in out and "skip_invalid=true" in out
    assert main(["data", "inspect", str(hh_harmless_path), "--first-turn", "--json", "-n", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "prompts" and result["records"] == 1800 and result["multi_turn"] == 0
