"""``molma mbhi``: safe model-based RL with human-blocking imitation (MBHI) and its baselines.

    molma mbhi envs
    molma mbhi run --env molma/CliffCart-v0 --method mbhi --seeds 0 1 2 --out runs/mbhi
    molma mbhi compare --out runs/mbhi --envs molma/CliffCart-v0 molma/CliffWalk-v0 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_OUT = "runs/mbhi"
# kept here (not imported from molma.mbhi.train) so that building the CLI does not import torch
METHODS = ["none", "shaping", "hirl", "mbhi", "mbhi_nohuman", "pets"]
TASKS = ["molma/CliffWalk-v0", "molma/CliffCart-v0", "molma/CliffThrottle-v0"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with RunConfig keys (see configs/mbhi/)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--steps", type=int, help="environment steps per run (overrides total_steps)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (one torch thread each)")
    p.add_argument("--force", action="store_true", help="rerun even when a result file exists")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. lookahead.horizon=12 blocker.members=3 dqn.lr=5e-4")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mbhi", help="safe model-based RL with human-blocking imitation (MBHI) and baselines",
        description="Train a DQN agent on safety tasks with no oversight, reward shaping, HIRL (a blocker "
                    "imitating a simulated human) or MBHI (blocker + look-ahead in a learned dynamics "
                    "ensemble + MPC fallback), MBHI without the human (mbhi_nohuman) or a PETS-style "
                    "planner (pets); compare catastrophes, returns and human labels.")
    sub = parser.add_subparsers(dest="mbhi_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])

    envs = sub.add_parser("envs", help="list the safety tasks")
    envs.set_defaults(func=run_envs)

    run = sub.add_parser(
        "run", config_kind="mbhi", help="train one method on one task for several seeds",
        description="Settings: RunConfig defaults, then --config, then key=value overrides, then flags. "
                    "Writes <out>/<task>/<method>/seed<k>.json (curves + summary).",
        epilog="example:\n  molma mbhi run --env molma/CliffCart-v0 --method mbhi --seeds 0 1 --workers 2 "
               "lookahead.horizon=12",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--env", default="molma/CliffCart-v0", help="task id (see 'molma mbhi envs')")
    run.add_argument("--method", default="mbhi", choices=METHODS)
    run.add_argument("--name", help="result folder of a variant (default: the method), e.g. mbhi_h1")
    run.add_argument("--checkpoints", action="store_true",
                     help="save agent/blocker/dynamics (safetensors) beside each result")
    _common(run)
    run.set_defaults(func=run_run)

    cmp = sub.add_parser(
        "compare", config_kind="mbhi", help="run missing (task, method, seed) combinations, then tables and plots",
        description="Runs every missing combination (existing results are reused unless --force), then "
                    "writes comparison.json, summary.csv, curves.csv (per-seed curves) and one PNG per task "
                    "(cumulative catastrophes, return, human labels vs steps) into --out.")
    cmp.add_argument("--envs", nargs="+", default=TASKS)
    cmp.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    cmp.add_argument("--no-run", action="store_true", help="only aggregate the results already in --out")
    _common(cmp)
    cmp.set_defaults(func=run_compare)


def run_envs(args: argparse.Namespace) -> int:
    import gymnasium as gym

    from molma.mbhi import TASK_IDS, register_envs

    register_envs()
    for env_id in TASK_IDS:
        env = gym.make(env_id)
        doc = (type(env.unwrapped).__doc__ or "").strip().splitlines()[0]
        print(f"{env_id}: {doc}\n  observation {env.observation_space}, actions {env.action_space}, "
              f"{env.spec.max_episode_steps} steps per episode")
        env.close()
    return 0


def _configs(args: argparse.Namespace, envs: list[str], methods: list[str]) -> list[Any]:
    """RunConfig defaults <- --config <- key=value overrides <- task / method / seed / --steps."""
    import dataclasses

    from molma.config import load_config
    from molma.mbhi.train import RunConfig

    base = load_config(RunConfig, args.config, args.overrides)
    steps: dict[str, Any] = {"total_steps": args.steps} if args.steps else {}
    if getattr(args, "name", None):
        steps["name"] = args.name
    return [dataclasses.replace(base, env=env, method=method, seed=seed, **steps)
            for env in envs for method in methods for seed in args.seeds]


def run_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from molma.mbhi.train import result_path, run_many

    configs = _configs(args, [args.env], [args.method])
    if args.checkpoints:
        for cfg in configs:
            cfg.checkpoint_dir = str(result_path(args.out, cfg.env, cfg.method, cfg.seed).with_suffix(""))
    results = run_many(configs, args.out, workers=args.workers, skip_existing=not args.force)
    for r in results:
        s = r.summary
        print(f"{r.env} {r.method} seed {r.seed}: {s['catastrophes']} catastrophes, "
              f"{s['labels_used']} labels, final return {s['final_return']:.2f} -> "
              f"{result_path(args.out, r.env, r.method, r.seed)}")  # r.method is the variant name
    print(f"results in {Path(args.out)}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from molma.mbhi.compare import compare, format_table
    from molma.mbhi.train import run_many

    if not args.no_run:
        run_many(_configs(args, args.envs, args.methods), args.out, workers=args.workers,
                 skip_existing=not args.force)
    try:
        data = compare(args.out)
    except FileNotFoundError as err:
        print(f"molma mbhi compare: error: {err}", file=sys.stderr)
        return 2
    print(format_table(data["summary"]))
    for env, t in data["targets"].items():
        verdict = "met" if t["met"] else "NOT met"
        print(f"{env}: MBHI fewer catastrophes than {t['fewer_catastrophes_than']}, return "
              f"{t['mbhi_return']:.2f} vs floor {t['return_floor']:.2f} -> {verdict}")
    print("plots: " + ", ".join(data["plots"]))
    return 0
