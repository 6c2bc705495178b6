"""Fixtures for the human-eval tests: small studies built from fixture responses.jsonl files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from molma.humaneval import Study, load_responses
from tests.humaneval.helpers import write_responses

MODELS = ("molma", "reference", "so_help")


@pytest.fixture()
def make_study(tmp_path: Path) -> Callable[..., Study]:
    """Build a study: ``make_study(n_prompts=3, models=MODELS, extra=..., scores=...)``."""
    counter = iter(range(1000))

    def build(n_prompts: int = 3, models: tuple[str, ...] = MODELS, **kwargs) -> Study:
        i = next(counter)
        src = write_responses(
            tmp_path / f"responses{i}.jsonl",
            [f"p{k:04d}" for k in range(n_prompts)],
            models,
            extra=kwargs.pop("extra", None),
            scores=kwargs.pop("scores", None),
        )
        return Study.create(tmp_path / f"study{i}.sqlite", load_responses(src), **kwargs)

    return build
