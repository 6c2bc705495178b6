"""Readers: preference pairs and prompts from local files, hub datasets, the builtin set and in-memory rows.

Formats (``format=``; ``"auto"`` detects them from the field names when that is unambiguous):

- ``hh``: ``chosen``/``rejected`` hold whole ``\\n\\nHuman: ...\\n\\nAssistant: ...`` dialogues sharing every
  turn but the final reply. Pairs: prompt = the shared context up to the final ``\\n\\nAssistant:``,
  chosen/rejected = the final replies; prompts: that context (or its first Human turn).
- ``pku`` (PKU-SafeRLHF): ``prompt``, ``response_0``, ``response_1`` and ``better_response_id``
  (``objective="help"``) or ``safer_response_id`` (``objective="safe"``).
- ``shp`` (Stanford SHP): ``history``, ``human_ref_A``, ``human_ref_B``, ``labels`` (1: A preferred).
- ``alpaca`` (Alpaca, Alpaca-cleaned), prompts only: ``instruction``, plus ``input`` after a blank line
  when non-empty.
- ``columns``: plain files with named columns (default ``prompt``/``chosen``/``rejected``; ``columns=``
  / ``column=`` pick others).

Containers: JSONL, a JSON array (Alpaca's ``alpaca_data.json``), CSV/TSV (by suffix); gzip is detected
from its magic bytes. Through ``datasets`` itself: Parquet and Arrow files (``.parquet``, ``.arrow``) and
folders written by ``Dataset.save_to_disk`` (a ``DatasetDict`` folder with several splits: name one,
``FOLDER/test``). A ``source`` is a path, a ``data_files=``-style glob (``data/train-*.parquet``,
``shards/**/*.jsonl.gz``; resolved as ``datasets`` resolves ``data_files``, each file read as above, one
combined report), ``builtin:help`` / ``builtin:pairs_safe`` / ...,
``hub:NAME?split=test&data_dir=harmless-base&name=CONFIG&data_files=PATTERN`` (``datasets.load_dataset``;
well-known names such as ``Anthropic/hh-rlhf`` work without the prefix), or an iterable of mappings (e.g.
a ``datasets.Dataset`` or a list of dicts). In binary containers (Parquet, Arrow, ``save_to_disk``) the
"line" of an error is the row number (from 1).

TRL's conversational formats are read too: ``prompt`` / ``chosen`` / ``rejected`` as lists of chat
messages (``[{"role": "user", "content": ...}]``; ``chosen`` / ``rejected`` one assistant message each),
the implicit-prompt form (only ``chosen`` / ``rejected``, whole dialogues sharing every message but the
final assistant reply) and prompt-only datasets (``prompt`` as a message list). A one-message prompt
becomes its text, a longer dialogue an HH transcript (``Human: ...\\n\\nAssistant:``), so both read
to the same records as the equivalent JSONL and render to the same chat messages
(:func:`molma.data.chat.to_messages`). System messages are not supported (an error names them).

Every bad row raises :class:`DataFormatError` naming file, line and field. With ``skip_invalid=True``
bad rows are skipped instead; the returned :class:`Records` list carries a :class:`ReadReport`
(``records.report``) with every error, and a warning with the count and first reasons is logged.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from molma.data.chat import to_messages
from molma.data.records import PreferencePair, Prompt

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = Mapping[str, Any]
Source = str | Path | Iterable[Row]

# PAIR_FORMATS and PROMPT_FORMATS: the names of FORMATS (below)
FORMAT_ALIASES = {
    "jsonl": "columns",
    "json": "columns",
    "csv": "columns",
    "tsv": "columns",
    "hh-rlhf": "hh",
    "pku-saferlhf": "pku",
    "saferlhf": "pku",
    "alpaca-cleaned": "alpaca",
}
OBJECTIVES = ("help", "safe")
OBJECTIVE_ALIASES = {
    "help": "help",
    "helpful": "help",
    "helpfulness": "help",
    "better": "help",
    "safe": "safe",
    "safety": "safe",
    "safer": "safe",
    "harmless": "safe",
    "harmlessness": "safe",
}
PKU_CHOICE_FIELD = {"help": "better_response_id", "safe": "safer_response_id"}
# Hub names accepted without the ``hub:`` prefix (when no local path of that name exists).
KNOWN_HUB_DATASETS = (
    "Anthropic/hh-rlhf",
    "PKU-Alignment/PKU-SafeRLHF",
    "PKU-Alignment/PKU-SafeRLHF-30K",
    "PKU-Alignment/PKU-SafeRLHF-10K",
    "stanfordnlp/SHP",
    "tatsu-lab/alpaca",
    "yahma/alpaca-cleaned",
)
# Column names tried, in order, when reading prompts from a file with unknown fields.
PROMPT_COLUMNS = ("prompt", "question", "query", "text")

_HUMAN = "\n\nHuman:"
_ASSISTANT = "\n\nAssistant:"


# --------------------------------------------------------------------------------------------- errors


class DataFormatError(ValueError):
    """Bad input data; ``str(err)`` reads ``data.jsonl:17: field 'chosen': missing``.

    Attributes: ``path`` (source as given, or None), ``line`` (1-based line or row number, or None),
    ``field`` (field/column name, or None) and ``reason`` (the message without location).
    """

    def __init__(
        self, reason: str, path: str | None = None, line: int | None = None, field: str | None = None
    ) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        if self.path is not None or self.line is not None:
            where = self.path if self.path is not None else "<row>"
            parts.append(where if self.line is None else f"{where}:{self.line}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.reason)
        return ": ".join(parts)

    def located(self, path: str | None, line: int | None) -> DataFormatError:
        """A copy of this error with the source location filled in."""
        return type(self)(self.reason, path if self.path is None else self.path,
                          line if self.line is None else self.line, self.field)

    def __reduce__(self):  # keep the attributes through pickling / copying
        return (type(self), (self.reason, self.path, self.line, self.field))


class _FatalError(DataFormatError):
    """An error after which the rest of the source cannot be read (e.g. truncated gzip)."""


@dataclass
class ReadReport:
    """What a read did: rows examined, records returned, every skipped row's error.

    ``complete`` is False when reading stopped before the end of the source (``limit`` reached, or an
    unrecoverable error such as a truncated gzip stream). ``duplicates`` counts rows dropped by
    ``dedupe=True`` (these are not errors).
    """

    source: str
    format: str = ""
    rows: int = 0
    records: int = 0
    duplicates: int = 0
    errors: list[DataFormatError] = field(default_factory=list)
    complete: bool = True

    @property
    def skipped(self) -> int:
        """Number of invalid rows skipped."""
        return len(self.errors)

    def summary(self, max_errors: int = 3) -> str:
        """One paragraph: counts and the first ``max_errors`` reasons."""
        text = f"{self.source}: {self.records} records from {self.rows} rows"
        if self.format:
            text += f" (format {self.format})"
        if self.duplicates:
            text += f"; {self.duplicates} duplicates dropped"
        if self.errors:
            text += f"; {self.skipped} invalid rows skipped"
            shown = [str(err) for err in self.errors[:max_errors]]
            text += ", first: " + "; ".join(shown)
            if self.skipped > max_errors:
                text += f"; ... ({self.skipped - max_errors} more)"
        if not self.complete:
            text += "; stopped before the end of the source"
        return text


class Records(list[T]):
    """A plain list of records with the :class:`ReadReport` of the read that produced it (``.report``)."""

    def __init__(self, items: Iterable[T] = (), report: ReadReport | None = None) -> None:
        super().__init__(items)
        self.report = report if report is not None else ReadReport(source="")


# ------------------------------------------------------------------------------------ value checks


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _text(row: Row, key: str, allow_empty: bool = False) -> str:
    """``row[key]`` as text; missing / null / non-text / whitespace-only values are errors."""
    if key not in row or row[key] is None:
        raise DataFormatError("missing", field=key)
    value = row[key]
    if not isinstance(value, str):
        raise DataFormatError(f"expected text, got {_type_name(value)} {value!r:.40}", field=key)
    if not allow_empty and not value.strip():
        raise DataFormatError("empty text", field=key)
    return value


def _binary_choice(row: Row, key: str) -> int:
    """``row[key]`` as 0 or 1 (ints, or "0"/"1" as CSV gives them)."""
    if key not in row or row[key] is None:
        raise DataFormatError("missing", field=key)
    value = row[key]
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value
    raise DataFormatError(f"expected 0 or 1, got {_type_name(value)} {value!r:.40}", field=key)


def _check_distinct(chosen: str, rejected: str, chosen_field: str, rejected_field: str) -> None:
    if chosen == rejected:
        raise DataFormatError(f"identical to '{chosen_field}'", field=rejected_field)


# ----------------------------------------------------------------------------- chat-message values


_SPEAKER = {"user": "Human", "assistant": "Assistant"}


def is_messages(value: Any) -> bool:
    """Whether ``value`` is a non-empty list of chat messages (mappings with ``role`` and ``content``)."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value))


