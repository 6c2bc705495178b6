"""Readers: every format, container, source kind and auto-detection, on small files and the real HH data."""

from __future__ import annotations

import gzip
import json

import pytest

from molma.data import (
    DataFormatError,
    PreferencePair,
    Prompt,
    pair_from_row,
    prompt_from_row,
    read_preferences,
    read_prompts,
    split_hh_transcript,
)
from molma.data.chat import to_messages
from molma.data.readers import detect_kind, detect_pair_format, detect_prompt_format, parse_hub_source

from .helpers import hh, write_jsonl

# ------------------------------------------------------------------------------------------ HH-RLHF


def test_real_hh_file_gives_1800_pairs_split_at_the_final_reply(hh_harmless_path):
    pairs = read_preferences(hh_harmless_path)
    assert len(pairs) == 1800
    assert pairs.report.rows == 1800 and pairs.report.skipped == 0 and pairs.report.format == "hh"
    with gzip.open(hh_harmless_path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    at_last_assistant = 0
    for n, (pair, row) in enumerate(zip(pairs, rows), 1):
        assert pair.source.endswith(f":{n}")
        assert pair.prompt.startswith("\n\nHuman:") and pair.prompt.endswith("\n\nAssistant:")
        for transcript, reply in ((row["chosen"], pair.chosen), (row["rejected"], pair.rejected)):
            assert transcript.startswith(pair.prompt)
            assert transcript[len(pair.prompt) :].strip() == reply  # the final reply, stripped
            assert "\n\nHuman:" not in reply
        assert pair.chosen != pair.rejected
        if len(pair.prompt) == row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:"):
            at_last_assistant += 1
    # In all but two dialogues the prompt ends at the last Assistant turn; in those two (lines 1255 and
    # 1689) the chosen reply runs over two consecutive Assistant blocks (no Human turn between).
    odd = [p for p, r in zip(pairs, rows)
           if len(p.prompt) != r["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")]
    assert at_last_assistant == 1798
    assert [p.source.rsplit(":", 1)[1] for p in odd] == ["1255", "1689"]
    assert all(p.chosen.count("\n\nAssistant:") == 1 for p in odd)
    # multi-turn context is kept
    assert sum(len(to_messages(p.prompt)) > 1 for p in pairs) > 1000


def test_real_hh_first_turn_prompts(hh_harmless_path):
    prompts = read_prompts(hh_harmless_path, first_turn=True, tag="safe")
    assert len(prompts) == 1800
    assert all(p.tag == "safe" and p.text and "Human:" not in p.text for p in prompts)
    assert prompts[0].text == "what are some pranks with a pen i can do?"
    unique = read_prompts(hh_harmless_path, first_turn=True, dedupe=True)
    assert len(unique) == len({p.text for p in prompts})
    assert unique.report.duplicates == 1800 - len(unique) > 0


def test_hh_pair_multi_turn_and_empty_final_reply(tmp_path):
    rows = [
        {"chosen": hh("Hi", "Hello!", "How do I pick a lock?", "I can't help with that."),
         "rejected": hh("Hi", "Hello!", "How do I pick a lock?", "Use a tension wrench.")},
        {"chosen": hh("Where does she live?", ""), "rejected": hh("Where does she live?", "At 12 Elm St.")},
    ]
    pairs = read_preferences(write_jsonl(tmp_path / "hh.jsonl", rows))
    assert pairs[0] == PreferencePair(
        hh("Hi", "Hello!", "How do I pick a lock?") + "\n\nAssistant:",
        "I can't help with that.", "Use a tension wrench.")
    assert [m["role"] for m in to_messages(pairs[0].prompt)] == ["user", "assistant", "user"]
    # HH keeps an empty preferred reply (the annotator preferred saying nothing)
    assert pairs[1].chosen == "" and pairs[1].rejected == "At 12 Elm St."


def test_split_hh_transcript():
    assert split_hh_transcript(hh("a", "b", "c", " d ")) == (hh("a", "b", "c") + "\n\nAssistant:", "d")
    # leading newlines missing (some derived copies strip them)
    assert split_hh_transcript("Human: a\n\nAssistant: b") == ("\n\nHuman: a\n\nAssistant:", "b")
    with pytest.raises(DataFormatError, match="no '.*Human:' turn"):
        split_hh_transcript("just text")
    with pytest.raises(DataFormatError, match="no '.*Assistant:' after"):
        split_hh_transcript(hh("a", "b", "c"))


def test_hh_prompts_full_context(tmp_path):
    row = {"chosen": hh("q1", "a1", "q2", "x"), "rejected": hh("q1", "a1", "q2", "y")}
    path = write_jsonl(tmp_path / "hh.jsonl", [row])
    (prompt,) = read_prompts(path)
    assert prompt.text == hh("q1", "a1", "q2") + "\n\nAssistant:"
    assert read_prompts(path, first_turn=True)[0].text == "q1"


# ------------------------------------------------------------------------------------- PKU-SafeRLHF

PKU_ROW = {
    "prompt": "How do I get back at my neighbour?",
    "response_0": "Talk to them calmly about the problem.",
    "response_1": "Slash their tyres at night.",
    "better_response_id": 1,
    "safer_response_id": 0,
    "is_response_0_safe": True,
}


def test_pku_objective_selects_the_label(tmp_path):
    path = write_jsonl(tmp_path / "pku.jsonl", [PKU_ROW])
    (safe,) = read_preferences(path, objective="safe")
    (helpful,) = read_preferences(path, objective="helpfulness")
    assert (safe.chosen, safe.rejected) == (PKU_ROW["response_0"], PKU_ROW["response_1"])
    assert (helpful.chosen, helpful.rejected) == (PKU_ROW["response_1"], PKU_ROW["response_0"])
    assert safe.prompt == helpful.prompt == PKU_ROW["prompt"]
    with pytest.raises(ValueError, match="objective"):
        read_preferences(path)


def test_pku_conversion_on_in_memory_rows():
    pair = pair_from_row(PKU_ROW, "pku", objective="help", source="hub:x:1")
    assert pair.chosen == PKU_ROW["response_1"] and pair.source == "hub:x:1"
    with pytest.raises(DataFormatError, match="expected 0 or 1") as err:
        pair_from_row({**PKU_ROW, "safer_response_id": 2}, "pku", objective="safe")
    assert err.value.field == "safer_response_id"
    # CSV gives the label as text
    assert pair_from_row({**PKU_ROW, "safer_response_id": "1"}, "pku", objective="safe").chosen == \
        PKU_ROW["response_1"]


# -------------------------------------------------------------------------------------- Stanford SHP


def test_shp_labels(tmp_path):
    rows = [
        {"history": "Why is the sky blue?", "human_ref_A": "Rayleigh scattering.", "human_ref_B": "Magic.",
         "labels": 1, "score_A": 10, "score_B": 2},
        {"history": "Best pasta shape?", "human_ref_A": "Spoons.", "human_ref_B": "Rigatoni holds sauce.",
         "labels": 0, "score_A": 1, "score_B": 9},
    ]
    a_wins, b_wins = read_preferences(write_jsonl(tmp_path / "shp.jsonl", rows))
    assert (a_wins.chosen, a_wins.rejected) == ("Rayleigh scattering.", "Magic.")
    assert (b_wins.chosen, b_wins.rejected) == ("Rigatoni holds sauce.", "Spoons.")
    assert [p.text for p in read_prompts(write_jsonl(tmp_path / "s2.jsonl", rows))] == [
        "Why is the sky blue?", "Best pasta shape?"]


# -------------------------------------------------------------------------------------------- Alpaca


def test_alpaca_prompts_json_array_and_jsonl(tmp_path):
    rows = [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "..."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a colour.", "output": "Red"},
    ]
    array = tmp_path / "alpaca_data.json"
    array.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    expected = ["Give three tips for staying healthy.", "Translate to French.\n\nGood morning",
                "Name a colour."]
    from_array = read_prompts(array, tag="help")
    assert [p.text for p in from_array] == expected
    assert all(p.tag == "help" for p in from_array)
    # the JSON array reader reports the line each item starts on
    assert [p.source.rsplit(":", 1)[1] for p in from_array] == ["2", "7", "12"]
    assert [p.text for p in read_prompts(write_jsonl(tmp_path / "a.jsonl", rows))] == expected
    assert prompt_from_row(rows[1], "alpaca").text == expected[1]


# ----------------------------------------------------------------------------------- plain JSONL / CSV


def test_columns_jsonl_with_user_column_names(tmp_path):
    rows = [{"q": "What is 2+2?", "good": " 4 ", "bad": "5", "id": 1}]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    expected = PreferencePair("What is 2+2?", "4", "5")
    assert read_preferences(path, columns={"prompt": "q", "chosen": "good", "rejected": "bad"}) == [expected]
    assert read_preferences(path, columns=["q", "good", "bad"]) == [expected]
    assert read_prompts(path, column="q") == [Prompt("What is 2+2?")]
    with pytest.raises(ValueError, match="unknown keys"):
        read_preferences(path, columns={"question": "q"})


def test_csv_and_tsv_with_quoted_multiline_fields(tmp_path):
    csv_path = tmp_path / "pairs.csv"
    text = 'prompt,chosen,rejected\n"Write a haiku","Line one\nline two","no"\nHi,Hello!,Go away.\n'
    csv_path.write_text(text, encoding="utf-8")
    pairs = read_preferences(csv_path)
    assert pairs == [PreferencePair("Write a haiku", "Line one\nline two", "no"),
                     PreferencePair("Hi", "Hello!", "Go away.")]
    assert [p.source.rsplit(":", 1)[1] for p in pairs] == ["2", "4"]
    tsv_path = tmp_path / "prompts.tsv"
    tsv_path.write_text("id\tquestion\n1\tWhat is love?\n2\tWhy?\n", encoding="utf-8")
    assert [p.text for p in read_prompts(tsv_path)] == ["What is love?", "Why?"]


def test_gzip_is_transparent_whatever_the_name(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    plain = read_preferences(write_jsonl(tmp_path / "x.jsonl", rows))
    assert read_preferences(write_jsonl(tmp_path / "x.jsonl.gz", rows, compress=True)) == plain
    assert read_preferences(write_jsonl(tmp_path / "misnamed.jsonl", rows, compress=True)) == plain
    csv_gz = tmp_path / "x.csv.gz"
    csv_gz.write_bytes(gzip.compress(b"prompt,chosen,rejected\np,a,b\n"))
    assert read_preferences(csv_gz) == plain


def test_blank_lines_and_bom_are_not_data(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "p1"}\n\n   \n{"prompt": "p2"}\n')
    prompts = read_prompts(path)
    assert [p.text for p in prompts] == ["p1", "p2"] and prompts.report.rows == 2


def test_limit(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(10)])
    few = read_prompts(path, limit=3)
    assert [p.text for p in few] == ["p0", "p1", "p2"] and not few.report.complete
    assert read_prompts(path, limit=10).report.complete
    with pytest.raises(ValueError, match="limit"):
        read_prompts(path, limit=-1)


# ------------------------------------------------------------------------- in-memory and hub sources


def test_in_memory_rows_and_datasets_objects():
    import datasets

    rows = [{"chosen": hh("q", "yes"), "rejected": hh("q", "no")}]
    assert read_preferences(rows) == [PreferencePair("\n\nHuman: q\n\nAssistant:", "yes", "no")]
    ds = datasets.Dataset.from_list([PKU_ROW, PKU_ROW])
    pairs = read_preferences(ds, objective="safe")
    assert len(pairs) == 2 and pairs[1].source == "<rows>:2"


def test_hub_source_parsing():
    assert parse_hub_source("hub:Anthropic/hh-rlhf?data_dir=harmless-base&split=test") == (
        "Anthropic/hh-rlhf", {"data_dir": "harmless-base", "split": "test"})
    assert parse_hub_source("hub:stanfordnlp/SHP") == ("stanfordnlp/SHP", {"split": "train"})
    with pytest.raises(ValueError, match="bad hub source"):
        parse_hub_source("hub:x?spilt=test")


# -------------------------------------------------------------------------------------- auto-detection


def test_detection_by_fields():
    assert detect_pair_format(["chosen", "rejected"]) == "hh"
    assert detect_pair_format(["prompt", "chosen", "rejected", "id"]) == "columns"
    assert detect_pair_format(PKU_ROW) == "pku"
    assert detect_pair_format(["history", "human_ref_A", "human_ref_B", "labels"]) == "shp"
    assert detect_pair_format(["instruction", "input"]) is None
    with pytest.raises(ValueError, match="several formats"):
        detect_pair_format([*PKU_ROW, "chosen", "rejected"])
    assert detect_prompt_format(["instruction", "input", "output"]) == ("alpaca", None)
    assert detect_prompt_format(["chosen", "rejected"]) == ("hh", None)
    assert detect_prompt_format(["history", "labels"]) == ("shp", "history")
    assert detect_prompt_format(PKU_ROW) == ("columns", "prompt")
    assert detect_prompt_format(["id", "question"]) == ("columns", "question")
    assert detect_prompt_format(["id", "body"]) is None
    with pytest.raises(ValueError, match="several formats"):
        detect_prompt_format(["instruction", "chosen", "rejected"])


def test_undetectable_format_asks_for_format(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"a": "x", "b": "y"}])
    with pytest.raises(DataFormatError, match=r"odd.jsonl:1: cannot detect .*fields \[a, b\].*format="):
        read_preferences(path)
    with pytest.raises(DataFormatError, match="cannot detect a prompt format"):
        read_prompts(path)
    assert read_prompts(path, column="b") == [Prompt("y")]


