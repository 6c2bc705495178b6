"""The builtin dataset shipped with molma (``molma/data/builtin/``): loaders only.

Files (JSONL; see ``molma/data/builtin/README.md`` for how they were written):

- ``prompts_help.jsonl``, ``prompts_safe.jsonl``: ``{"prompt": ...}`` per line, RL / evaluation prompts;
- ``pairs_help.jsonl``, ``pairs_safe.jsonl``: ``{"prompt", "chosen", "rejected"}`` per line, reward-model
  training pairs (help: chosen is more helpful; safe: chosen is safer).

As sources for the readers they are named ``builtin:help`` / ``builtin:safe`` (pairs for
:func:`~molma.data.readers.read_preferences`, prompts for :func:`~molma.data.readers.read_prompts`) or
explicitly ``builtin:pairs_help``, ``builtin:prompts_safe``, ...
"""

from __future__ import annotations

from pathlib import Path

from molma.data.readers import Records, normalize_objective, read_preferences, read_prompts
from molma.data.records import PreferencePair, Prompt

BUILTIN_DIR = Path(__file__).with_name("builtin")
BUILTIN_TAGS = ("help", "safe")
BUILTIN_NAMES = tuple(f"{kind}_{tag}" for kind in ("pairs", "prompts") for tag in BUILTIN_TAGS)


def builtin_file(name: str, kind: str = "pairs") -> Path:
    """Path of a builtin file from ``help``/``safe`` (with ``kind`` 'pairs' or 'prompts') or a full name
    such as ``pairs_help``; a ``builtin:`` prefix and ``.jsonl`` suffix are optional."""
    key = name.removeprefix("builtin:").removesuffix(".jsonl").strip().lower()
    if key in BUILTIN_TAGS:
        if kind not in ("pairs", "prompts"):
            raise ValueError(f"kind: expected 'pairs' or 'prompts', got {kind!r}")
        key = f"{kind}_{key}"
    if key not in BUILTIN_NAMES:
        raise ValueError(
            f"unknown builtin dataset {name!r}; expected one of {[*BUILTIN_TAGS, *BUILTIN_NAMES]}")
    path = BUILTIN_DIR / f"{key}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"builtin dataset file missing: {path} (molma installed without its data?)")
    return path


def load_builtin_preferences(objective: str) -> Records[PreferencePair]:
    """The builtin preference pairs for ``objective`` ("help" or "safe"); ``.report`` says what was read."""
    tag = normalize_objective(objective)
    return read_preferences(f"builtin:pairs_{tag}", format="columns")


def load_builtin_prompts(tag: str | None = None) -> list[Prompt]:
    """The builtin prompts tagged ``tag`` ("help" or "safe"), or both sets (help first) when None."""
    tags = BUILTIN_TAGS if tag is None else (normalize_objective(tag.removeprefix("prompts_")),)
    prompts: list[Prompt] = []
    for t in tags:
        prompts.extend(read_prompts(f"builtin:prompts_{t}", format="columns", column="prompt", tag=t))
    return prompts
