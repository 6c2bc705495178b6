"""``molma experiment``: judges, every method, sweeps, evaluation and report in one resumable command
(see :mod:`molma.experiment`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment", config_kind="experiment",
        help="run the whole comparison (judges, methods, sweeps, evaluation, report), resumably",
        description="Run an experiment config: prompt pools, RMhelp/RMsafe, every RL method and sweep, "
                    "evaluation on held-out prompts with paired tests, and the report. Finished stages are "
                    "reused (keyed by a hash of their settings); rerun the same command to resume.",
        epilog="example:\n  molma experiment --config configs/cpu/experiment.yaml\n"
               "  molma experiment --config configs/cpu/experiment.yaml workers=2 eval_prompts=64",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_arguments(p, "configs/cpu/experiment.yaml", "experiment config (YAML)")
    p.add_argument("--publish", metavar="DIR", default=None,
                   help="afterwards, copy the results (evidence, Table 2, sweeps, report without example "
                        "prompts; no weights) into DIR, e.g. docs/results/cpu-experiment")
    p.set_defaults(func=_run)


def add_pipeline_arguments(p: argparse.ArgumentParser, default_config: str, config_help: str) -> None:
    """--config, --out and key=value overrides of an ExperimentConfig (``molma experiment`` and ``molma demo``)."""
    p.add_argument("--config", default=default_config, help=config_help)
    p.add_argument("--out", default=None, help="output folder (default: from the config)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (see molma.experiment.ExperimentConfig)")


def _run(args: argparse.Namespace) -> int:
    from molma.experiment import run_experiment

    root = run_experiment(args.config, args.overrides, out=args.out)
    if args.publish:
        from molma.config import load_config
        from molma.experiment import ExperimentConfig, publish_results

        publish_results(root, args.publish, title=load_config(ExperimentConfig, args.config, args.overrides).title)
    return 0
