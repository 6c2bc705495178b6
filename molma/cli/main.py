"""``molma`` entry point: discovers subcommand modules in :mod:`molma.cli` and dispatches to them.

Each module ``molma/cli/<name>.py`` exposes ``register(subparsers) -> None`` which adds its parser and
sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
The CLI only parses arguments and calls the Python API; no logic lives here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

import molma
import molma.cli
from molma.cli.common import MolmaParser
from molma.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molma",
        description="Multi-objective alignment of language models (MOLMA, GAPO, P-GAPO) and MBHI.",
    )
    parser.add_argument("--version", action="version", version=f"molma {molma.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=MolmaParser)
    for info in sorted(pkgutil.iter_modules(molma.cli.__path__), key=lambda m: m.name):
        if info.name in {"main", "common"} or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"molma.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    _describe(subparsers)
    return parser


def subcommands(parser: argparse.ArgumentParser, prefix: str = "molma") -> dict[str, argparse.ArgumentParser]:
    """``{"molma rm train": parser, ...}``: every (nested) subcommand parser under ``parser``."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[f"{prefix} {name}"] = sub
                out.update(subcommands(sub, f"{prefix} {name}"))
    return out


def _describe(subparsers: argparse._SubParsersAction) -> None:
    """A subcommand registered without a description gets its one-line help as one, so every --help
    says what the command does (nested groups too)."""
    helps = {a.dest: a.help for a in subparsers._choices_actions}
    for name, sub in subparsers.choices.items():
        if not sub.description and helps.get(name):
            sub.description = helps[name][0].upper() + helps[name][1:] + "."
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                _describe(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``key=value`` config overrides accepted anywhere after the command
    (argparse alone takes one run of positionals: ``--config c a=1 --out d b=2`` would reject b=2)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    secondary = int(os.environ.get("RANK", "0")) > 0  # under torchrun / accelerate: process 0 narrates
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if secondary else logging.INFO,
        format=(f"[rank {os.environ.get('RANK')}] " if secondary else "")
        + "%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 0
    from molma.data.readers import DataFormatError
    from molma.models import ModelNotAvailableError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataFormatError, ModelNotAvailableError, FileNotFoundError) as err:
        print(f"molma {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
