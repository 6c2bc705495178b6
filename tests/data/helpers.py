"""Small file writers shared by the data tests."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, rows: Iterable[dict[str, Any] | str], compress: bool = False) -> Path:
    """Rows as JSON lines (strings are written verbatim, to make broken lines)."""
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def hh(*turns: str) -> str:
    """An HH transcript from alternating Human / Assistant turns (starting with Human)."""
    roles = ("Human", "Assistant")
    return "".join(f"\n\n{roles[i % 2]}: {t}" for i, t in enumerate(turns))