def _messages(value: Any, key: str) -> list[tuple[str, str]]:
    """``(role, content)`` of a message list; only user and assistant turns with text content."""
    out = []
    for i, message in enumerate(value):
        role, content = message.get("role"), message.get("content")
        if role not in _SPEAKER:
            raise DataFormatError(f"message {i}: role {role!r} is not supported (expected user or assistant)",
                                  field=key)
        if not isinstance(content, str):
            raise DataFormatError(f"message {i}: expected text content, got {_type_name(content)}", field=key)
        out.append((role, content.strip()))
    return out


def _transcript(messages: Sequence[tuple[str, str]], key: str) -> str:
    """Prompt text of the messages before a reply: one user message -> its text; a dialogue -> an HH
    transcript ``Human: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:``."""
    if not messages:
        raise DataFormatError("no messages before the reply", field=key)
    if messages[-1][0] != "user":
        raise DataFormatError("the last prompt message must be the user's (the reply follows it)", field=key)
    if not messages[-1][1]:
        raise DataFormatError("the last user message is empty", field=key)
    if len(messages) == 1:
        return messages[0][1]
    text = "".join(f"\n\n{_SPEAKER[role]}:" + (f" {text}" if text else "") for role, text in messages)
    return text.lstrip() + _ASSISTANT  # stripped, as a plain file's prompt column is


def messages_to_prompt(messages: Sequence[Mapping[str, Any]], key: str = "prompt") -> str:
    """Prompt text for a list of chat messages ending with the user's turn (see the module docstring)."""
    if not is_messages(messages):
        raise DataFormatError("expected a list of chat messages with 'role' and 'content'", field=key)
    return _transcript(_messages(messages, key), key)


def _prompt_text(row: Row, key: str) -> str:
    """``row[key]`` as prompt text: text, or a list of chat messages (TRL's conversational format)."""
    value = row.get(key)
    if is_messages(value):
        return _transcript(_messages(value, key), key)
    return _text(row, key).strip()


def _reply_text(row: Row, key: str) -> str:
    """``row[key]`` as a reply: text, or a list holding one assistant message (TRL's explicit-prompt form)."""
    value = row.get(key)
    if is_messages(value):
        messages = _messages(value, key)
        if len(messages) != 1 or messages[0][0] != "assistant":
            raise DataFormatError(f"expected one assistant message, got {len(messages)} message(s) with roles "
                                  f"{[r for r, _ in messages]}", field=key)
        if not messages[0][1]:
            raise DataFormatError("empty text", field=key)
        return messages[0][1]
    return _text(row, key).strip()


