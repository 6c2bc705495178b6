"""Reading saved evaluation responses (``responses.jsonl``, format in docs/DEVELOPING.md).

One JSON object per line, one line per (prompt, model)::

    {"prompt_id": "p0007", "prompt": "...", "tag": "help", "model": "molma", "response": "...",
     "scores": {"help": 0.41, "safe": -1.2}}

``tag`` and ``scores`` may be absent. Errors name the file, the line and the field.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MAX_TEXT_CHARS = 200_000


class ResponsesError(ValueError):
    """A ``responses.jsonl`` problem, naming the file, line and field."""


@dataclass(frozen=True)
class ResponseRecord:
    """One model's response to one prompt."""

    prompt_id: str
    prompt: str
    model: str
    response: str
    tag: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    line: int = 0


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _text(obj: dict[str, Any], name: str, where: str, *, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None and not required:
        return None
    if name not in obj:
        raise ResponsesError(f"{where}: field '{name}': missing")
    if not isinstance(value, str):
        raise ResponsesError(f"{where}: field '{name}': expected a string, got {value!r:.60}")
    if required and name != "response" and not value.strip():
        raise ResponsesError(f"{where}: field '{name}': empty")
    if len(value) > MAX_TEXT_CHARS:
        raise ResponsesError(f"{where}: field '{name}': longer than {MAX_TEXT_CHARS} characters")
    return value


def _scores(obj: dict[str, Any], where: str) -> dict[str, float]:
    value = obj.get("scores")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ResponsesError(f"{where}: field 'scores': expected an object, got {value!r:.60}")
    out = {}
    for key, score in value.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ResponsesError(f"{where}: field 'scores.{key}': expected a finite number, got {score!r}")
        out[str(key)] = float(score)
    return out


def iter_responses(path: str | Path) -> Iterator[ResponseRecord]:
    """Yield records line by line (blank lines skipped), checking each line's fields."""
    path = Path(path)
    with _open(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as err:
                raise ResponsesError(f"{where}: not valid JSON: {err.msg} (column {err.colno})") from err
            if not isinstance(obj, dict):
                raise ResponsesError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield ResponseRecord(
                prompt_id=_text(obj, "prompt_id", where) or "",
                prompt=_text(obj, "prompt", where) or "",
                model=_text(obj, "model", where) or "",
                response=_text(obj, "response", where) or "",
                tag=_text(obj, "tag", where, required=False),
                scores=_scores(obj, where),
                line=lineno,
            )


def load_responses(path: str | Path) -> list[ResponseRecord]:
    """Read and check a whole file: unique (prompt_id, model), one prompt text per prompt_id,
    at least two models per prompt (ranking a single response means nothing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"responses file not found: {path}")
    records = list(iter_responses(path))
    if not records:
        raise ResponsesError(f"{path}: no responses (the file is empty)")
    seen: dict[tuple[str, str], int] = {}
    first: dict[str, ResponseRecord] = {}
    counts: dict[str, int] = {}
    for rec in records:
        key = (rec.prompt_id, rec.model)
        if key in seen:
            raise ResponsesError(
                f"{path}:{rec.line}: field 'model': duplicate response of model {rec.model!r} to prompt "
                f"{rec.prompt_id!r} (first on line {seen[key]})"
            )
        seen[key] = rec.line
        head = first.setdefault(rec.prompt_id, rec)
        if head.prompt != rec.prompt:
            raise ResponsesError(
                f"{path}:{rec.line}: field 'prompt': differs from the text of prompt {rec.prompt_id!r} "
                f"on line {head.line}"
            )
        counts[rec.prompt_id] = counts.get(rec.prompt_id, 0) + 1
    lonely = [pid for pid, n in counts.items() if n < 2]
    if lonely:
        raise ResponsesError(
            f"{path}:{first[lonely[0]].line}: field 'prompt_id': prompt {lonely[0]!r} has a response from "
            f"only one model; ranking needs at least two ({len(lonely)} such prompt(s))"
        )
    return records


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies the responses file a study was built from)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
