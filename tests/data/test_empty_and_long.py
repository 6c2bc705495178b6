"""Empty, blank and header-only data files are errors naming the file; CSV fields longer than the csv
module's default limit are read (issue 16)."""

from __future__ import annotations

import gzip
import json

import pytest

from molma.cli.main import main
from molma.data import read_preferences, read_prompts
from molma.data.readers import CSV_FIELD_LIMIT, DataFormatError

EMPTY_FILES = {
    "empty.jsonl": b"",
    "blank.jsonl": b"  \n\n\t \n",
    "empty.jsonl.gz": gzip.compress(b""),
    "empty.json": b"[]\n",
    "empty.csv": b"",
    "header.csv": b"prompt,chosen,rejected\n",
    "header-blank.csv": b"prompt,chosen,rejected\n\n \n",
    "header.tsv": b"prompt\tchosen\trejected\n",
}


@pytest.mark.parametrize("name", sorted(EMPTY_FILES))
@pytest.mark.parametrize("reader", [read_preferences, read_prompts])
def test_empty_files_are_errors_naming_the_file(tmp_path, name, reader):
    path = tmp_path / name
    path.write_bytes(EMPTY_FILES[name])
    with pytest.raises(DataFormatError, match=rf"^{path}: no records: ") as err:
        reader(str(path), format="columns" if "header" in name else "auto")
    assert err.value.path == str(path)
    if "header" in name:
        assert "only a header (columns: prompt, chosen, rejected)" in str(err.value)
    with pytest.raises(DataFormatError, match="no records"):  # skipping bad rows does not hide it
        reader(str(path), format="columns" if "header" in name else "auto", skip_invalid=True)


def test_a_limit_of_zero_still_reads_nothing_without_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert read_prompts(str(path), limit=0) == []


@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl", "header.csv"])
def test_inspect_reports_an_empty_file_clearly(tmp_path, capsys, name):
    path = tmp_path / name
    path.write_bytes(EMPTY_FILES[name])
    assert main(["data", "inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"molma data inspect: error: {path}: no records: " in err


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_fields_longer_than_the_csv_default_limit_are_read(tmp_path, suffix):
    sep = "\t" if suffix == ".tsv" else ","
    long_text = "word " * 60_000  # 300,000 characters > csv's default 131,072
    path = tmp_path / f"long{suffix}"
    path.write_text(f"prompt{sep}chosen{sep}rejected\nq{sep}{long_text}{sep}short\nq2{sep}a{sep}b\n")
    pairs = read_preferences(str(path))
    assert len(pairs) == 2 and pairs[0].chosen.split() == long_text.split()
    assert CSV_FIELD_LIMIT >= 1 << 27


def test_a_field_over_the_readers_own_cap_is_an_error_naming_the_line(tmp_path, monkeypatch):
    import csv

    import molma.data.readers as readers

    monkeypatch.setattr(readers, "CSV_FIELD_LIMIT", 1000)
    old = csv.field_size_limit(1000)
    try:
        path = tmp_path / "long.csv"
        path.write_text("prompt,chosen,rejected\nq,a,b\nq," + "x" * 2000 + ",b\n")
        with pytest.raises(DataFormatError, match=rf"^{path}:3: unreadable CSV \(field larger than field limit"):
            read_preferences(str(path))
    finally:
        csv.field_size_limit(old)


def test_jsonl_is_unaffected(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "x" * 300_000}) + "\n")
    assert len(read_prompts(str(path))[0].text) == 300_000