def _dialogue(row: Row, key: str) -> tuple[list[tuple[str, str]], str]:
    """(context messages, final assistant reply) of a whole dialogue given as chat messages."""
    messages = _messages(row[key], key)
    if len(messages) < 2 or messages[-1][0] != "assistant":
        raise DataFormatError("expected a dialogue ending with the assistant's reply", field=key)
    return messages[:-1], messages[-1][1]


def _dialogue_pair(row: Row) -> tuple[str, str, str]:
    """TRL's implicit-prompt conversational pair: two dialogues sharing all messages but the last."""
    if not is_messages(row.get("rejected")):
        raise DataFormatError("expected a list of chat messages like 'chosen'", field="rejected")
    context, chosen = _dialogue(row, "chosen")
    rejected_context, rejected = _dialogue(row, "rejected")
    if context != rejected_context:
        at = next((i for i, (a, b) in enumerate(zip(context, rejected_context)) if a != b),
                  min(len(context), len(rejected_context)))
        raise DataFormatError(f"dialogue context differs from 'chosen' (first difference at message {at})",
                              field="rejected")
    _check_distinct(chosen, rejected, "chosen", "rejected")
    return _transcript(context, "chosen"), chosen, rejected


def pair_problem(pair: Any, origin: str = "") -> DataFormatError | None:
    """Why a pair cannot train or evaluate a reward model (missing or empty text, identical replies), or
    None. The one rule shared by :func:`molma.rewards.validate_pairs` and ``molma data inspect``."""
    if not isinstance(pair, PreferencePair):
        return DataFormatError(f"expected a PreferencePair, got {type(pair).__name__}", origin)
    for name in ("prompt", "chosen", "rejected"):
        value = getattr(pair, name)
        if value is None:
            return DataFormatError("missing", origin, field=name)
        if not isinstance(value, str):
            return DataFormatError(f"expected text, got {type(value).__name__}", origin, field=name)
        if not value.strip():
            return DataFormatError("empty text", origin, field=name)
    if pair.chosen.strip() == pair.rejected.strip():
        return DataFormatError("identical to 'chosen' (a pair needs two different responses)", origin,
                               field="rejected")
    return None


def normalize_objective(objective: str) -> str:
    """``"help"`` or ``"safe"`` from an objective name or alias (helpful, safety, harmless, ...)."""
    key = str(objective).strip().lower()
    if key not in OBJECTIVE_ALIASES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {list(OBJECTIVES)}")
    return OBJECTIVE_ALIASES[key]


def normalize_format(fmt: str, kind: str = "pairs") -> str:
    """Canonical format name (``auto`` or one of the formats for ``kind`` 'pairs'/'prompts')."""
    key = str(fmt).strip().lower()
    key = FORMAT_ALIASES.get(key, key)
    allowed = PAIR_FORMATS if kind == "pairs" else PROMPT_FORMATS
    if key != "auto" and key not in allowed:
        raise ValueError(f"unknown {kind} format {fmt!r}; expected 'auto' or one of {list(allowed)}")
    return key


# ------------------------------------------------------------------------------------ HH transcripts


def split_hh_transcript(text: str, field_name: str = "chosen") -> tuple[str, str]:
    """Split an HH-RLHF dialogue into ``(prompt, final_reply)``.

    The prompt is everything up to and including the ``\\n\\nAssistant:`` that answers the last
    ``\\n\\nHuman:`` turn (in well-formed dialogues, the last ``\\n\\nAssistant:``); the reply is the rest,
    stripped. A few HH dialogues continue an Assistant reply in a second ``\\n\\nAssistant:`` block
    without a Human turn between; that continuation stays part of the reply.
    The reply may be empty: HH has dialogues whose preferred final reply is empty.
    """
    if text.lstrip().startswith("Human:") and not text.startswith(_HUMAN):
        text = "\n\n" + text.lstrip()
    last_human = text.rfind(_HUMAN)
    if last_human < 0:
        raise DataFormatError("not an HH dialogue: no '\\n\\nHuman:' turn", field=field_name)
    answer = text.find(_ASSISTANT, last_human)
    if answer < 0:
        raise DataFormatError("no '\\n\\nAssistant:' after the last Human turn", field=field_name)
    if not text[last_human + len(_HUMAN) : answer].strip():
        raise DataFormatError("the last Human turn is empty", field=field_name)
    end = answer + len(_ASSISTANT)
    return text[:end], text[end:].strip()


def _hh_pair(row: Row) -> tuple[str, str, str]:
    chosen_prompt, chosen = split_hh_transcript(_text(row, "chosen"), "chosen")
    rejected_prompt, rejected = split_hh_transcript(_text(row, "rejected"), "rejected")
    if chosen_prompt != rejected_prompt:
        at = next(
            (i for i, (a, b) in enumerate(zip(chosen_prompt, rejected_prompt)) if a != b),
            min(len(chosen_prompt), len(rejected_prompt)),
        )
        raise DataFormatError(
            f"dialogue context differs from 'chosen' (first difference at character {at})",
            field="rejected",
        )
    _check_distinct(chosen, rejected, "chosen", "rejected")
    return chosen_prompt, chosen, rejected


# ---------------------------------------------------------------------------------- row conversion


