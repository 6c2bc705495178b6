"""Saved evaluation responses (``responses.jsonl``), shared by ``molma eval``, ``molma report`` and
``molma human-eval``.

One JSON object per line (see docs/DEVELOPING.md)::

    {"prompt_id": "p0007", "prompt": "...", "tag": "help", "model": "molma", "response": "...",
     "scores": {"help": 0.41, "safe": -1.2}}

Keeping every response with every objective's score lets an evaluation be re-scored with other reward
models, audited, or ranked by humans without regenerating (paper section 4.3: the same prompts go to
every model, then each reward model scores every response).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from molma.atomic import write_text_atomic

REQUIRED = ("prompt_id", "prompt", "model", "response")
MAX_TEXT_CHARS = 200_000


class ResponsesError(ValueError):
    """A ``responses.jsonl`` problem, naming the file, line and field."""


@dataclass
class ResponseRecord:
    """One model's response to one test prompt, with the score of every objective computed so far.
    ``line`` is where it was read from (0 for records made in memory)."""

    prompt_id: str
    prompt: str
    model: str
    response: str
    tag: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    line: int = field(default=0, compare=False)

    def to_json(self) -> dict:
        return {"prompt_id": self.prompt_id, "prompt": self.prompt, "tag": self.tag, "model": self.model,
                "response": self.response, "scores": dict(self.scores)}


def prompt_id(index: int, total: int) -> str:
    """``p0007``-style id of the ``index``-th test prompt (at least 4 digits, more for big sets)."""
    return f"p{index:0{max(4, len(str(max(total - 1, 0))))}d}"


def _text(obj: dict, name: str, where: str) -> str:
    if name not in obj:
        raise ResponsesError(f"{where}: field '{name}': missing")
    value = obj[name]
    if not isinstance(value, str):
        raise ResponsesError(f"{where}: field '{name}': expected a string, got {value!r:.60}")
    if name != "response" and not value.strip():  # an empty response is data; an empty id is not
        raise ResponsesError(f"{where}: field '{name}': empty")
    if len(value) > MAX_TEXT_CHARS:
        raise ResponsesError(f"{where}: field '{name}': longer than {MAX_TEXT_CHARS} characters")
    return value


def _parse_line(line: str, where: str, lineno: int = 0) -> ResponseRecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ResponsesError(f"{where}: not valid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(obj, dict):
        raise ResponsesError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    fields = {name: _text(obj, name, where) for name in REQUIRED}
    scores = obj.get("scores") or {}
    if not isinstance(scores, dict):
        raise ResponsesError(f"{where}: field 'scores': expected an object, got {scores!r:.60}")
    clean: dict[str, float] = {}
    for name, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ResponsesError(f"{where}: field 'scores.{name}': expected a finite number, got {value!r}")
        clean[str(name)] = float(value)
    tag = obj.get("tag") or ""
    if not isinstance(tag, str):
        raise ResponsesError(f"{where}: field 'tag': expected a string, got {tag!r:.60}")
    return ResponseRecord(**fields, tag=tag, scores=clean, line=lineno)


def iter_responses(path: str | Path) -> Iterator[ResponseRecord]:
    """Records of ``responses.jsonl`` (or ``.jsonl.gz``) line by line; blank lines are skipped, each
    line's fields are checked, errors name the file, line and field."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        lineno = 0
        while True:
            try:
                raw = fh.readline()
            except (EOFError, OSError, zlib.error) as err:  # a truncated or damaged .gz
                raise ResponsesError(f"{path}:{lineno + 1}: unreadable after line {lineno} (truncated or "
                                     f"damaged file? {type(err).__name__}: {err})") from None
            if not raw:
                return
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ResponsesError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at "
                                     f"column {err.start + 1})") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():
                yield _parse_line(line, f"{path}:{lineno}", lineno)


def read_responses(path: str | Path) -> list[ResponseRecord]:
    """Read ``responses.jsonl``; a (model, prompt_id) pair may appear only once."""
    path = Path(path)
    records: list[ResponseRecord] = []
    seen: dict[tuple[str, str], int] = {}
    for rec in iter_responses(path):
        key = (rec.model, rec.prompt_id)
        if key in seen:
            raise ResponsesError(f"{path}:{rec.line}: field 'model': duplicate response of model {rec.model!r} "
                                 f"to prompt {rec.prompt_id!r} (first on line {seen[key]})")
        seen[key] = rec.line
        records.append(rec)
    return records


def write_responses(path: str | Path, records: Iterable[ResponseRecord]) -> None:
    """Write records atomically (temporary file + ``os.replace``), one JSON object per line."""
    write_text_atomic(path, "".join(json.dumps(rec.to_json(), ensure_ascii=False) + "\n" for rec in records))


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically; NaN/inf are refused rather than written silently."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
    write_text_atomic(path, text + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def models_in(records: Sequence[ResponseRecord]) -> list[str]:
    """Model names in order of first appearance."""
    return list(dict.fromkeys(r.model for r in records))


def objectives_in(records: Sequence[ResponseRecord]) -> list[str]:
    """Objectives scored for *every* record, in order of first appearance."""
    if not records:
        return []
    names = list(dict.fromkeys(k for r in records for k in r.scores))
    return [k for k in names if all(k in r.scores for r in records)]


def score_matrix(records: Sequence[ResponseRecord], models: Sequence[str] | None = None,
                 objectives: Sequence[str] | None = None
                 ) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """Align scores by prompt: ``(prompt_ids, scores[model][objective] -> array over prompt_ids)``.

    Only prompts answered by every listed model are kept (in order of first appearance), so win rates
    always compare responses to the same prompt. Raises if an objective is missing for a record.
    """
    models = list(models) if models is not None else models_in(records)
    objectives = list(objectives) if objectives is not None else objectives_in(records)
    by_model: dict[str, dict[str, ResponseRecord]] = {m: {} for m in models}
    order: list[str] = []
    for rec in records:
        if rec.model in by_model:
            by_model[rec.model][rec.prompt_id] = rec
            order.append(rec.prompt_id)
    common = [p for p in dict.fromkeys(order) if all(p in by_model[m] for m in models)]
    scores: dict[str, dict[str, np.ndarray]] = {}
    for m in models:
        scores[m] = {}
        for obj in objectives:
            values = []
            for p in common:
                rec = by_model[m][p]
                if obj not in rec.scores:
                    raise ValueError(f"response of model {m!r} to prompt {p!r} has no {obj!r} score; "
                                     f"re-score with: molma eval --rescore DIR --rm {obj}=...")
                values.append(rec.scores[obj])
            scores[m][obj] = np.asarray(values, dtype=float)
    return common, scores


def read_json_if_exists(path: str | Path):
    """Parsed JSON of ``path``, or ``None`` when the file does not exist; errors name the file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
