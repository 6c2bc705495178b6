"""Atomic writes: the target holds the old or the new text, and no temporary file is left behind."""

from __future__ import annotations

import pytest

from molma.atomic import write_text_atomic


def test_writes_text_and_creates_the_folder(tmp_path):
    path = write_text_atomic(tmp_path / "a" / "b.csv", "x,y\r\n1,2\n")
    assert path.read_bytes() == b"x,y\r\n1,2\n"  # newlines kept as given (CSV needs \r\n)
    assert (path.stat().st_mode & 0o777) == 0o644
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["b.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "r.json", "old")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "bad \ud800 surrogate")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
