"""Preference data for reward models: resolve a data spec to pairs, and check pairs before training.

A data spec is whatever :func:`molma.data.read_preferences` reads (a file path, ``builtin:help``,
``builtin:safe``, ``hub:...``), or ``builtin`` (the builtin pairs of the objective being trained), with
optional suffixes ``@OBJECTIVE`` (which label of a multi-label set such as PKU-SafeRLHF: ``pku.jsonl@safe``)
and ``[start:stop]`` selecting pairs by position, e.g. ``hh.jsonl.gz[:1500]`` and ``hh.jsonl.gz[1500:]``
for a train / held-out split of one file. Full form: ``SOURCE[@OBJECTIVE][[start:stop]]``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from molma.data.records import PreferencePair

log = logging.getLogger(__name__)

_SLICE = re.compile(r"^(?P<src>.+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def parse_data_spec(spec: str) -> tuple[str, str | None, slice | None]:
    """``"pku.jsonl@safe[10:20]"`` -> ``("pku.jsonl", "safe", slice(10, 20))``; absent parts are None.

    An existing file whose name merely looks like a suffix is taken as it is.
    """
    spec = spec.strip()
    if Path(spec).exists():
        return spec, None, None
    src, sl = spec, None
    m = _SLICE.match(spec)
    if m is not None:
        src = m["src"]
        sl = slice(int(m["start"]) if m["start"] else None, int(m["stop"]) if m["stop"] else None)
    objective = None
    head, sep, tail = src.rpartition("@")
    if sep and head and _pair_objective(tail) is not None:
        src, objective = head, _pair_objective(tail)
    return src, objective, sl


def data_label(spec: str) -> str:
    """Short name for tables: the file name without ``.jsonl.gz``-like suffixes, plus any suffixes."""
    src, objective, sl = parse_data_spec(spec)
    name = src if src.startswith(("builtin", "hub:")) else Path(src).name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv"):
        name = name.removesuffix(suffix)
    if objective is not None:
        name += f"@{objective}"
    if sl is not None:
        name += f"[{'' if sl.start is None else sl.start}:{'' if sl.stop is None else sl.stop}]"
    return name


def _pair_objective(objective: str | None) -> str | None:
    """The objective to pass to the readers (help/safe, or None for other objective names)."""
    if objective is None:
        return None
    from molma.data import normalize_objective

    try:
        return normalize_objective(objective)
    except ValueError:
        return None


def load_pairs(spec: str, objective: str | None = None, format: str = "auto", skip_invalid: bool = False,
               limit: int | None = None) -> list[PreferencePair]:
    """Pairs from a data spec (see the module docstring); ``limit`` caps the count after slicing.

    ``objective`` (overridden by an ``@OBJECTIVE`` suffix) resolves ``builtin`` and selects
    PKU-SafeRLHF's label. Bad rows raise :class:`molma.data.DataFormatError` naming file, line and field
    (or are skipped with ``skip_invalid``).
    """
    from molma.data import read_preferences

    src, spec_objective, sl = parse_data_spec(spec)
    obj = spec_objective or _pair_objective(objective)
    if src == "builtin":
        if obj is None:
            raise ValueError(f"data 'builtin' needs objective help or safe (got {objective!r}); "
                             "name the set explicitly: builtin:help or builtin:safe")
        src = f"builtin:{obj}"
    read_limit = None
    if sl is None and limit is not None:
        read_limit = limit
    elif sl is not None and (sl.start or 0) >= 0 and sl.stop is not None and sl.stop >= 0:
        read_limit = sl.stop
    fmt = "columns" if src.startswith("builtin:") and format == "auto" else format
    pairs = list(read_preferences(src, format=fmt, objective=obj, skip_invalid=skip_invalid,
                                  limit=read_limit))
    if sl is not None:
        pairs = pairs[sl]
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise ValueError(f"data {spec!r}: no preference pairs")
    return pairs


def validate_pairs(pairs: Sequence[PreferencePair], skip_invalid: bool = False,
                   where: str = "pairs") -> tuple[list[PreferencePair], int]:
    """Check in-memory pairs for training/evaluation: text present, not empty, chosen != rejected.

    Returns ``(valid_pairs, n_skipped)``. A bad pair raises :class:`molma.data.DataFormatError` naming
    its source (``file:line`` when it came from a reader) or index and the field, unless
    ``skip_invalid`` (then it is dropped and counted, with one warning).
    """
    from molma.data import DataFormatError
    from molma.data.readers import pair_problem

    valid: list[PreferencePair] = []
    errors: list[DataFormatError] = []
    for i, pair in enumerate(pairs):
        origin = getattr(pair, "source", "") or f"{where}[{i}]"
        err = pair_problem(pair, origin)  # the rule `molma data inspect` counts invalid pairs by
        if err is None:
            valid.append(pair)
        elif skip_invalid:
            errors.append(err)
        else:
            raise err
    if errors:
        log.warning("%s: skipped %d invalid pair(s) of %d; first: %s", where, len(errors), len(pairs),
                    errors[0])
    if not valid:
        raise ValueError(f"{where}: no valid preference pairs"
                         + (f" ({len(errors)} invalid, first: {errors[0]})" if errors else ""))
    return valid, len(errors)


# ------------------------------------------------------------------------ what a reward model trained on

TRAINING_PAIRS_FILE = "molma_rm_train_pairs.json"
"""Beside a reward-model checkpoint: hashes of its training pairs and prompts (for overlap checks)."""


def _digest(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("\x1f".join(p.strip() for p in parts).encode("utf-8")).hexdigest()[:16]


def pair_key(pair: PreferencePair) -> str:
    """Hash of a pair's (prompt, chosen, rejected), whitespace at the ends ignored."""
    return _digest(pair.prompt, pair.chosen, pair.rejected)


def prompt_key(prompt: str) -> str:
    """Hash of a prompt, whitespace at the ends ignored."""
    return _digest(prompt)


def training_record(pairs: Sequence[PreferencePair]) -> dict:
    """The content of :data:`TRAINING_PAIRS_FILE` for ``pairs``."""
    return {"hash": "sha256 of the stripped texts joined by U+001F, first 16 hex digits",
            "pairs": sorted({pair_key(p) for p in pairs}), "prompts": sorted({prompt_key(p.prompt) for p in pairs})}