def _pair_columns(columns: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    names = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    if columns is None:
        return names
    if isinstance(columns, Mapping):
        unknown = set(columns) - set(names)
        if unknown:
            raise ValueError(f"columns: unknown keys {sorted(unknown)}; expected prompt, chosen, rejected")
        names.update({k: str(v) for k, v in columns.items()})
        return names
    if isinstance(columns, str) or len(columns) != 3:
        raise ValueError(f"columns: expected 3 names (prompt, chosen, rejected), got {columns!r}")
    return dict(zip(names, map(str, columns)))


def pair_from_row(
    row: Row,
    format: str,
    objective: str | None = None,
    columns: Mapping[str, str] | Sequence[str] | None = None,
    source: str = "",
) -> PreferencePair:
    """One :class:`PreferencePair` from one row of a dataset in ``format`` (not ``auto``).

    Raises :class:`DataFormatError` (with ``field`` set, no location) for a bad row.
    """
    fmt = normalize_format(format, "pairs")
    read_pair = FORMATS[fmt].read_pair if fmt in FORMATS else None
    if read_pair is None:  # pragma: no cover - normalize_format rejects anything else
        raise ValueError(f"cannot read pairs from format {fmt!r}")
    prompt, chosen, rejected = read_pair(row, objective, columns)
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, source=source)


def _alpaca_prompt(row: Row) -> str:
    instruction = _text(row, "instruction").strip()
    extra = row.get("input")
    instances = row.get("instances")
    if extra is None and isinstance(instances, list) and instances and isinstance(instances[0], dict):
        extra = instances[0].get("input")  # self-instruct: the first instance's input completes the task
    if extra is None:
        return instruction
    if not isinstance(extra, str):
        raise DataFormatError(f"expected text, got {_type_name(extra)} {extra!r:.40}", field="input")
    return f"{instruction}\n\n{extra.strip()}" if extra.strip() else instruction


def prompt_from_row(
    row: Row,
    format: str,
    tag: str = "",
    column: str | None = None,
    first_turn: bool = False,
    source: str = "",
) -> Prompt:
    """One :class:`Prompt` from one row of a dataset in ``format`` (not ``auto``).

    ``hh``: the dialogue context of ``chosen`` (up to the final ``\\n\\nAssistant:``); ``alpaca``:
    instruction, then a blank line and the input when that is non-empty; ``pku``: ``prompt``;
    ``shp``: ``history``; ``columns``: ``column`` (default ``prompt``). ``first_turn=True`` keeps only
    the first Human turn of a dialogue (plain prompts are unchanged).
    """
    fmt = normalize_format(format, "prompts")
    text = FORMATS.get(fmt, FORMATS["columns"]).read_prompt(row, column)  # auto: the prompt column
    if first_turn:
        messages = to_messages(text)
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users or not users[0]:
            raise DataFormatError("the first Human turn is empty", field="chosen" if fmt == "hh" else column)
        text = users[0]
    return Prompt(text=text, tag=tag, source=source)


# --------------------------------------------------------------------------------- the formats


def _hh_pair_row(row: Row, objective: str | None, columns: Any) -> tuple[str, str, str]:
    return _dialogue_pair(row) if is_messages(row.get("chosen")) else _hh_pair(row)


def _hh_prompt(row: Row, column: str | None) -> str:
    if is_messages(row.get("chosen")):
        return _transcript(_dialogue(row, "chosen")[0], "chosen")
    return split_hh_transcript(_text(row, "chosen"), "chosen")[0]


def _pku_pair(row: Row, objective: str | None, columns: Any) -> tuple[str, str, str]:
    if objective is None:
        raise ValueError("PKU-SafeRLHF needs objective='help' (better_response_id) or 'safe' "
                         "(safer_response_id)")
    prompt = _text(row, "prompt").strip()
    responses = [_text(row, "response_0").strip(), _text(row, "response_1").strip()]
    _check_distinct(responses[0], responses[1], "response_0", "response_1")
    better = _binary_choice(row, PKU_CHOICE_FIELD[normalize_objective(objective)])
    return prompt, responses[better], responses[1 - better]


def _shp_pair(row: Row, objective: str | None, columns: Any) -> tuple[str, str, str]:
    prompt = _text(row, "history").strip()
    a, b = _text(row, "human_ref_A").strip(), _text(row, "human_ref_B").strip()
    _check_distinct(a, b, "human_ref_A", "human_ref_B")
    chosen, rejected = (a, b) if _binary_choice(row, "labels") == 1 else (b, a)
    return prompt, chosen, rejected


def _columns_pair(row: Row, objective: str | None, columns: Any) -> tuple[str, str, str]:
    names = _pair_columns(columns)
    prompt = _prompt_text(row, names["prompt"])
    chosen, rejected = _reply_text(row, names["chosen"]), _reply_text(row, names["rejected"])
    _check_distinct(chosen, rejected, names["chosen"], names["rejected"])
    return prompt, chosen, rejected


@dataclass(frozen=True)
class _Format:
    """What defines one dataset format for reading: the header fields a file must have and how one row
    becomes a prompt text or a pair ``(prompt, chosen, rejected)`` (``None``: not a source of pairs).
    Which fields identify a format is :func:`detect_pair_format` / :func:`detect_prompt_format`."""

    prompt_fields: Callable[[str | None], list[str | None]]  # (column=)
    read_prompt: Callable[[Row, str | None], str]  # (row, column=)
    pair_fields: Callable[[str | None, Any], list[str | None]] | None = None  # (objective, columns)
    read_pair: Callable[[Row, str | None, Any], tuple[str, str, str]] | None = None  # (row, objective, columns)


def _prompt_column(default: str) -> tuple[Callable[[str | None], list[str | None]], Callable[[Row, str | None], str]]:
    """``prompt_fields`` and ``read_prompt`` of a format whose prompt is one column (``column=`` or ``default``)."""
    return (lambda column: [column or default]), (lambda row, column: _prompt_text(row, column or default))


