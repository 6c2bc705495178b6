"""``molma demo``: the main job on the embedded default model (see :mod:`molma.demo`)."""

from __future__ import annotations

import argparse

from molma.cli.experiment import add_pipeline_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", config_kind="demo",
                              help="run the end-to-end pipeline on the embedded SmolLM2 (CPU)",
                              description="The experiment pipeline at demo size (configs/demo.yaml): judges, "
                                          "every method, evaluation with paired tests, report, verdict.")
    add_pipeline_arguments(p, "configs/demo.yaml", "demo config (YAML)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from molma.demo import run_demo

    run_demo(args.config, args.overrides, out=args.out)
    return 0
