"""Bad input: every kind names file, line and field; skip_invalid skips, counts and reports it."""

from __future__ import annotations

import gzip
import logging
import pickle

import pytest

from molma.data import DataFormatError, read_preferences, read_prompts

from .helpers import hh, write_jsonl

GOOD = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    """Work in tmp_path so that sources are short relative names, as a user would type them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error(source, **kwargs) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        read_preferences(source, **kwargs)
    return info.value


def test_missing_field_message_and_attributes(in_tmp):
    write_jsonl(in_tmp / "data.jsonl", [GOOD] * 16 + [{"prompt": "x", "rejected": "y"}])
    err = _error("data.jsonl")
    assert str(err) == "data.jsonl:17: field 'chosen': missing"
    assert (err.path, err.line, err.field, err.reason) == ("data.jsonl", 17, "chosen", "missing")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.line, again.field) == (str(err), 17, "chosen")


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        ('{"prompt": "x", "chosen": "a", "rejected": "b"', None, "malformed JSON"),
        ('["prompt", "chosen"]', None, "expected a JSON object, got list"),
        ({"prompt": "x", "chosen": "   \n\t", "rejected": "b"}, "chosen", "empty text"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "empty text"),
        ({"prompt": "x", "chosen": 42, "rejected": "b"}, "chosen", "expected text, got number 42"),
        ({"prompt": ["x"], "chosen": "a", "rejected": "b"}, "prompt", "expected text, got list"),
        ({"prompt": "x", "chosen": None, "rejected": "b"}, "chosen", "missing"),
        ({"prompt": "x", "chosen": "same", "rejected": " same "}, "rejected", "identical to 'chosen'"),
    ],
)
def test_bad_jsonl_rows(in_tmp, line, field, reason):
    write_jsonl(in_tmp / "data.jsonl", [GOOD, GOOD, line, GOOD])
    err = _error("data.jsonl")
    assert (err.path, err.line, err.field) == ("data.jsonl", 3, field)
    assert reason in err.reason
    expected_where = "data.jsonl:3: " + (f"field '{field}': " if field else "")
    assert str(err).startswith(expected_where)


def test_undecodable_bytes(in_tmp):
    (in_tmp / "data.jsonl").write_bytes(b'{"prompt": "ok", "chosen": "a", "rejected": "b"}\n'
                                        b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    err = _error("data.jsonl")
    assert err.line == 2 and "not valid UTF-8 (byte 0xe9" in str(err)
    (in_tmp / "data.csv").write_bytes(b"prompt,chosen,rejected\nok,a,b\nok,a,b\n\xff\xfe,a,b\n")
    err = _error("data.csv")
    assert str(err).startswith("data.csv:4: not valid UTF-8 (byte 0xff")
    (in_tmp / "data.json").write_bytes(b'[{"prompt": "ok"},\n {"prompt": "bad \xc3"}]')
    with pytest.raises(DataFormatError, match=r"data.json:2: not valid UTF-8"):
        read_prompts("data.json")


def test_hh_errors(in_tmp):
    differs = {"chosen": hh("q", "a", "follow-up", "x"), "rejected": hh("q", "other", "follow-up", "y")}
    write_jsonl(in_tmp / "hh.jsonl", [differs])
    err = _error("hh.jsonl")
    assert (err.line, err.field) == (1, "rejected") and "dialogue context differs from 'chosen'" in err.reason
    write_jsonl(in_tmp / "hh.jsonl", [{"chosen": hh("q", "a"), "rejected": hh("q", " a")}])
    assert _error("hh.jsonl").reason == "identical to 'chosen'"
    write_jsonl(in_tmp / "hh.jsonl", [{"chosen": "no dialogue here", "rejected": hh("q", "a")}])
    err = _error("hh.jsonl", format="hh")
    assert err.field == "chosen" and "not an HH dialogue" in err.reason
    write_jsonl(in_tmp / "hh.jsonl", [{"chosen": " ", "rejected": hh("q", "a")}])
    assert (err := _error("hh.jsonl")).field == "chosen" and err.reason == "empty text"


def test_pku_and_shp_identical_responses():
    row = {"prompt": "p", "response_0": "same", "response_1": "same", "safer_response_id": 0}
    err = _error([row], objective="safe")
    assert (err.path, err.line, err.field) == ("<rows>", 1, "response_1")
    row = {"history": "h", "human_ref_A": "x", "human_ref_B": "x", "labels": 1}
    assert _error([row]).field == "human_ref_B"
    row = {"history": "h", "human_ref_A": "x", "human_ref_B": "y", "labels": True}
    assert _error([row]).field == "labels"


def test_csv_missing_named_column(in_tmp):
    (in_tmp / "data.csv").write_text("question,good,bad\nq,a,b\n", encoding="utf-8")
    err = _error("data.csv", columns={"prompt": "question", "chosen": "good", "rejected": "worse"})
    assert str(err) == "data.csv:1: field 'worse': column not in the header (columns: question, good, bad)"
    with pytest.raises(DataFormatError, match=r"data.csv:1: field 'text': column not in the header"):
        read_prompts("data.csv", column="text")
    # a missing column is a source-level problem: it is raised even with skip_invalid
    with pytest.raises(DataFormatError, match="column not in the header"):
        read_prompts("data.csv", column="text", skip_invalid=True)


def test_csv_row_problems(in_tmp):
    text = "prompt,chosen,rejected\np,a,b\np,a\np,a,b,extra\np,,b\n"
    (in_tmp / "data.csv").write_text(text, encoding="utf-8")
    pairs = read_preferences("data.csv", skip_invalid=True)
    assert len(pairs) == 1
    assert [str(e) for e in pairs.report.errors] == [
        "data.csv:3: field 'rejected': missing",
        "data.csv:4: row has 4 values, the header has 3 columns",
        "data.csv:5: field 'chosen': empty text",
    ]
    (in_tmp / "dup.csv").write_text("prompt,prompt\nx,y\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="dup.csv:1: field 'prompt': duplicate column"):
        read_prompts("dup.csv")


def test_truncated_gzip_stops_with_an_error(in_tmp):
    data = gzip.compress(("\n".join(f'{{"prompt": "p{i}"}}' for i in range(2000)) + "\n").encode())
    (in_tmp / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="cut.jsonl.gz:.*unreadable data after line"):
        read_prompts("cut.jsonl.gz")
    partial = read_prompts("cut.jsonl.gz", skip_invalid=True)
    assert 0 < len(partial) < 2000 and not partial.report.complete and partial.report.skipped == 1


def test_malformed_json_array_stops_with_an_error(in_tmp):
    (in_tmp / "a.json").write_text('[\n  {"instruction": "x"},\n  {"instruction": "y"\n]', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"a.json:4: malformed JSON"):
        read_prompts("a.json")
    got = read_prompts("a.json", skip_invalid=True)
    assert [p.text for p in got] == ["x"] and not got.report.complete


def test_skip_invalid_counts_reports_and_warns(in_tmp, caplog):
    rows = [GOOD, "{oops", {"prompt": "x", "chosen": 1, "rejected": "b"}, GOOD,
            {"prompt": "x", "chosen": "c", "rejected": "c"}, {"prompt": " ", "chosen": "a", "rejected": "b"}]
    write_jsonl(in_tmp / "data.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="molma.data.readers"):
        pairs = read_preferences("data.jsonl", skip_invalid=True)
    assert len(pairs) == 2
    report = pairs.report
    assert (report.rows, report.records, report.skipped, report.complete) == (6, 2, 4, True)
    where = [(e.line, e.field) for e in report.errors]
    assert where == [(2, None), (3, "chosen"), (5, "rejected"), (6, "prompt")]
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert "4 invalid rows skipped" in message and "data.jsonl:2: malformed JSON" in message
    assert "data.jsonl:3: field 'chosen'" in message and "(1 more)" in message
    assert "4 invalid rows skipped" in report.summary()


def test_clean_read_does_not_warn(in_tmp, caplog):
    write_jsonl(in_tmp / "data.jsonl", [GOOD])
    with caplog.at_level(logging.WARNING):
        pairs = read_preferences("data.jsonl", skip_invalid=True)
    assert len(pairs) == 1 and pairs.report.skipped == 0 and not caplog.records


def test_bad_rows_in_memory_and_prompt_files(in_tmp):
    err = _error([GOOD, "not a mapping"])
    assert (err.path, err.line) == ("<rows>", 2) and "expected a mapping" in err.reason
    write_jsonl(in_tmp / "alpaca.jsonl", [{"instruction": "x", "input": 3}, {"instruction": "  "}])
    got = read_prompts("alpaca.jsonl", skip_invalid=True)
    assert [(e.line, e.field) for e in got.report.errors] == [(1, "input"), (2, "instruction")]
