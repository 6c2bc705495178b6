"""Data layer: preference pairs and prompts from HH-RLHF, PKU-SafeRLHF, SHP, Alpaca, local files, the
builtin dataset and hub datasets; prompt mixing and splits; chat-template rendering."""

from molma.data.records import PreferencePair, Prompt

__all__ = ["PreferencePair", "Prompt"]