#: Every format, in the order of PROMPT_FORMATS (those that read pairs: PAIR_FORMATS).
FORMATS: dict[str, _Format] = {
    "hh": _Format(lambda column: ["chosen"], _hh_prompt,
                  lambda objective, columns: ["chosen", "rejected"], _hh_pair_row),
    "pku": _Format(*_prompt_column("prompt"), lambda objective, columns: [
        "prompt", "response_0", "response_1", PKU_CHOICE_FIELD.get(objective or "")], _pku_pair),
    "shp": _Format(*_prompt_column("history"),
                   lambda objective, columns: ["history", "human_ref_A", "human_ref_B", "labels"], _shp_pair),
    "alpaca": _Format(lambda column: ["instruction"], lambda row, column: _alpaca_prompt(row)),
    "columns": _Format(*_prompt_column("prompt"), lambda objective, columns: list(_pair_columns(columns).values()),
                       _columns_pair),
}
PAIR_FORMATS = tuple(name for name, spec in FORMATS.items() if spec.read_pair is not None)
PROMPT_FORMATS = tuple(FORMATS)


def _needed_fields(fmt: str, kind: str, objective: str | None = None, columns: Any = None,
                   column: str | None = None) -> list[str | None]:
    """The header fields a source of ``kind`` ('pairs' / 'prompts') in ``fmt`` must have (none for auto)."""
    if fmt == "auto":
        return []
    spec = FORMATS[fmt]
    if kind == "pairs":
        assert spec.pair_fields is not None
        return spec.pair_fields(objective, columns)
    return spec.prompt_fields(column)


# ------------------------------------------------------------------------------- format detection


def detect_pair_format(fields: Iterable[str]) -> str | None:
    """The pair format whose fields are all present, None if none; ambiguity is a ``ValueError``."""
    f = set(fields)
    found = []
    if {"prompt", "response_0", "response_1"} <= f and f & set(PKU_CHOICE_FIELD.values()):
        found.append("pku")
    if {"history", "human_ref_A", "human_ref_B", "labels"} <= f:
        found.append("shp")
    if {"prompt", "chosen", "rejected"} <= f:
        found.append("columns")
    elif {"chosen", "rejected"} <= f:
        found.append("hh")
    if len(found) > 1:
        raise ValueError(f"fields match several formats {found}; pass format=")
    return found[0] if found else None


def detect_prompt_format(fields: Iterable[str]) -> tuple[str, str | None] | None:
    """``(format, column)`` for reading prompts from rows with these fields, None if none fits."""
    f = set(fields)
    found: list[tuple[str, str | None]] = []
    if "instruction" in f:
        found.append(("alpaca", None))
    if {"chosen", "rejected"} <= f and "prompt" not in f:
        found.append(("hh", None))
    if "history" in f and "prompt" not in f:
        found.append(("shp", "history"))
    if not found:
        column = next((c for c in PROMPT_COLUMNS if c in f), None)
        return None if column is None else ("columns", column)
    if len(found) > 1:
        raise ValueError(f"fields match several formats {[x[0] for x in found]}; pass format=")
    return found[0]


# ---------------------------------------------------------------------------------------- sources


@dataclass
class _Rows:
    """An opened source: ``items`` yields ``(line, row or DataFormatError)``; CSV sets ``columns``."""

    display: str
    items: Iterator[tuple[int, Row | DataFormatError]]
    columns: list[str] | None = None
    close: Callable[[], None] = lambda: None


