"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one.

One file writer and one folder writer for everything molma saves (results, checkpoints, models):

* :func:`atomic_file` / :func:`write_text_atomic`: the content goes to a temporary file in the target's
  folder (same file system), then ``os.replace`` swaps it in; on any error the temporary file is
  removed and the target is untouched.
* :func:`atomic_folder`: the folder is written under a temporary name beside the target, then renamed
  into place. An older folder of that name is moved aside first and removed only once the new one is
  in place (put back if the rename fails), so there is no moment with neither. With
  ``replace=False`` an existing folder wins (a cache another process filled first).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Permissions of what the writers create (mkstemp / mkdtemp make private ones; results are meant to be shared).
FILE_MODE, FOLDER_MODE = 0o644, 0o755


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Inside: a temporary path beside ``path`` to write (any way: text, safetensors, ...); on leaving
    without an error it replaces ``path``. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; creates the parent folder."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return path


@contextmanager
def atomic_folder(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """Inside: an empty temporary folder beside ``target`` to fill; on leaving without an error it
    becomes ``target`` (see the module doc; ``replace=False``: an existing ``target`` is kept and the new
    folder dropped). On an error the temporary folder is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, FOLDER_MODE)
        if target.exists():
            if not replace:  # another process finished first
                shutil.rmtree(tmp)
                return
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
