"""Prompt pools for RL: load each pool, hold out a fixed share for evaluation, sample mixed batches."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from pathlib import Path

from molma.data import Prompt
from molma.data.mixing import allocate, split_off


def load_pool(source: str, tag: str, first_turn: bool = False) -> list[Prompt]:
    """``builtin:<tag>`` (the packaged prompts), or any source :func:`molma.data.read_prompts` reads.

    ``first_turn``: of a dialogue (HH-RLHF) keep only the first Human turn, and each distinct one once
    (many HH dialogues open with the same request); plain prompts are unchanged."""
    from molma.data import load_builtin_prompts, read_prompts

    if source.startswith("builtin:"):
        return load_builtin_prompts(source.split(":", 1)[1])
    return list(read_prompts(source, tag=tag, first_turn=first_turn, dedupe=first_turn))


def first_turn_pools(first_turn: bool | Collection[str], tags: Collection[str]) -> set[str]:
    """The pools a ``first_turn`` setting applies to: all (``True``), none (``False``) or those named."""
    if isinstance(first_turn, bool):
        return set(tags) if first_turn else set()
    return set(first_turn) & set(tags)


def train_heldout_pools(sources: Mapping[str, str], heldout_fraction: float, seed: int = 0,
                        first_turn: bool | Collection[str] = False
                        ) -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]]:
    """Per pool: (train prompts, held-out prompts). The split is deterministic in ``seed`` so training
    and evaluation agree on which prompts were never trained on (``molma eval --prompts heldout:RUN``
    rebuilds it from a run's ``config.yaml``). ``first_turn``: see :func:`load_pool` (``True``: every
    pool; a collection: the pools it names)."""
    train, heldout = {}, {}
    cut = first_turn_pools(first_turn, sources)
    for tag, source in sources.items():
        pool = load_pool(source, tag, first_turn=tag in cut)
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


def run_heldout_prompts(run_dir: str | Path) -> list[Prompt]:
    """The held-out prompts a training run set aside, rebuilt from its ``config.yaml`` (``prompts``,
    ``heldout_fraction``, ``seed``, ``first_turn``: the trainer's own split), pool after pool in the
    config's order. ``run_dir`` is the run folder or its ``final/``. ``molma eval --prompts heldout:RUN``."""
    from molma.rl.config import load_run_config

    run_dir = Path(run_dir)
    path = next((d / "config.yaml" for d in (run_dir, run_dir.parent) if (d / "config.yaml").is_file()), None)
    if path is None:
        raise FileNotFoundError(f"heldout:{run_dir}: no config.yaml in {run_dir} (a training run folder, as "
                                "molma train writes it)")
    cfg = load_run_config(path)
    if cfg.heldout_fraction <= 0:
        raise ValueError(f"heldout:{run_dir}: the run held no prompts out (heldout_fraction: 0 in {path})")
    _, heldout = train_heldout_pools(cfg.prompts, cfg.heldout_fraction, seed=cfg.seed, first_turn=cfg.first_turn)
    return [p if p.tag else Prompt(p.text, tag, p.source) for tag in cfg.prompts for p in heldout[tag]]
