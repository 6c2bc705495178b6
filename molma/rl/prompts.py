"""Prompt pools for RL: load each pool, hold out a fixed share for evaluation, sample mixed batches."""

from __future__ import annotations

import random
from collections.abc import Mapping

from molma.data import Prompt
from molma.data.mixing import allocate, split_off


def load_pool(source: str, tag: str) -> list[Prompt]:
    """``builtin:<tag>`` (the packaged prompts), or any source :func:`molma.data.read_prompts` reads."""
    from molma.data import load_builtin_prompts, read_prompts

    if source.startswith("builtin:"):
        return load_builtin_prompts(source.split(":", 1)[1])
    return list(read_prompts(source, tag=tag))


def train_heldout_pools(sources: Mapping[str, str], heldout_fraction: float, seed: int = 0
                        ) -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]]:
    """Per pool: (train prompts, held-out prompts). The split is deterministic in ``seed`` so training
    and evaluation agree on which prompts were never trained on."""
    train, heldout = {}, {}
    for tag, source in sources.items():
        pool = load_pool(source, tag)
        if not pool:
            raise ValueError(f"prompt pool {tag!r} ({source}) is empty")
        if heldout_fraction > 0:
            tr, ho = split_off(pool, heldout_fraction, seed=seed)
        else:
            tr, ho = list(pool), []
        train[tag], heldout[tag] = tr, ho
    return train, heldout


def sample_batch(pools: Mapping[str, list[Prompt]], mix: Mapping[str, float], n: int, seed: int
                 ) -> list[Prompt]:
    """``n`` prompts with the pools in proportion ``mix`` (largest remainder, e.g. 60/40), seeded.

    Sampling is with replacement across iterations (each call is independent) and without replacement
    within a batch when a pool is large enough."""
    rng = random.Random(seed)
    batch: list[Prompt] = []
    for tag, count in allocate(n, dict(mix)).items():
        pool = pools[tag]
        picks = rng.sample(pool, count) if count <= len(pool) else rng.choices(pool, k=count)
        batch.extend(p if p.tag else Prompt(p.text, tag, p.source) for p in picks)
    rng.shuffle(batch)
    return batch
