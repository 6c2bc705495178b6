"""Prompt mixing (e.g. the paper's 60 % help / 40 % safe RL prompt set) and train/valid/test splits.

Both are deterministic given ``seed`` and independent of dict insertion order. Counts are exact up to
rounding: the largest-remainder method gives every part ``floor(n * p)`` or one more, summing to ``n``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from molma.data.records import PreferencePair, Prompt

T = TypeVar("T")
_TOLERANCE = 1e-6


def _check_fractions(values: Mapping[str, float], what: str) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{what}: {key!r} must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError(f"{what}: {key!r} must be >= 0, got {value!r}")
    total = math.fsum(values.values())
    if abs(total - 1.0) > _TOLERANCE:
        raise ValueError(f"{what} must sum to 1, got {total:g} ({dict(values)})")


def allocate(n: int, proportions: Mapping[str, float]) -> dict[str, int]:
    """Split ``n`` into integer counts proportional to ``proportions`` (largest remainder; ties go to
    the key given first). Each count is ``floor(n * p)`` or one more; they sum to ``n``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    total = math.fsum(proportions.values())
    keys = list(proportions)
    exact = {k: n * proportions[k] / total for k in keys} if total > 0 else {k: 0.0 for k in keys}
    counts = {k: math.floor(exact[k] + 1e-9) for k in keys}
    left = n - sum(counts.values())
    by_remainder = sorted(keys, key=lambda k: -round(exact[k] - counts[k], 9))  # stable: ties keep key order
    for k in by_remainder[:left]:
        counts[k] += 1
    return counts


def mix_prompts(
    pools: dict[str, list[Prompt]],
    proportions: dict[str, float],
    n: int | None = None,
    seed: int = 0,
) -> list[Prompt]:
    """``n`` prompts drawn without replacement from ``pools`` in ``proportions``, shuffled with ``seed``.

    ``proportions`` maps pool names to shares summing to 1 (e.g. ``{"help": 0.6, "safe": 0.4}``);
    pools not named there are not used. With ``n=None`` the largest ``n`` the pools allow is used.
    A prompt with an empty tag gets its pool's name as tag; other tags are kept. A ``ValueError``
    names the pool when a pool is too small for ``n``.
    """
    if not proportions:
        raise ValueError("proportions: at least one pool is needed")
    missing = sorted(set(proportions) - set(pools))
    if missing:
        raise ValueError(f"proportions name unknown pools {missing}; pools are {sorted(pools)}")
    _check_fractions(proportions, "proportions")
    used = {k: proportions[k] for k in sorted(proportions) if proportions[k] > 0}
    if n is None:
        def fits(m: int) -> bool:
            return all(c <= len(pools[k]) for k, c in allocate(m, used).items())

        n = min(math.floor(len(pools[k]) / p + 1e-9) for k, p in used.items())
        while n > 0 and not fits(n):
            n -= 1
        while fits(n + 1):  # rounding may allow a little more
            n += 1
    counts = allocate(n, used)
    short = [
        f"pool {k!r} has {len(pools[k])} prompts, {c} needed ({used[k]:.0%} of n={n})"
        for k, c in counts.items()
        if c > len(pools[k])
    ]
    if short:
        raise ValueError("not enough prompts: " + "; ".join(short))
    rng = random.Random(seed)
    mixed: list[Prompt] = []
    for key in sorted(counts):
        for prompt in rng.sample(list(pools[key]), counts[key]):
            mixed.append(prompt if prompt.tag else replace(prompt, tag=key))
    rng.shuffle(mixed)
    return mixed


def _group_key(record: Any, index: int) -> Any:
    if isinstance(record, Prompt):
        return ("text", record.text)
    if isinstance(record, PreferencePair):
        return ("prompt", record.prompt)
    return ("index", index)


def split_records(
    records: Sequence[T],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[list[T], list[T], list[T]]:
    """Deterministic, disjoint ``(train, valid, test)`` split of ``records``.

    Records sharing a prompt (same :class:`Prompt` text, or same :class:`PreferencePair` prompt) stay in
    one split so nothing leaks between them; ``fractions`` apply to these groups. Prompts are stratified
    by tag: each tag is split in the given fractions (grouping applies within a tag). Each split keeps
    the input order.
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions: expected 3 values (train, valid, test), got {tuple(fractions)!r}")
    names = ("train", "valid", "test")
    _check_fractions(dict(zip(names, fractions)), "fractions")
    strata: dict[str, dict[Any, list[int]]] = {}
    for index, record in enumerate(records):
        stratum = record.tag if isinstance(record, Prompt) else ""
        strata.setdefault(stratum, {}).setdefault(_group_key(record, index), []).append(index)
    rng = random.Random(seed)
    assigned: list[list[int]] = [[], [], []]
    for stratum in sorted(strata):
        groups = list(strata[stratum].values())
        rng.shuffle(groups)
        counts = allocate(len(groups), dict(zip(names, fractions)))
        start = 0
        for part, name in enumerate(names):
            for group in groups[start : start + counts[name]]:
                assigned[part].extend(group)
            start += counts[name]
    train, valid, test = ([records[i] for i in sorted(part)] for part in assigned)
    return train, valid, test


def split_off(records: Sequence[T], fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """``(kept, split_off)``: :func:`split_records` with ``fraction`` of the groups set aside (grouped by
    prompt, stratified by tag, seeded), for train / held-out and train / validation splits."""
    kept, held, _ = split_records(records, (1.0 - fraction, fraction, 0.0), seed=seed)
    return kept, held

