"""Toy preference data and tiny checkpoints for the reward-model tests."""

from __future__ import annotations

import random
from pathlib import Path

from molma.data.records import PreferencePair

FILLER = ("apple", "river", "stone", "cloud", "paper", "window", "garden", "music", "silver", "pencil",
          "orange", "forest", "table", "candle", "bridge", "mountain", "ocean", "letter", "basket", "mirror")


def toy_pairs(n: int, seed: int) -> list[PreferencePair]:
    """Separable toy preference: both responses are random filler words with one marker word inserted
    at a random place, ending with a full stop; the chosen one carries ``blue``, the rejected one ``red``."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        def response(marker: str) -> str:
            words = rng.sample(FILLER, 6)
            words.insert(rng.randrange(len(words) + 1), marker)
            return " ".join(words) + "."

        pairs.append(PreferencePair(prompt=f"Say some words, number {i}.", chosen=response("blue"),
                                    rejected=response("red"), source=f"toy:{i + 1}"))
    return pairs


def save_tiny_base(folder: Path, seed: int = 0, **config_kwargs) -> Path:
    """A tiny random causal LM + the SmolLM2 tokenizer saved as a local checkpoint folder."""
    from molma.models import tiny_llama

    model, tok = tiny_llama(seed=seed, **config_kwargs)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
