"""``molma config KIND``: every key of a config (train, rm, experiment, demo, mbhi) with its default and
help, as ``--help`` of the command that reads it shows them; ``--yaml`` prints the defaults as a YAML file
to start from."""

from __future__ import annotations

import argparse

from molma.cli.common import CONFIG_KINDS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config", help="list the config keys of a command (defaults and help)",
        description="List every config key (YAML key of --config, or key=value override) of one kind of "
                    "config with its default and help. Kinds: " +
                    "; ".join(f"{k}: {what}" for k, (_, _, what) in CONFIG_KINDS.items()) + ".")
    p.add_argument("kind", nargs="?", choices=list(CONFIG_KINDS), help="which config (omit to list the kinds)")
    p.add_argument("--list", dest="list_kind", choices=list(CONFIG_KINDS), metavar="KIND",
                   help="same as the positional KIND")
    p.add_argument("--yaml", action="store_true", help="print the defaults as YAML instead")
    p.set_defaults(func=run_config)


def run_config(args: argparse.Namespace) -> int:
    kind = args.kind or args.list_kind
    if kind is None:
        for name, (_, cls, what) in CONFIG_KINDS.items():
            print(f"{name:<11} {cls:<18} {what}")
        return 0
    from molma.cli.common import config_class, config_keys_text

    if args.yaml:
        import dataclasses

        import yaml

        from molma.config import to_dict

        cls = config_class(kind)
        required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        if required:
            print(f"molma config: error: {cls.__name__} has required keys {required}: no default YAML")
            return 2
        print(yaml.safe_dump(to_dict(cls()), sort_keys=False), end="")
        return 0
    print(config_keys_text(kind))
    return 0
