"""``molma demo``: the main job on the embedded default model (see :mod:`molma.demo`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the end-to-end pipeline on the embedded SmolLM2 (CPU)")
    p.add_argument("--config", default="configs/demo.yaml", help="demo config (YAML)")
    p.add_argument("--out", default=None, help="output folder (default: from the config)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from molma.demo import run_demo

    run_demo(args.config, args.overrides, out=args.out)
    return 0