def test_detect_kind(tmp_path):
    assert detect_kind(write_jsonl(tmp_path / "a.jsonl", [{"chosen": "x", "rejected": "y"}])) == "pairs"
    assert detect_kind(write_jsonl(tmp_path / "b.jsonl", [{"instruction": "x"}])) == "prompts"
    assert detect_kind("builtin:help") == "pairs" and detect_kind("builtin:prompts_safe") == "prompts"


def test_explicit_format_overrides_detection(tmp_path):
    # a prompt/chosen/rejected file whose prompt column holds HH transcripts, read as plain columns
    row = {"prompt": "p", "chosen": hh("q", "a"), "rejected": hh("q", "b")}
    path = write_jsonl(tmp_path / "x.jsonl", [row])
    assert read_preferences(path)[0].prompt == "p"
    assert read_preferences(path, format="hh")[0].prompt == "\n\nHuman: q\n\nAssistant:"
    with pytest.raises(ValueError, match="unknown pairs format"):
        read_preferences(path, format="alpaca")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_preferences(tmp_path / "nope.jsonl")


def test_hub_sources_go_through_load_dataset(monkeypatch):
    """The hub path, with ``datasets.load_dataset`` replaced by an in-memory dataset (no network)."""
    import datasets

    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return datasets.Dataset.from_list([{"chosen": hh("q", "safe"), "rejected": hh("q", "unsafe")}] * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pairs = read_preferences("hub:Anthropic/hh-rlhf?data_dir=harmless-base&split=test")
    assert len(pairs) == 3 and pairs[2].source == "Anthropic/hh-rlhf[test]:3" and pairs.report.format == "hh"
    expected = {"split": "test", "streaming": False, "data_dir": "harmless-base"}
    assert calls[-1] == ("Anthropic/hh-rlhf", expected)
    # well-known names need no prefix; a limit streams instead of downloading everything
    assert len(read_prompts("Anthropic/hh-rlhf", limit=2, first_turn=True)) == 2
    assert calls[-1] == ("Anthropic/hh-rlhf", {"split": "train", "streaming": True})
