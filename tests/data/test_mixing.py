"""Prompt mixing proportions and train/valid/test splits."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molma.data import PreferencePair, Prompt, allocate, mix_prompts, split_records


def pool(tag: str, size: int, with_tag: bool = True) -> list[Prompt]:
    return [Prompt(f"{tag} prompt {i}", tag if with_tag else "") for i in range(size)]


POOLS = {"help": pool("help", 300), "safe": pool("safe", 200)}


def test_paper_mix_60_40():
    mixed = mix_prompts(POOLS, {"help": 0.6, "safe": 0.4}, n=250, seed=1)
    assert len(mixed) == 250
    assert Counter(p.tag for p in mixed) == {"help": 150, "safe": 100}
    assert len(set(mixed)) == 250  # without replacement
    assert all(p in POOLS[p.tag] for p in mixed)
    # shuffled: not all help first
    assert [p.tag for p in mixed[:150]] != ["help"] * 150


def test_mix_is_seeded_and_independent_of_dict_order():
    a = mix_prompts(POOLS, {"help": 0.6, "safe": 0.4}, n=50, seed=3)
    b = mix_prompts({"safe": POOLS["safe"], "help": POOLS["help"]}, {"safe": 0.4, "help": 0.6}, n=50, seed=3)
    c = mix_prompts(POOLS, {"help": 0.6, "safe": 0.4}, n=50, seed=4)
    assert a == b and a != c


def test_mix_rounding_and_default_n():
    mixed = mix_prompts(POOLS, {"help": 0.6, "safe": 0.4}, n=7)
    assert Counter(p.tag for p in mixed) == {"help": 4, "safe": 3}  # 4.2 / 2.8 -> largest remainder
    # n=None: as many as the pools allow (safe 200 at 40 % -> 500)
    full = mix_prompts(POOLS, {"help": 0.6, "safe": 0.4})
    assert Counter(p.tag for p in full) == {"help": 300, "safe": 200}
    limited = mix_prompts({"help": pool("help", 100), "safe": pool("safe", 200)}, {"help": 0.6, "safe": 0.4})
    assert Counter(p.tag for p in limited) == {"help": 100, "safe": 67}  # n=167: 100.2 / 66.8


def test_mix_tags_untagged_prompts_with_the_pool_name():
    pools = {"help": pool("h", 10, with_tag=False), "safe": pool("s", 10)}
    mixed = mix_prompts(pools, {"help": 0.5, "safe": 0.5}, n=10)
    assert Counter(p.tag for p in mixed) == {"help": 5, "s": 5}


def test_mix_errors():
    with pytest.raises(ValueError, match="pool 'safe' has 200 prompts, 240 needed"):
        mix_prompts(POOLS, {"help": 0.4, "safe": 0.6}, n=400)
    with pytest.raises(ValueError, match="must sum to 1, got 0.9"):
        mix_prompts(POOLS, {"help": 0.5, "safe": 0.4}, n=10)
    with pytest.raises(ValueError, match="unknown pools"):
        mix_prompts(POOLS, {"help": 0.5, "harmless": 0.5}, n=10)
    with pytest.raises(ValueError, match=">= 0"):
        mix_prompts(POOLS, {"help": 1.5, "safe": -0.5}, n=10)
    with pytest.raises(ValueError, match="finite"):
        mix_prompts(POOLS, {"help": math.nan, "safe": 0.5}, n=10)
    with pytest.raises(ValueError, match="non-negative integer"):
        mix_prompts(POOLS, {"help": 0.6, "safe": 0.4}, n=-1)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 10_000),
    weights=st.lists(st.integers(0, 100), min_size=1, max_size=6).filter(lambda w: sum(w) > 0),
)
def test_allocate_is_exact_up_to_rounding(n, weights):
    total = sum(weights)
    proportions = {f"k{i}": w / total for i, w in enumerate(weights)}
    counts = allocate(n, proportions)
    assert sum(counts.values()) == n
    for key, p in proportions.items():
        assert abs(counts[key] - n * p) < 1 + 1e-9


# -------------------------------------------------------------------------------------------- splits


def test_split_sizes_disjoint_deterministic():
    records = [PreferencePair(f"p{i}", "a", "b") for i in range(1000)]
    train, valid, test = split_records(records, seed=0)
    assert (len(train), len(valid), len(test)) == (800, 100, 100)
    assert set(train).isdisjoint(valid) and set(train).isdisjoint(test) and set(valid).isdisjoint(test)
    assert sorted(train + valid + test, key=records.index) == records
    assert split_records(records, seed=0) == (train, valid, test)
    assert split_records(records, seed=1) != (train, valid, test)
    # each split keeps the input order
    assert train == sorted(train, key=records.index)


def test_split_keeps_records_with_the_same_prompt_together():
    records = [PreferencePair(f"p{i // 4}", f"a{i}", "b") for i in range(400)]  # 4 pairs per prompt
    train, valid, test = split_records(records, (0.5, 0.25, 0.25), seed=2)
    prompts = [{r.prompt for r in part} for part in (train, valid, test)]
    assert prompts[0].isdisjoint(prompts[1]) and prompts[0].isdisjoint(prompts[2])
    assert prompts[1].isdisjoint(prompts[2])
    assert (len(train), len(valid), len(test)) == (200, 100, 100)


def test_split_stratifies_prompts_by_tag():
    records = pool("help", 600) + pool("safe", 400)
    train, valid, test = split_records(records, (0.8, 0.1, 0.1), seed=5)
    for part, size in ((train, 800), (valid, 100), (test, 100)):
        assert len(part) == size
        assert Counter(p.tag for p in part) == {"help": size * 0.6, "safe": size * 0.4}


def test_split_duplicate_prompts_do_not_leak():
    records = pool("help", 50) * 2
    train, valid, test = split_records(records, seed=0)
    assert {p.text for p in train}.isdisjoint({p.text for p in valid} | {p.text for p in test})
    assert len(train) + len(valid) + len(test) == 100


def test_split_errors_and_other_record_types():
    with pytest.raises(ValueError, match="3 values"):
        split_records([1, 2, 3], (0.5, 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        split_records([1, 2, 3], (0.5, 0.3, 0.1))
    train, valid, test = split_records(list(range(10)), (0.6, 0.2, 0.2))
    assert sorted(train + valid + test) == list(range(10)) and len(train) == 6


@settings(max_examples=100, deadline=None)
@given(
    items=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["help", "safe", ""])), max_size=80),
    weights=st.tuples(*[st.integers(0, 10)] * 3).filter(lambda w: sum(w) > 0),
    seed=st.integers(0, 5),
)
def test_split_is_a_partition_without_leaks(items, weights, seed):
    records = [Prompt(f"text {i}", tag) for i, tag in items]
    fractions = tuple(w / sum(weights) for w in weights)
    parts = split_records(records, fractions, seed=seed)
    assert Counter(r for part in parts for r in part) == Counter(records)
    keys = [{(r.tag, r.text) for r in part} for part in parts]
    assert keys[0].isdisjoint(keys[1]) and keys[0].isdisjoint(keys[2]) and keys[1].isdisjoint(keys[2])
    for part, fraction in zip(parts, fractions):
        if fraction == 0:
            assert part == []
