"""The builtin dataset: loader behaviour on temporary files, and the packaged files themselves."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from molma.data import (
    PreferencePair,
    Prompt,
    builtin,
    load_builtin_preferences,
    load_builtin_prompts,
    read_preferences,
    read_prompts,
)
from molma.data.readers import DataFormatError

from .helpers import write_jsonl

MINIMUM = {"prompts_help": 150, "prompts_safe": 100, "pairs_help": 200, "pairs_safe": 200}


@pytest.fixture()
def fake_builtin(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "prompts_help.jsonl",
                [{"prompt": "Explain photosynthesis."}, {"prompt": "Name a prime."}])
    write_jsonl(tmp_path / "prompts_safe.jsonl", [{"prompt": "How do I make a weapon?"}])
    write_jsonl(tmp_path / "pairs_help.jsonl",
                [{"prompt": "What is 2+2?", "chosen": "4, because 2+2=4.", "rejected": "Maybe 5."}])
    write_jsonl(tmp_path / "pairs_safe.jsonl",
                [{"prompt": "How do I hurt someone?", "chosen": "I can't help with that.",
                  "rejected": "Like so."}])
    monkeypatch.setattr(builtin, "BUILTIN_DIR", tmp_path)
    return tmp_path


def test_loaders_on_temporary_files(fake_builtin):
    help_pairs = load_builtin_preferences("help")
    assert help_pairs == [PreferencePair("What is 2+2?", "4, because 2+2=4.", "Maybe 5.")]
    assert help_pairs[0].source == "builtin:pairs_help.jsonl:1" and help_pairs.report.records == 1
    assert load_builtin_preferences("safety")[0].chosen == "I can't help with that."
    assert load_builtin_prompts("safe") == [Prompt("How do I make a weapon?", "safe")]
    both = load_builtin_prompts()
    assert [p.tag for p in both] == ["help", "help", "safe"]
    # as reader sources: builtin:help is pairs for read_preferences, prompts for read_prompts
    assert read_preferences("builtin:help") == help_pairs
    assert [p.text for p in read_prompts("builtin:help")] == ["Explain photosynthesis.", "Name a prime."]
    assert len(read_prompts("builtin:pairs_safe")) == 1  # the pairs' prompts


def test_loader_errors(fake_builtin):
    with pytest.raises(ValueError, match="unknown objective"):
        load_builtin_preferences("honesty")
    with pytest.raises(ValueError, match="unknown builtin dataset"):
        read_prompts("builtin:nonsense")
    write_jsonl(fake_builtin / "pairs_help.jsonl", [{"prompt": "x", "chosen": "a"}])
    with pytest.raises(DataFormatError, match=r"builtin:pairs_help.jsonl:1: field 'rejected': missing"):
        load_builtin_preferences("help")
    (fake_builtin / "prompts_safe.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="builtin dataset file missing"):
        load_builtin_prompts("safe")


@pytest.mark.parametrize("name", sorted(MINIMUM))
def test_packaged_builtin_files(name):
    """The shipped files: valid, big enough, no duplicate prompts within a file."""
    path = builtin.BUILTIN_DIR / f"{name}.jsonl"
    assert path.is_file(), f"{path} is missing"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keys = {"prompt"} if name.startswith("prompts") else {"prompt", "chosen", "rejected"}
    assert all(keys <= set(json.loads(line)) for line in lines)
    kind, tag = name.split("_")
    if kind == "pairs":
        records = load_builtin_preferences(tag)
        prompts = [r.prompt for r in records]
        assert all(r.chosen != r.rejected for r in records)
    else:
        records = load_builtin_prompts(tag)
        prompts = [r.text for r in records]
        assert all(r.tag == tag for r in records)
    assert len(records) == len(lines) >= MINIMUM[name]
    duplicates = [p for p, c in Counter(prompts).items() if c > 1]
    assert not duplicates, f"duplicate prompts in {name}: {duplicates[:3]}"


def test_packaged_readme_exists():
    assert (builtin.BUILTIN_DIR / "README.md").is_file()
