"""Dataset inspection: counts, text-length statistics, multi-turn share, first records and every error.

Used by ``molma data inspect``; reads with ``skip_invalid=True`` so that all bad rows are reported, not
only the first. Preference pairs are judged by the rule reward-model training and evaluation apply
(:func:`molma.data.readers.pair_problem`: an empty reply, as some HH-RLHF dialogues have, makes a pair
invalid), so ``molma data inspect`` and ``molma rm train`` agree on what is valid.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from molma.data.chat import to_messages
from molma.data.readers import (
    DataFormatError,
    ReadReport,
    Source,
    detect_kind,
    pair_problem,
    read_preferences,
    read_prompts,
)
from molma.data.records import PreferencePair, Prompt


@dataclass
class LengthStats:
    """Character lengths of one text field."""

    mean: float
    min: int
    max: int

    @classmethod
    def of(cls, texts: Sequence[str]) -> LengthStats:
        lengths = [len(t) for t in texts]
        if not lengths:
            return cls(0.0, 0, 0)
        return cls(sum(lengths) / len(lengths), min(lengths), max(lengths))


@dataclass
class Inspection:
    """What :func:`inspect_data` found; ``to_dict()`` is JSON-ready."""

    source: str
    kind: str
    format: str
    records: int
    distinct_prompts: int
    multi_turn: int
    lengths: dict[str, LengthStats]
    tags: dict[str, int]
    examples: list[PreferencePair | Prompt]
    report: ReadReport
    empty_replies: dict[str, int] = field(default_factory=dict)

    @property
    def multi_turn_share(self) -> float:
        """Share of records whose prompt has more than one Human turn."""
        return self.multi_turn / self.records if self.records else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "format": self.format,
            "records": self.records,
            "rows": self.report.rows,
            "complete": self.report.complete,
            "distinct_prompts": self.distinct_prompts,
            "duplicates_dropped": self.report.duplicates,
            "multi_turn": self.multi_turn,
            "multi_turn_share": self.multi_turn_share,
            "lengths": {k: asdict(v) for k, v in self.lengths.items()},
            "empty_replies": self.empty_replies,
            "tags": self.tags,
            "examples": [asdict(r) for r in self.examples],
            "errors": [
                {"path": e.path, "line": e.line, "field": e.field, "reason": e.reason, "message": str(e)}
                for e in self.report.errors
            ],
        }


def _located(err: DataFormatError, source: str) -> DataFormatError:
    """``err`` (made with a pair's ``file:line`` source as its path) with the line split off."""
    path, sep, line = source.rpartition(":")
    if sep and line.isdigit():
        return DataFormatError(err.reason, path, int(line), err.field)
    return err


def _is_multi_turn(prompt: str) -> bool:
    return sum(m["role"] == "user" for m in to_messages(prompt)) > 1


def inspect_data(
    source: Source,
    kind: str = "auto",
    format: str = "auto",
    objective: str | None = None,
    columns: Mapping[str, str] | Sequence[str] | None = None,
    column: str | None = None,
    first_turn: bool = False,
    n: int = 3,
    limit: int | None = None,
) -> Inspection:
    """Read ``source`` as pairs or prompts (``kind`` 'pairs', 'prompts' or 'auto' from its fields),
    skipping and collecting bad rows, and summarize it. Source-level problems (missing file, missing
    CSV column, undetectable format) still raise."""
    if kind == "auto":
        if columns is not None or objective is not None:
            kind = "pairs"
        elif column is not None or first_turn:
            kind = "prompts"
        else:
            kind = detect_kind(source)
    if kind == "pairs":
        read = read_preferences(source, format=format, objective=objective, columns=columns,
                                skip_invalid=True, limit=limit)
        report = read.report
        empty = {"chosen": sum(not p.chosen.strip() for p in read),
                 "rejected": sum(not p.rejected.strip() for p in read)}
        pairs = []
        for pair in read:  # the rule of reward-model training (molma.rewards.validate_pairs)
            problem = pair_problem(pair, pair.source)
            if problem is None:
                pairs.append(pair)
            else:
                report.errors.append(_located(problem, pair.source))
        if len(pairs) < len(read):
            report.errors.sort(key=lambda e: (e.line is None, e.line or 0))
            report.records = len(pairs)
        prompts = [p.prompt for p in pairs]
        lengths = {
            "prompt": LengthStats.of(prompts),
            "chosen": LengthStats.of([p.chosen for p in pairs]),
            "rejected": LengthStats.of([p.rejected for p in pairs]),
        }
        records: list[Any] = pairs
        tags: dict[str, int] = {}
    elif kind == "prompts":
        found = read_prompts(source, format=format, column=column, first_turn=first_turn,
                             skip_invalid=True, limit=limit)
        report = found.report
        prompts = [p.text for p in found]
        lengths = {"prompt": LengthStats.of(prompts)}
        empty = {}
        records = found
        tags = dict(Counter(p.tag for p in found if p.tag))
    else:
        raise ValueError(f"kind: expected 'auto', 'pairs' or 'prompts', got {kind!r}")
    return Inspection(
        source=report.source,
        kind=kind,
        format=report.format,
        records=len(records),
        distinct_prompts=len(set(prompts)),
        multi_turn=sum(_is_multi_turn(p) for p in prompts),
        lengths=lengths,
        tags=tags,
        examples=list(records[: max(0, n)]),
        report=report,
        empty_replies=empty,
    )


def _show(text: str, width: int = 300) -> str:
    shown = json.dumps(text[:width], ensure_ascii=False)
    return shown + (f" ... (+{len(text) - width} chars)" if len(text) > width else "")


def format_inspection(result: Inspection, max_errors: int = 20) -> str:
    """Human-readable report; ``max_errors=0`` lists every error."""
    r = result.report
    lines = [
        f"source:   {result.source}",
        f"kind:     {result.kind} (format {result.format})",
        f"records:  {result.records} valid of {r.rows} rows; {r.skipped} invalid"
        + (f"; {r.duplicates} duplicates dropped" if r.duplicates else "")
        + ("" if r.complete else "; stopped before the end of the source"),
        f"prompts:  {result.distinct_prompts} distinct; multi-turn {result.multi_turn} "
        f"({result.multi_turn_share:.1%})",
        "lengths (characters):",
    ]
    for name, s in result.lengths.items():
        lines.append(f"  {name:<9} mean {s.mean:8.1f}   min {s.min:6d}   max {s.max:6d}")
    if any(result.empty_replies.values()):
        lines.append("empty replies: " + ", ".join(f"{k} {v}" for k, v in result.empty_replies.items())
                     + " (invalid for reward models; molma rm train skips such pairs with skip_invalid=true)")
    if result.tags:
        lines.append("tags:     " + ", ".join(f"{k} {v}" for k, v in sorted(result.tags.items())))
    for i, record in enumerate(result.examples, 1):
        lines.append(f"--- record {i} ({record.source})")
        if isinstance(record, PreferencePair):
            lines += [f"  prompt:   {_show(record.prompt)}", f"  chosen:   {_show(record.chosen)}",
                      f"  rejected: {_show(record.rejected)}"]
        else:
            lines.append(f"  text: {_show(record.text)}")
    if r.errors:
        lines.append(f"errors ({r.skipped}):")
        shown = r.errors if max_errors <= 0 else r.errors[:max_errors]
        lines += [f"  {err}" for err in shown]
        if len(shown) < r.skipped:
            lines.append(f"  ... {r.skipped - len(shown)} more (--max-errors 0 lists all)")
    else:
        lines.append("errors:   none")
    return "\n".join(lines)
