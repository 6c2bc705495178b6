"""Every subcommand's ``--help`` has a description; those that read a config list every config key with
its help (read from the config class's source: metadata, attribute docstring, trailing or leading
comment); ``molma config KIND`` prints the same."""

from __future__ import annotations

import dataclasses

import pytest

from molma.cli.common import CONFIG_KINDS, config_class
from molma.cli.main import build_parser, main, subcommands
from molma.config import config_keys, field_help

WITH_CONFIG = {"molma train": "train", "molma sweep": "train", "molma rm train": "rm",
               "molma experiment": "experiment", "molma demo": "demo", "molma mbhi run": "mbhi",
               "molma mbhi compare": "mbhi"}


def test_every_subcommand_has_a_description_and_lists_its_config_keys():
    commands = subcommands(build_parser())
    assert {"molma train", "molma rm train", "molma human-eval serve", "molma config"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description and len(parser.description.strip()) > 10, name
        text = parser.format_help()
        assert parser.description.split()[0] in text, name
        kind = WITH_CONFIG.get(name)
        assert getattr(parser, "config_kind", None) == kind, name
        if kind is None:
            continue
        for doc in config_keys(config_class(kind)):
            assert f"  {doc.key} = " in text, (name, doc.key)
    train_help = commands["molma train"].format_help()
    assert "report_to = tensorboard: where metrics go besides metrics.jsonl" in train_help
    assert "first_turn = false: dialogue prompts (HH-RLHF)" in train_help
    assert "lora.r = 16" in train_help and "--push-to-hub REPO_ID" in train_help
    assert "max_new_tokens = 48: response length cap" in train_help  # not the section heading "generation"


@pytest.mark.parametrize("kind", list(CONFIG_KINDS))
def test_every_config_key_is_documented(kind):
    cls = config_class(kind)
    helps = field_help(cls)
    undocumented = [f.name for f in dataclasses.fields(cls) if f.init and not helps.get(f.name)]
    if kind in ("train", "rm"):  # the RL and reward-model configs document every key
        assert not undocumented, undocumented


@dataclasses.dataclass
class Example:
    # --- a section heading, not help
    a: int = 1
    # the comment above b
    b: int = 2
    c: int = 3  # the comment after c
    d: int = 4
    """The docstring of d."""
    e: int = dataclasses.field(default=5, metadata={"help": "the metadata of e"})  # not this
    f: str = "x#y"  # after a '#' in a string


def test_field_help_sources():
    assert field_help(Example) == {"b": "the comment above b", "c": "the comment after c",
                                   "d": "The docstring of d.", "e": "the metadata of e",
                                   "f": "after a '#' in a string"}


def test_molma_config_command(capsys):
    assert main(["config"]) == 0
    assert "TrainConfig" in capsys.readouterr().out
    assert main(["config", "rm"]) == 0
    out = capsys.readouterr().out
    assert "push_to_hub = null: Upload the saved reward model" in out and "report_to = none" in out
    assert main(["config", "--list", "train", "--yaml"]) == 0
    import yaml

    assert yaml.safe_load(capsys.readouterr().out)["report_to"] == "tensorboard"
