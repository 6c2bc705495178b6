"""Data specs and the checks on preference pairs before training (bad data gives clear errors)."""

from __future__ import annotations

import json

import pytest

from molma.data import DataFormatError
from molma.data.records import PreferencePair
from molma.rewards import RewardTrainConfig, data_label, load_pairs, parse_data_spec, train_reward_model
from molma.rewards import validate_pairs as check


def pair(prompt="Q?", chosen="good answer", rejected="bad answer", source=""):
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, source=source)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (pair(chosen=None), r"field 'chosen': missing"),
        (pair(rejected=None), r"field 'rejected': missing"),
        (pair(chosen="   "), r"field 'chosen': empty text"),
        (pair(prompt=""), r"field 'prompt': empty text"),
        (pair(rejected=3), r"field 'rejected': expected text, got int"),
        (pair(chosen="same", rejected=" same "), r"field 'rejected': identical to 'chosen'"),
    ],
)
def test_bad_pairs_raise_naming_the_pair_and_field(bad, message):
    with pytest.raises(DataFormatError, match=r"mine\[1\]: " + message):
        check([pair(), bad], where="mine")


def test_bad_pair_error_names_its_source_line():
    with pytest.raises(DataFormatError, match=r"data.jsonl:7: field 'chosen': empty text"):
        check([pair(chosen="", source="data.jsonl:7")])


def test_skip_invalid_drops_and_counts():
    valid, skipped = check([pair(), pair(chosen=""), pair(rejected="good answer"), pair()], skip_invalid=True)
    assert len(valid) == 2 and skipped == 2
    with pytest.raises(ValueError, match="no valid preference pairs"):
        check([pair(chosen="")], skip_invalid=True)


def test_training_stops_on_bad_data_before_loading_a_model(tmp_path):
    config = RewardTrainConfig(base=str(tmp_path / "never-loaded"), output_dir=str(tmp_path / "out"))
    with pytest.raises(DataFormatError, match=r"<pairs>\[2\]: field 'rejected': identical"):
        train_reward_model(config, pairs=[pair(), pair(), pair(rejected="good answer")])
    assert not (tmp_path / "out").exists()


def test_bad_rows_in_a_file_name_file_line_and_field(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataFormatError, match=r"prefs.jsonl:2: field 'rejected': missing"):
        load_pairs(str(path))
    assert len(load_pairs(str(path), skip_invalid=True)) == 1


def test_data_specs_parse_slices_and_objectives(tmp_path):
    assert parse_data_spec("x.jsonl") == ("x.jsonl", None, None)
    assert parse_data_spec("x.jsonl[10:20]") == ("x.jsonl", None, slice(10, 20))
    assert parse_data_spec("pku.jsonl@safety[:5]") == ("pku.jsonl", "safe", slice(None, 5))
    assert parse_data_spec("me@example.jsonl") == ("me@example.jsonl", None, None)
    odd = tmp_path / "odd[1:2]"
    odd.write_text("")
    assert parse_data_spec(str(odd)) == (str(odd), None, None)
    assert data_label("/a/b/hh.jsonl.gz[1500:]") == "hh[1500:]"
    assert data_label("builtin:safe") == "builtin:safe"


def test_load_pairs_slices_and_resolves_builtin(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}"}) + "\n"
                            for i in range(10)))
    assert [p.prompt for p in load_pairs(f"{path}[7:]")] == ["q7", "q8", "q9"]
    assert [p.prompt for p in load_pairs(f"{path}[2:4]")] == ["q2", "q3"]
    assert [p.prompt for p in load_pairs(f"{path}[-2:]", limit=1)] == ["q8"]
    safe = load_pairs("builtin", objective="safety")
    assert len(safe) > 100 and safe == load_pairs("builtin:safe")
    with pytest.raises(ValueError, match="builtin:help or builtin:safe"):
        load_pairs("builtin", objective="honesty")
    with pytest.raises(ValueError, match="no preference pairs"):
        load_pairs(f"{path}[20:]")


def test_hh_file_reads_into_prompt_and_final_replies(hh_harmless_path):
    pairs = load_pairs(f"{hh_harmless_path}[1795:]")
    assert len(pairs) == 5
    for p in pairs:
        assert p.prompt.rstrip().endswith("Assistant:") and "\n\nHuman:" not in p.chosen
