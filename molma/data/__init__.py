"""Data layer: preference pairs and prompts from HH-RLHF, PKU-SafeRLHF, SHP, Alpaca, local files, the
builtin dataset and hub datasets; prompt mixing and splits; chat-template rendering."""

from molma.data.builtin import builtin_file, load_builtin_preferences, load_builtin_prompts
from molma.data.mixing import allocate, mix_prompts, split_records
from molma.data.readers import (
    DataFormatError,
    ReadReport,
    Records,
    normalize_objective,
    pair_from_row,
    prompt_from_row,
    read_preferences,
    read_prompts,
    split_hh_transcript,
)
from molma.data.records import PreferencePair, Prompt

__all__ = [
    "DataFormatError",
    "PreferencePair",
    "Prompt",
    "ReadReport",
    "Records",
    "allocate",
    "builtin_file",
    "load_builtin_preferences",
    "load_builtin_prompts",
    "mix_prompts",
    "normalize_objective",
    "pair_from_row",
    "prompt_from_row",
    "read_preferences",
    "read_prompts",
    "split_hh_transcript",
    "split_records",
]
