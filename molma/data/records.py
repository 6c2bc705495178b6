"""The two record kinds every dataset is read into."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with two responses, ``chosen`` preferred over ``rejected`` for one objective.

    ``prompt`` keeps the whole context (multi-turn dialogues included) up to the reply being judged;
    ``chosen``/``rejected`` are only the final replies. ``source`` says where the record came from
    (``file:line`` or a dataset name) so errors downstream can point back to it.
    """

    prompt: str
    chosen: str
    rejected: str
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Prompt:
    """An RL / evaluation prompt; ``tag`` names the objective pool it came from (e.g. help, safe)."""

    text: str
    tag: str = ""
    source: str = field(default="", compare=False)
