"""Shared fixtures: tiny random models (fast), the real shared data folder, an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
HH_HARMLESS = SHARED_DATA / "hh-rlhf" / "harmless-base-test-first1800.jsonl.gz"

# One thread: tiny test models gain nothing from more, and parallel runs oversubscribe the cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def hh_harmless_path() -> Path:
    if not HH_HARMLESS.exists():
        pytest.skip(f"shared data not found at {HH_HARMLESS} (it lives beside the repo, not in it)")
    return HH_HARMLESS


@pytest.fixture(scope="session")
def tokenizer():
    from molma.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture()
def tiny_model():
    """A fresh ~1.6M-parameter random Llama with the SmolLM2 tokenizer: ``(model, tokenizer)``."""
    from molma.models import tiny_llama

    return tiny_llama(seed=0)
