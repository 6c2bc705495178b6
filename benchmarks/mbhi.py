"""MBHI benchmark: catastrophes during training and final return of four methods on two safety tasks.

Methods: no oversight, reward shaping, HIRL (human then blocker, no look-ahead) and MBHI (blocker +
look-ahead in a learned dynamics ensemble + MPC fallback), each with the same DQN agent, on
``molma/CliffCart-v0`` (non-local catastrophes) and ``molma/CliffWalk-v0`` (local catastrophes), 3 seeds,
settings from ``configs/mbhi/benchmark.yaml``. Runs go to ``runs/mbhi-benchmark/`` (per-seed JSON,
curves.csv, one PNG per task); the summary, the target check and the wall time to
``benchmarks/results/mbhi.json``.

Targets (per task): MBHI causes fewer training catastrophes (mean over seeds) than every baseline, and
its final return is no worse than 10 % below the best baseline's; the whole benchmark takes at most
30 minutes on 2 CPU cores.

Usage: ``nice -n 10 .venv/bin/python benchmarks/mbhi.py [--seeds 0 1 2] [--workers 2] [--force]``
(existing per-seed results are reused unless ``--force``; the reported wall time is this invocation's).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import sys
import time
from pathlib import Path

from molma.config import load_config, to_dict
from molma.mbhi.compare import check_targets, compare, format_table, write_json
from molma.mbhi.envs import TASK_IDS
from molma.mbhi.train import METHODS, RunConfig, env_slug, run_many

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT = 30 * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--envs", nargs="+", default=list(TASK_IDS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--config", default=str(ROOT / "configs/mbhi/benchmark.yaml"))
    parser.add_argument("--runs", default=str(ROOT / "runs/mbhi-benchmark"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/mbhi.json"))
    parser.add_argument("--force", action="store_true", help="rerun existing results")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    base = load_config(RunConfig, args.config, args.overrides)
    configs = [dataclasses.replace(base, env=env, method=method, seed=seed)
               for env in args.envs for method in METHODS for seed in args.seeds]
    start = time.perf_counter()
    run_many(configs, args.runs, workers=args.workers, skip_existing=not args.force)
    wall = time.perf_counter() - start
    data = compare(args.runs)
    targets = check_targets(data["summary"])
    grid = 500  # curves in the benchmark JSON every 500 steps (full curves: <runs>/curves.csv)
    curves = {key: {k: v[grid // base.log_every - 1::grid // base.log_every] for k, v in c.items()}
              for key, c in data["curves"].items()}
    cpu = sum(r["cpu_seconds_mean"] * len(r["seeds"]) for r in data["summary"])
    load = os.getloadavg()
    result = {
        "benchmark": "mbhi",
        "description": "training catastrophes and final return, 4 methods x 2 tasks x seeds",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "platform": platform.platform()},
        "config": to_dict(base),
        "seeds": args.seeds,
        "runs": len(configs),
        "workers": args.workers,
        "wall_seconds": wall,
        "time_limit_seconds": TIME_LIMIT,
        "within_time": wall <= TIME_LIMIT,
        "cpu_seconds_all_runs": cpu,
        "cpu_seconds_per_worker": cpu / max(1, args.workers),
        "load_average_at_end": load,
        "summary": data["summary"],
        "targets": targets,
        "all_targets_met": bool(targets) and all(t["met"] for t in targets.values()),
        "curves_every_500_steps": curves,
        "plots": data["plots"],
    }
    write_json(args.out, result)
    print(format_table(data["summary"]))
    for env, t in targets.items():
        print(f"{env_slug(env)}: fewer catastrophes than {t['fewer_catastrophes_than']}; return "
              f"{t['mbhi_return']:.2f} (floor {t['return_floor']:.2f}) -> {'met' if t['met'] else 'NOT met'}")
    print(f"wall time {wall / 60:.1f} min (limit {TIME_LIMIT / 60:.0f}), CPU {cpu / 60:.1f} min over "
          f"{args.workers} workers, load average {load[0]:.1f}; results -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
