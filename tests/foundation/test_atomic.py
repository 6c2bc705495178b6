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


def test_atomic_file_takes_any_writer_and_cleans_up_on_error(tmp_path):
    from molma.atomic import atomic_file

    target = tmp_path / "w.bin"
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and (target.stat().st_mode & 0o777) == 0o644
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"\x00\x01" and [p.name for p in tmp_path.iterdir()] == ["w.bin"]


def test_atomic_folder_replaces_a_folder_only_once_the_new_one_is_whole(tmp_path):
    from molma.atomic import atomic_folder

    target = tmp_path / "final"
    with atomic_folder(target) as folder:
        (folder / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1" and (target.stat().st_mode & 0o777) == 0o755
    with pytest.raises(RuntimeError), atomic_folder(target) as folder:
        (folder / "b.txt").write_text("2")
        assert (target / "a.txt").exists()  # the old folder stays in place while the new one is written
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_folder(target) as folder:
        (folder / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["final"]  # nothing left beside it


def test_atomic_folder_without_replace_keeps_what_another_process_finished(tmp_path):
    from molma.atomic import atomic_folder

    target = tmp_path / "cache"
    with atomic_folder(target, replace=False) as folder:
        (folder / "x").write_text("mine")
        target.mkdir()
        (target / "x").write_text("theirs")
    assert (target / "x").read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["cache"]
