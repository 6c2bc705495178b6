"""What the subcommand modules share: the parser class whose ``--help`` lists a command's config keys.

A subcommand that reads a config dataclass passes ``config_kind="train"`` (a key of :data:`CONFIG_KINDS`)
to ``add_parser``; its ``--help`` then ends with every key of that class and its help text, read from
the class's source by :func:`molma.config.config_keys` only when help is shown (so parsing stays fast).
``molma config KIND`` prints the same list.
"""

from __future__ import annotations

import argparse
import importlib

#: config kind -> (module, class, what it configures)
CONFIG_KINDS: dict[str, tuple[str, str, str]] = {
    "train": ("molma.rl.config", "TrainConfig", "molma train / molma sweep (RL fine-tuning)"),
    "rm": ("molma.rewards.train", "RewardTrainConfig", "molma rm train (reward models)"),
    "experiment": ("molma.experiment", "ExperimentConfig", "molma experiment (the whole pipeline)"),
    "demo": ("molma.demo", "DemoConfig", "molma demo (the pipeline at demo size)"),
    "mbhi": ("molma.mbhi.train", "RunConfig", "molma mbhi run / compare (safe model-based RL)"),
}


def config_class(kind: str) -> type:
    if kind not in CONFIG_KINDS:
        raise ValueError(f"unknown config kind {kind!r}; choose one of {', '.join(CONFIG_KINDS)}")
    module, name, _ = CONFIG_KINDS[kind]
    return getattr(importlib.import_module(module), name)


def config_keys_text(kind: str, width: int = 100) -> str:
    from molma.config import format_config_keys

    cls = config_class(kind)
    return (f"config keys ({cls.__name__}; YAML keys of --config and key=value overrides, shown with their "
            f"defaults; also: molma config {kind}):\n" + format_config_keys(cls, width=width))


class MolmaParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help ends with the config keys of ``config_kind`` (if given)."""

    def __init__(self, *args, config_kind: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config_kind = config_kind

    def format_help(self) -> str:
        text = super().format_help()
        if self.config_kind is None:
            return text
        return text.rstrip("\n") + "\n\n" + config_keys_text(self.config_kind) + "\n"