def _utf8_error(raw: bytes, err: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"


def _jsonl_items(stream: Iterable[bytes], display: str) -> Iterator[tuple[int, Row | DataFormatError]]:
    line = 0
    it = iter(stream)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except (EOFError, OSError, zlib.error) as err:
            yield line + 1, _FatalError(f"unreadable data after line {line} ({err})", display, line + 1)
            return
        line += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield line, DataFormatError(_utf8_error(raw, err), display, line)
            continue
        if line == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            yield line, DataFormatError(f"malformed JSON: {err.msg} (column {err.colno})", display, line)
            continue
        if not isinstance(row, dict):
            yield line, DataFormatError(f"expected a JSON object, got {_type_name(row)}", display, line)
            continue
        yield line, row


_SURROGATE = re.compile("[\udc80-\udcff]")


def _json_array_items(data: bytes, display: str) -> Iterator[tuple[int, Row | DataFormatError]]:
    """Items of a JSON array file, each with the line it starts on."""
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end()
    line, counted = 1, 0

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    if not text.startswith("[", pos):
        yield line_at(pos), _FatalError("expected a JSON array", display, line_at(pos))
        return
    pos = ws.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        start = line_at(pos)
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            yield err.lineno, _FatalError(
                f"malformed JSON: {err.msg} (column {err.colno}); the rest of the file was not read",
                display, err.lineno)
            return
        bad = _SURROGATE.search(text, pos, end)
        if bad:
            yield line_at(bad.start()), DataFormatError("not valid UTF-8", display, line_at(bad.start()))
        elif not isinstance(item, dict):
            yield start, DataFormatError(f"expected a JSON object, got {_type_name(item)}", display, start)
        else:
            yield start, item
        pos = ws.match(text, end).end()
        if text.startswith(",", pos):
            pos = ws.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            return
        else:
            yield line_at(pos), _FatalError("expected ',' or ']' after an array item", display, line_at(pos))
            return


#: Longest CSV/TSV field read, in characters (the csv module's default, 131072, is lower than real
#: dialogues can be; JSONL lines have no limit of their own). A longer field stops the file with an error.
CSV_FIELD_LIMIT = 1 << 27


def _csv_rows(stream: Iterable[bytes], display: str, delimiter: str) -> _Rows:
    bad_lines: dict[int, str] = {}
    if csv.field_size_limit() < CSV_FIELD_LIMIT:  # process-wide; only ever raised
        csv.field_size_limit(CSV_FIELD_LIMIT)

    def lines() -> Iterator[str]:
        for n, raw in enumerate(stream, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad_lines[n] = _utf8_error(raw, err)
                text = raw.decode("utf-8", errors="replace")
            yield text.removeprefix("\ufeff") if n == 1 else text

    reader = csv.reader(lines(), delimiter=delimiter)
    try:
        header = next(reader, None)
    except (csv.Error, EOFError, OSError, zlib.error) as err:
        raise DataFormatError(f"unreadable CSV header ({err})", display, 1) from None
    if header is None:  # empty file
        return _Rows(display, iter(()))
    if 1 in bad_lines:
        raise DataFormatError(bad_lines[1], display, 1)
    header = [h.strip() for h in header]
    seen = set()
    for name in header:
        if name in seen:
            raise DataFormatError("duplicate column in header", display, 1, name)
        seen.add(name)

    def items() -> Iterator[tuple[int, Row | DataFormatError]]:
        end = reader.line_num
        while True:
            start = end + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except (csv.Error, EOFError, OSError, zlib.error) as err:
                yield start, _FatalError(f"unreadable CSV ({err})", display, start)
                return
            end = reader.line_num
            bad = next((n for n in range(start, end + 1) if n in bad_lines), None)
            if bad is not None:
                yield bad, DataFormatError(bad_lines[bad], display, bad)
            elif not values or (len(values) == 1 and not values[0].strip() and len(header) > 1):
                continue  # blank line
            elif len(values) > len(header):
                yield start, DataFormatError(
                    f"row has {len(values)} values, the header has {len(header)} columns", display, start)
            else:
                yield start, dict(zip(header, values))

    return _Rows(display, items(), columns=header)


def _open_file(path: Path, display: str) -> _Rows:
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {display}")
    if path.is_dir():
        raise IsADirectoryError(f"expected a data file, got a directory: {display}")
    stack = contextlib.ExitStack()
    raw = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by _Rows.close after reading
    stream: io.BufferedIOBase = raw
    if raw.peek(2)[:2] == b"\x1f\x8b":
        stream = stack.enter_context(io.BufferedReader(gzip.GzipFile(fileobj=raw)))
    name = path.name.lower().removesuffix(".gz")
    try:
        if name.endswith((".csv", ".tsv")):
            rows = _csv_rows(stream, display, "\t" if name.endswith(".tsv") else ",")
            rows.close = stack.close
            return rows
        try:
            head = stream.peek(64)[:64].lstrip()
        except (EOFError, OSError, zlib.error) as err:
            raise DataFormatError(f"unreadable data ({err})", display, 1) from None
        if head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"["):
            try:
                data = stream.read()
            except (EOFError, OSError, zlib.error) as err:
                raise DataFormatError(f"unreadable data ({err})", display) from None
            return _Rows(display, _json_array_items(data, display), close=stack.close)
        return _Rows(display, _jsonl_items(stream, display), close=stack.close)
    except BaseException:
        stack.close()
        raise


def parse_hub_source(source: str) -> tuple[str, dict[str, str]]:
    """``"hub:NAME?split=test&data_dir=x&name=cfg&revision=r&data_files=p"`` -> ``(NAME, options)``
    (``NAME`` may be a ``datasets`` builder such as ``parquet`` or ``json`` with ``data_files``)."""
    spec = source.removeprefix("hub:")
    name, _, query = spec.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=False, strict_parsing=False))
    unknown = set(options) - {"split", "data_dir", "name", "revision", "data_files"}
    if unknown or not name.strip():
        raise ValueError(
            f"bad hub source {source!r}: expected "
            "hub:NAME[?split=..&data_dir=..&name=..&revision=..&data_files=..]")
    options.setdefault("split", "train")
    return name.strip(), options


def _is_hub_source(source: str) -> bool:
    if source.startswith("hub:"):
        return True
    name = source.partition("?")[0]
    known = {k.lower() for k in KNOWN_HUB_DATASETS}
    return name.lower() in known and not Path(source).exists()


def _open_hub(source: str, limit: int | None) -> _Rows:
    import datasets

    name, options = parse_hub_source(source)
    split = options.pop("split")
    dataset = datasets.load_dataset(name, split=split, streaming=limit is not None, **options)
    return _rows_from_iterable(dataset, f"{name}[{split}]")


def _rows_from_iterable(rows: Iterable[Any], display: str) -> _Rows:
    def items() -> Iterator[tuple[int, Row | DataFormatError]]:
        for n, row in enumerate(rows, 1):
            if isinstance(row, Mapping):
                yield n, row
            else:
                yield n, DataFormatError(f"expected a mapping, got {_type_name(row)}", display, n)

    generator = items()  # closed after reading: a half-read streaming dataset stops its workers then
    return _Rows(display, generator, close=generator.close)


#: File suffixes read through ``datasets`` (builder name).
DATASETS_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}


