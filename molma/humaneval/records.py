"""Reading saved evaluation responses (``responses.jsonl``, format in docs/DEVELOPING.md).

One JSON object per line, one line per (prompt, model)::

    {"prompt_id": "p0007", "prompt": "...", "tag": "help", "model": "molma", "response": "...",
     "scores": {"help": 0.41, "safe": -1.2}}

``tag`` and ``scores`` may be absent. Errors name the file, the line and the field.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# One reader for the format, shared with molma eval / report (molma.eval.responses); this module adds
# what a ranking study needs on top of it.
from molma.eval.responses import MAX_TEXT_CHARS, ResponseRecord, ResponsesError, iter_responses, read_responses

__all__ = ["MAX_TEXT_CHARS", "ResponseRecord", "ResponsesError", "file_sha256", "iter_responses", "load_responses"]


def load_responses(path: str | Path) -> list[ResponseRecord]:
    """Read and check a whole file: unique (prompt_id, model), one prompt text per prompt_id,
    at least two models per prompt (ranking a single response means nothing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"responses file not found: {path}")
    records = read_responses(path)  # fields checked, (prompt_id, model) unique
    if not records:
        raise ResponsesError(f"{path}: no responses (the file is empty)")
    first: dict[str, ResponseRecord] = {}
    counts: dict[str, int] = {}
    for rec in records:
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
