"""HH-RLHF harmless-base as both a safety preference set and a red-teaming prompt pool, split so that
evaluation never meets a prompt that training saw.

Each HH dialogue starts with a real red-teaming request (its first Human turn). Dialogues are grouped by
that first turn (whitespace- and case-normalised, so the same request written twice stays on one side)
and whole groups go to ``train`` or ``validation``:

- the reward model trains on the train dialogues' pairs and is scored on the validation dialogues' pairs;
- the RL policy's safety prompts are the train dialogues' first turns (deduplicated);
- the held-out evaluation prompts are the validation dialogues' first turns.

So no held-out prompt text (after normalisation) is ever a training prompt, and the safety judge is never
trained on a dialogue whose opening request is used to evaluate the policy.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

from molma.data.chat import to_messages
from molma.data.mixing import allocate
from molma.data.records import PreferencePair, Prompt

log = logging.getLogger(__name__)


def first_human_turn(dialogue_prompt: str) -> str:
    """The first user message of an HH context (``\\n\\nHuman: ...\\n\\nAssistant: ...``)."""
    users = [m["content"] for m in to_messages(dialogue_prompt) if m["role"] == "user"]
    if not users or not users[0].strip():
        raise ValueError(f"no Human turn in dialogue {dialogue_prompt[:80]!r}")
    return users[0].strip()


def normalise_prompt(text: str) -> str:
    """The grouping key of a prompt: lower case, runs of whitespace collapsed."""
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass
class HHSplit:
    """Pairs and first-turn prompts of the train and validation dialogue groups (see module docstring)."""

    train_pairs: list[PreferencePair]
    validation_pairs: list[PreferencePair]
    train_prompts: list[Prompt]
    heldout_prompts: list[Prompt]
    dropped: int = 0  # pairs left out because a reply is empty (a reward model cannot compare them)


def _dedup_prompts(pairs: list[PreferencePair], tag: str) -> list[Prompt]:
    seen: set[str] = set()
    prompts = []
    for pair in pairs:
        text = first_human_turn(pair.prompt)
        key = normalise_prompt(text)
        if key not in seen:
            seen.add(key)
            prompts.append(Prompt(text=text, tag=tag, source=pair.source))
    return prompts


def split_hh_dialogues(pairs: list[PreferencePair], validation_fraction: float = 0.2, seed: int = 0,
                       tag: str = "safe") -> HHSplit:
    """Split HH pairs by first Human turn into train / validation groups (seeded, deterministic)."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    group_of = [normalise_prompt(first_human_turn(pair.prompt)) for pair in pairs]
    keys = sorted(set(group_of))
    random.Random(seed).shuffle(keys)
    n_val = allocate(len(keys), {"train": 1.0 - validation_fraction, "validation": validation_fraction})[
        "validation"]
    val_keys = set(keys[:n_val])
    train = [p for p, g in zip(pairs, group_of) if g not in val_keys]
    val = [p for p, g in zip(pairs, group_of) if g in val_keys]
    return HHSplit(train, val, _dedup_prompts(train, tag), _dedup_prompts(val, tag))


def read_hh_split(path: str | Path, validation_fraction: float = 0.2, seed: int = 0, tag: str = "safe",
                  skip_invalid: bool = True) -> HHSplit:
    """Read an HH-RLHF file (see :func:`molma.data.read_preferences`) and split it by dialogue.

    ``skip_invalid``: HH files hold a few pairs with an empty reply; they are skipped and counted by the
    reader (its report is logged)."""
    from molma.data.readers import read_preferences

    pairs = list(read_preferences(str(path), objective="safe", skip_invalid=skip_invalid))
    usable = [p for p in pairs if p.chosen.strip() and p.rejected.strip()]
    if not usable:
        raise ValueError(f"{path}: no preference pairs with two non-empty replies")
    if len(usable) < len(pairs):
        log.warning("%s: %d of %d pairs have an empty reply and are left out (%s)", path,
                    len(pairs) - len(usable), len(pairs),
                    ", ".join(p.source for p in pairs if not (p.chosen.strip() and p.rejected.strip()))[:200])
    split = split_hh_dialogues(usable, validation_fraction, seed, tag)
    split.dropped = len(pairs) - len(usable)
    return split


def write_prompts(path: str | Path, prompts: list[Prompt]) -> Path:
    """Prompts as JSONL (``{"prompt": ..., "tag": ...}``), readable by :func:`molma.data.read_prompts`."""
    import json

    from molma.atomic import write_text_atomic

    path = Path(path)
    write_text_atomic(path, "".join(json.dumps({"prompt": p.text, "tag": p.tag}, ensure_ascii=False) + "\n"
                                    for p in prompts))
    return path