def saved_dataset_splits(path: Path) -> list[str] | None:
    """Splits of a ``DatasetDict.save_to_disk`` folder, ``[]`` for a ``Dataset.save_to_disk`` folder, None
    for anything else."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits")
        except (OSError, ValueError, AttributeError):
            splits = None
        return [str(s) for s in splits] if isinstance(splits, list) else sorted(
            p.name for p in path.iterdir() if (p / "state.json").is_file())
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return []
    return None


def _open_saved(path: Path, display: str) -> _Rows:
    """A ``save_to_disk`` folder, through ``datasets.load_from_disk``."""
    splits = saved_dataset_splits(path)
    if splits:
        if len(splits) > 1:
            raise DataFormatError(f"a DatasetDict folder with splits {', '.join(splits)}: name one as "
                                  f"{display.rstrip('/')}/{splits[0]}", display)
        path, display = path / splits[0], f"{display.rstrip('/')}/{splits[0]}"
    import datasets

    dataset = datasets.load_from_disk(str(path))
    return _rows_from_iterable(dataset, display)


def _open_with_datasets(builder: str, path: Path, display: str) -> _Rows:
    """A Parquet / Arrow file, streamed through ``datasets.load_dataset`` (no cache is written)."""
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {display}")
    import datasets

    try:
        dataset = datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True)
    except Exception as err:  # noqa: BLE001 - pyarrow / datasets raise many kinds for a bad file
        raise DataFormatError(f"unreadable {builder} file ({type(err).__name__}: {err})", display) from None
    return _rows_from_iterable(dataset, display)


def _open_path(path: Path, display: str) -> _Rows:
    if path.is_dir() and saved_dataset_splits(path) is not None:
        return _open_saved(path, display)
    builder = DATASETS_SUFFIXES.get(path.suffix.lower())
    if builder is not None:
        return _open_with_datasets(builder, path, display)
    return _open_file(path, display)


def glob_files(source: Source) -> list[str] | None:
    """The files a ``data_files=``-style glob matches (sorted; resolved by ``datasets``, which also skips
    hidden files), or None when ``source`` is not a glob (or names an existing path)."""
    if not isinstance(source, str) or source.startswith(("builtin:", "hub:")) or not any(c in source for c in "*?["):
        return None
    if Path(source).expanduser().exists() or _is_hub_source(source):
        return None
    from datasets.data_files import resolve_pattern

    try:
        files = resolve_pattern(str(Path(source).expanduser()), base_path=".")
    except FileNotFoundError:
        raise FileNotFoundError(f"no data files match {source}") from None
    files = sorted(f.removeprefix("file://") for f in files)
    if not files:
        raise FileNotFoundError(f"no data files match {source}")
    return files


def _is_new(record: T, key: Callable[[T], str] | None, seen: set[str], report: ReadReport) -> bool:
    """Deduplication by ``key`` (None: keep everything): True the first time a key is seen, else the
    duplicate is counted in ``report``."""
    if key is None:
        return True
    k = key(record)
    if k in seen:
        report.duplicates += 1
        return False
    seen.add(k)
    return True


def _read_glob(files: list[str], source: str, read: Callable[..., Records[T]], limit: int | None,
               key: Callable[[T], str] | None = None) -> Records[T]:
    """Every file of a glob read by ``read(file, limit=...)``, combined into one list and one report."""
    report = ReadReport(source=source)
    out: Records[T] = Records(report=report)
    seen: set[str] = set()
    formats = []
    for path in files:
        remaining = None if limit is None else limit - len(out)
        if remaining == 0:
            report.complete = False
            break
        part = read(path, limit=remaining)
        formats.append(part.report.format)
        report.rows += part.report.rows
        report.duplicates += part.report.duplicates
        report.errors += part.report.errors
        report.complete = report.complete and part.report.complete
        for record in part:
            if _is_new(record, key, seen, report):
                out.append(record)
    report.format = "+".join(dict.fromkeys(f for f in formats if f))
    report.records = len(out)
    return out


def _open_source(source: Source, kind: str, limit: int | None) -> _Rows:
    if isinstance(source, Path):
        return _open_path(source, str(source))
    if isinstance(source, str):
        if source.startswith("builtin:"):
            from molma.data.builtin import builtin_file

            path = builtin_file(source, kind)
            return _open_file(path, f"builtin:{path.name}")
        if _is_hub_source(source):
            return _open_hub(source, limit)
        return _open_path(Path(source).expanduser(), source)
    if isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
        raise TypeError(f"source: expected a path, a source name or an iterable of rows, got {source!r:.60}")
    return _rows_from_iterable(source, "<rows>")


# ------------------------------------------------------------------------------------------- reading


def _peek_fields(rows: _Rows) -> tuple[list[str] | None, int | None, list[tuple[int, Any]]]:
    """Field names to detect the format from (CSV header, else the first object row), its line and the
    items consumed while looking (to be replayed)."""
    if rows.columns is not None:
        return rows.columns, 1, []
    consumed = []
    for line, item in rows.items:
        consumed.append((line, item))
        if isinstance(item, _FatalError):
            break
        if not isinstance(item, DataFormatError):
            return list(item), line, consumed
    return None, None, consumed


def _detect(rows: _Rows, fields: list[str], line: int | None, detect: Callable[[list[str]], T | None],
            what: str, hint: str) -> T:
    """``detect(fields)``; no match or several are errors naming the source, the line and the fields."""
    try:
        detected = detect(fields)
    except ValueError as err:
        raise DataFormatError(f"{err} (fields: {', '.join(fields)})", rows.display, line) from None
    if detected is None:
        raise DataFormatError(f"cannot detect {what} from fields [{', '.join(fields)}]; {hint}", rows.display, line)
    return detected


def _check_header(rows: _Rows, needed: Iterable[str | None]) -> None:
    if rows.columns is None or not rows.columns:
        return
    for name in needed:
        if name is not None and name not in rows.columns:
            raise DataFormatError(
                f"column not in the header (columns: {', '.join(rows.columns)})", rows.display, 1, name)


def _consume(
    rows: _Rows,
    replay: list[tuple[int, Any]],
    convert: Callable[[Row, str], T],
    report: ReadReport,
    skip_invalid: bool,
    limit: int | None,
    key: Callable[[T], str] | None = None,
) -> Records[T]:
    out: Records[T] = Records(report=report)
    seen: set[str] = set()
    for line, item in _chain(replay, rows.items):
        if limit is not None and len(out) >= limit:
            report.complete = False
            break
        report.rows += 1
        if isinstance(item, DataFormatError):
            err = item
        else:
            try:
                record = convert(item, f"{rows.display}:{line}")
            except DataFormatError as exc:
                err = exc.located(rows.display, line)
            else:
                if _is_new(record, key, seen, report):
                    out.append(record)
                continue
        if not skip_invalid:
            raise err
        report.errors.append(err)
        if isinstance(err, _FatalError):
            report.complete = False
            break
    if report.rows == 0 and report.complete and limit != 0:
        what = (f"it holds only a header (columns: {', '.join(rows.columns)})" if rows.columns
                else "it is empty (no rows: an empty or blank file, or an empty JSON array)")
        raise DataFormatError(f"no records: {what}", rows.display)
    report.records = len(out)
    if report.errors or (not report.complete and limit is None):
        log.warning("%s", report.summary())
    return out


def _chain(*iterables: Iterable[T]) -> Iterator[T]:
    for it in iterables:
        yield from it


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit: expected a non-negative integer or None, got {limit!r}")


def read_preferences(
    source: Source,
    format: str = "auto",
    objective: str | None = None,
    columns: Mapping[str, str] | Sequence[str] | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
) -> Records[PreferencePair]:
    """Preference pairs from ``source`` (see the module docstring for sources and formats).

    ``objective`` ("help"/"safe") selects PKU-SafeRLHF's label (other formats carry one label and
    ignore it). ``columns`` names the prompt/chosen/rejected columns of a plain file: a mapping such as
    ``{"prompt": "question", "chosen": "good", "rejected": "bad"}`` or three names in that order.
    ``limit`` caps the number of pairs returned. Bad rows raise :class:`DataFormatError`, or with
    ``skip_invalid=True`` are skipped and listed in ``result.report``.
    """
    _check_limit(limit)
    fmt = normalize_format(format, "pairs")
    files = glob_files(source)
    if files is not None:
        return _read_glob(files, str(source), lambda path, limit: read_preferences(
            path, format=format, objective=objective, columns=columns, skip_invalid=skip_invalid, limit=limit),
            limit)
    if columns is not None and fmt == "auto":
        fmt = "columns"
    if objective is not None:
        objective = normalize_objective(objective)
    rows = _open_source(source, "pairs", limit)
    try:
        fields, line, replay = _peek_fields(rows)
        if fmt == "auto" and fields is not None:
            fmt = _detect(rows, fields, line, detect_pair_format, "a preference format",
                          f"pass format= one of {list(PAIR_FORMATS)} (with columns= for 'columns')")
        if fmt == "pku" and objective is None:
            raise ValueError(f"{rows.display}: PKU-SafeRLHF needs objective='help' (better_response_id) "
                             "or 'safe' (safer_response_id)")
        _check_header(rows, _needed_fields(fmt, "pairs", objective=objective, columns=columns))
        report = ReadReport(source=rows.display, format=fmt)

        def convert(row: Row, where: str) -> PreferencePair:
            return pair_from_row(row, fmt, objective=objective, columns=columns, source=where)

        return _consume(rows, replay, convert, report, skip_invalid, limit)
    finally:
        rows.close()


def read_prompts(
    source: Source,
    format: str = "auto",
    tag: str = "",
    column: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
    first_turn: bool = False,
    dedupe: bool = False,
) -> Records[Prompt]:
    """Prompts from ``source``, each tagged ``tag`` (see the module docstring for sources and formats).

    HH files give the dialogue context of each pair (everything up to the final ``\\n\\nAssistant:``);
    ``first_turn=True`` keeps only the first Human turn (HH's red-teaming prompts). ``column`` names the
    prompt column of a plain file (default: the first of prompt, question, query, text present).
    ``dedupe=True`` drops repeated prompt texts (counted in ``report.duplicates``). ``limit`` caps the
    number returned. Bad rows raise :class:`DataFormatError`, or with ``skip_invalid=True`` are skipped
    and listed in ``result.report``.
    """
    _check_limit(limit)
    fmt = normalize_format(format, "prompts")
    files = glob_files(source)
    if files is not None:
        return _read_glob(files, str(source), lambda path, limit: read_prompts(
            path, format=format, tag=tag, column=column, skip_invalid=skip_invalid, limit=limit,
            first_turn=first_turn, dedupe=dedupe), limit, key=(lambda p: p.text) if dedupe else None)
    if column is not None and fmt == "auto":
        fmt = "columns"
    rows = _open_source(source, "prompts", limit)
    try:
        fields, line, replay = _peek_fields(rows)
        if fmt == "auto" and fields is not None:
            fmt, column = _detect(rows, fields, line, detect_prompt_format, "a prompt format",
                                  f"pass format= one of {list(PROMPT_FORMATS)} or column=")
        _check_header(rows, _needed_fields(fmt, "prompts", column=column))
        report = ReadReport(source=rows.display, format=fmt)

        def convert(row: Row, where: str) -> Prompt:
            return prompt_from_row(row, fmt, tag=tag, column=column, first_turn=first_turn, source=where)

        key = (lambda p: p.text) if dedupe else None
        return _consume(rows, replay, convert, report, skip_invalid, limit, key=key)
    finally:
        rows.close()


def detect_kind(source: Source) -> str:
    """``"pairs"`` when the source's fields match a preference format, else ``"prompts"``.

    ``builtin:`` names decide by name (``builtin:help`` and ``builtin:pairs_*`` are pairs). This reads the
    first row: pass a re-iterable (list, ``datasets.Dataset``), not a one-shot iterator.
    """
    if isinstance(source, str) and source.startswith("builtin:"):
        return "prompts" if source.removeprefix("builtin:").startswith("prompts") else "pairs"
    files = glob_files(source)
    if files is not None:
        return detect_kind(files[0])
    rows = _open_source(source, "pairs", None)
    try:
        fields, _, _ = _peek_fields(rows)
    finally:
        rows.close()
    try:
        return "pairs" if fields is not None and detect_pair_format(fields) else "prompts"
    except ValueError:
        return "pairs"
