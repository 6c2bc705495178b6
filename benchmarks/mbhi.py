"""MBHI benchmark: training catastrophes, final return, sample efficiency and human labels of every
method on three safety tasks, with 95 % intervals over seeds.

Tasks: ``molma/CliffWalk-v0`` (local catastrophes), ``molma/CliffCart-v0`` (non-local) and
``molma/CliffThrottle-v0`` (non-local, continuous throttle). Variants (``VARIANTS``):

- ``none``, ``shaping``, ``hirl``: DQN without oversight, with a catastrophe penalty, with HIRL;
- ``mbhi``: MBHI as shipped: the planner's reward and termination are *learned* by the dynamics
  ensemble (never from a catastrophe transition), catastrophes known only through the blocker;
- ``mbhi_privileged``: ablation, the planner uses the simulator's reward and termination functions;
- ``mbhi_h1``: horizon ablation, a one-step look-ahead (``lookahead.horizon=1``);
- ``mbhi_nohuman``: MBHI whose blocker learns from the agent's own catastrophes (no human labels);
- ``pets``: CEM-MPC in the learned model with the learned shaped reward; no DQN, no oversight.

Per run: training catastrophes, human labels, final return (greedy episodes behind the deployed
shield), steps until the 10-episode mean training return reaches the task's ``THRESHOLDS`` value, and
the area under the training-return curve (its mean over the logging grid). Aggregates: mean and 95 %
Student-t interval over seeds, and paired (same seed) differences between MBHI and every other variant.

Resumable: every (task, variant, seed) cell is saved to ``<runs>/<task>/<variant>/seed<k>.json`` as it
finishes and skipped when it exists (``--force`` reruns). Cells run seed by seed, and after each seed
the aggregate (``benchmarks/results/mbhi.json``) and the plots (``benchmarks/results/mbhi_*.png``)
are rewritten, so a killed run keeps every finished seed. ``--aggregate-only`` only rewrites them.

Usage: ``OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/mbhi.py [--seeds 0 1 2 3 4] (default 0-9)
[--workers 1] [--envs ...] [--variants ...] [key=value ...]``
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
from typing import Any

import numpy as np

from molma.config import load_config, to_dict
from molma.mbhi.compare import return_auc, seed_curves, steps_to_threshold, t_interval, write_json
from molma.mbhi.envs import CLIFF_CART_ID, CLIFF_THROTTLE_ID, CLIFF_WALK_ID
from molma.mbhi.train import RunConfig, RunResult, env_slug, result_path, run_many

ROOT = Path(__file__).resolve().parents[1]
TASKS = (CLIFF_WALK_ID, CLIFF_CART_ID, CLIFF_THROTTLE_ID)
NON_LOCAL = (CLIFF_CART_ID, CLIFF_THROTTLE_ID)
# variant -> (method, overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "none": ("none", []),
    "shaping": ("shaping", []),
    "hirl": ("hirl", []),
    "mbhi": ("mbhi", []),
    "mbhi_privileged": ("mbhi", ["mpc.reward=privileged"]),
    "mbhi_h1": ("mbhi", ["lookahead.horizon=1"]),
    "mbhi_nohuman": ("mbhi_nohuman", []),
    "pets": ("pets", []),
}
HORIZON_ABLATION_TASKS = TASKS  # the issue asks for the non-local tasks; CliffWalk checks the review's claim
# sample-efficiency thresholds on the 10-episode mean training task return (about 90 % of what the
# best runs reach: CliffWalk ~8.7, CliffCart ~92, CliffThrottle ~87)
THRESHOLDS = {CLIFF_WALK_ID: 7.5, CLIFF_CART_ID: 80.0, CLIFF_THROTTLE_ID: 75.0}
CURVE_GRID = 250  # steps between curve points in the JSON
METRICS = ("catastrophes", "final_return", "eval_catastrophes", "labels_used", "steps_to_threshold",
           "return_auc", "cpu_seconds", "wall_seconds")


def cell_configs(config: str, overrides: list[str], envs: list[str], variants: list[str],
                 seed: int) -> list[RunConfig]:
    """The cells of one seed: every task x variant (the horizon ablation on the non-local tasks only)."""
    out = []
    for env in envs:
        for name in variants:
            if name == "mbhi_h1" and env not in HORIZON_ABLATION_TASKS:
                continue
            method, extra = VARIANTS[name]
            cfg = load_config(RunConfig, config, [*overrides, *extra])
            out.append(dataclasses.replace(cfg, env=env, method=method, name=name, seed=seed))
    return out


def cell_metrics(r: RunResult, total_steps: int) -> dict[str, Any]:
    s = r.summary
    reach = steps_to_threshold(r, THRESHOLDS[r.env])
    return {"catastrophes": s["catastrophes"], "final_return": s["final_return"],
            "eval_catastrophes": s["eval_catastrophes"], "labels_used": s["labels_used"],
            # a run that never reaches the threshold counts as total_steps (a lower bound)
            "steps_to_threshold": reach if reach is not None else total_steps,
            "reached_threshold": reach is not None, "return_auc": return_auc(r),
            "cpu_seconds": s["cpu_seconds"], "wall_seconds": s["wall_seconds"],
            "handover_step": s.get("handover_step"), "mpc_calls": s.get("mpc_calls"),
            "lookahead_flags": s.get("lookahead_flags")}


def aggregate(results: list[RunResult], total_steps: int) -> dict[str, Any]:
    """Per task and variant: per-seed metrics, mean and 95 % t-interval; paired MBHI contrasts."""
    cells: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for r in results:
        cells.setdefault(r.env, {}).setdefault(r.method, {})[r.seed] = cell_metrics(r, total_steps)
    summary: dict[str, Any] = {}
    for env, variants in cells.items():
        rows = {}
        for name in [v for v in VARIANTS if v in variants]:
            per_seed = variants[name]
            seeds = sorted(per_seed)
            row: dict[str, Any] = {"seeds": seeds}
            for m in METRICS:
                vals = [per_seed[k][m] for k in seeds]
                row[m] = {**t_interval(vals), "per_seed": vals}
            row["reached_threshold"] = sum(per_seed[k]["reached_threshold"] for k in seeds)
            rows[name] = row
        contrasts = {}
        if "mbhi" in variants:
            for other in [v for v in VARIANTS if v in variants and v != "mbhi"]:
                common = sorted(set(variants["mbhi"]) & set(variants[other]))
                contrasts[other] = {m: t_interval([variants["mbhi"][k][m] - variants[other][k][m]
                                                   for k in common])
                                    for m in ("catastrophes", "final_return", "steps_to_threshold",
                                              "return_auc", "labels_used")}
        summary[env] = {"threshold": THRESHOLDS[env], "variants": rows,
                        "mbhi_minus_other_paired": contrasts}
    return summary


def mean_curves(results: list[RunResult], total_steps: int) -> dict[str, Any]:
    """Mean and 95 % interval of cumulative catastrophes, labels and training return on a coarse grid."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r.env, r.method), []).append(seed_curves(r))
    out: dict[str, Any] = {}
    for (env, name), curves in groups.items():
        n = min(len(c["step"]) for c in curves)
        steps = np.asarray(curves[0]["step"][:n])
        keep = np.flatnonzero((steps % CURVE_GRID == 0) | (steps == steps[-1]))
        entry: dict[str, Any] = {"step": steps[keep].tolist()}
        for key in ("catastrophes", "labels", "return"):
            data = np.asarray([[np.nan if v is None else v for v in c[key][:n]] for c in curves], float)
            ci = [t_interval(data[:, i].tolist()) for i in keep]
            entry[key] = [round(c["mean"], 3) for c in ci]
            if key != "labels":
                entry[key + "_lo"] = [round(c["lo"], 3) for c in ci]
                entry[key + "_hi"] = [round(c["hi"], 3) for c in ci]
        out.setdefault(env_slug(env), {})[name] = entry
    return out


def plot(results: list[RunResult], summary: dict[str, Any], out_dir: Path) -> list[str]:
    """Per task: cumulative catastrophes vs steps, training return vs steps, catastrophes vs human
    labels used, and final catastrophes per variant (95 % intervals); plus the paired contrasts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    by_env: dict[str, dict[str, list[RunResult]]] = {}
    for r in results:
        by_env.setdefault(r.env, {}).setdefault(r.method, []).append(r)
    colors = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(VARIANTS)}
    for env, variants in sorted(by_env.items()):
        fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
        for name in [v for v in VARIANTS if v in variants]:
            curves = [seed_curves(r) for r in variants[name]]
            n = min(len(c["step"]) for c in curves)
            steps = np.asarray(curves[0]["step"][:n])
            col = colors[name]
            label = f"{name} (n={len(curves)})"
            for ax, key in ((axes[0], "catastrophes"), (axes[1], "return")):
                data = np.asarray([[np.nan if v is None else v for v in c[key][:n]] for c in curves], float)
                ci = [t_interval(data[:, i].tolist()) for i in range(n)]
                mean = np.asarray([c["mean"] for c in ci])
                ok = np.isfinite(mean)
                ax.plot(steps[ok], mean[ok], color=col, label=label)
                lo = np.asarray([c["lo"] for c in ci])
                if key == "catastrophes":
                    lo = np.maximum(lo, 0.0)  # a count: the t-interval's lower end clipped at 0 in the plot
                hi = np.asarray([c["hi"] for c in ci])
                band = ok & np.isfinite(lo)
                ax.fill_between(steps[band], lo[band], hi[band], color=col, alpha=0.12)
            lab = np.asarray([c["labels"][:n] for c in curves], float).mean(0)
            cat = np.asarray([c["catastrophes"][:n] for c in curves], float).mean(0)
            if lab[-1] > 0:
                axes[2].plot(lab, cat, color=col, label=label)
            else:
                axes[2].plot([0], [cat[-1]], "o", color=col, label=label)
        rows = summary[env]["variants"]
        names = list(rows)
        means = [rows[v]["catastrophes"]["mean"] for v in names]
        err = np.asarray([[rows[v]["catastrophes"]["mean"] - max(0.0, rows[v]["catastrophes"]["lo"]),
                           rows[v]["catastrophes"]["hi"] - rows[v]["catastrophes"]["mean"]] for v in names]).T
        axes[3].bar(range(len(names)), means, yerr=np.nan_to_num(err), color=[colors[v] for v in names],
                    capsize=3)
        axes[3].set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axes[3].set_yscale("symlog", linthresh=10)
        axes[1].axhline(summary[env]["threshold"], color="grey", ls=":", lw=1)
        titles = ("cumulative training catastrophes vs steps", "training return (last 10 episodes)",
                  "cumulative catastrophes vs human labels used", "training catastrophes (95 % CI)")
        xlabels = ("environment steps", "environment steps", "human labels used", "")
        for ax, title, xl in zip(axes, titles, xlabels):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xl)
            ax.grid(alpha=0.3)
        axes[0].set_yscale("symlog", linthresh=10)
        axes[2].set_yscale("symlog", linthresh=10)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{env}: mean over seeds, shaded 95 % t-interval (clipped at 0 for counts)", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"mbhi_{env_slug(env)}.png"
        fig.savefig(path, dpi=60)
        plt.close(fig)
        paths.append(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--envs", nargs="+", default=list(TASKS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--config", default=str(ROOT / "configs/mbhi/benchmark.yaml"))
    parser.add_argument("--runs", default=str(ROOT / "runs/mbhi-benchmark-v2"),
                        help="per-cell results (resumable; not committed)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/mbhi.json"))
    parser.add_argument("--force", action="store_true", help="rerun existing cells")
    parser.add_argument("--aggregate-only", action="store_true", help="no runs: aggregate finished cells")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    base = load_config(RunConfig, args.config, args.overrides)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    all_cfgs = [c for seed in args.seeds
                for c in cell_configs(args.config, args.overrides, args.envs, args.variants, seed)]

    def write() -> None:
        done = [c for c in all_cfgs if result_path(args.runs, c.env, c.label, c.seed).exists()]
        results = [RunResult.load(result_path(args.runs, c.env, c.label, c.seed)) for c in done]
        if not results:
            return
        summary = aggregate(results, base.total_steps)
        plots = plot(results, summary, out.parent)
        missing = [f"{env_slug(c.env)}/{c.label}/seed{c.seed}" for c in all_cfgs if c not in done]
        cpu = sum(r.summary["cpu_seconds"] for r in results)
        write_json(out, {
            "benchmark": "mbhi",
            "description": "training catastrophes, final return, sample efficiency and human labels; "
                           "mean and 95 % Student-t interval over seeds",
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "platform": platform.platform(), "load_average_at_write": os.getloadavg()},
            "config": to_dict(base),
            "variants": {k: {"method": m, "overrides": o} for k, (m, o) in VARIANTS.items()},
            "thresholds": {env_slug(k): v for k, v in THRESHOLDS.items()},
            "seeds": args.seeds, "cells_done": len(results), "cells_missing": missing,
            "wall_seconds_this_invocation": time.perf_counter() - start,
            "cpu_seconds_all_cells": cpu,
            "summary": {env_slug(k): v for k, v in summary.items()},
            "curves": mean_curves(results, base.total_steps),
            "plots": plots,
        })
        log_table(summary)

    if not args.aggregate_only:
        for seed in args.seeds:
            cfgs = [c for c in all_cfgs if c.seed == seed]
            run_many(cfgs, args.runs, workers=args.workers, skip_existing=not args.force, progress=False)
            write()
    write()
    print(f"wall time {(time.perf_counter() - start) / 60:.1f} min; results -> {out}")
    return 0


def log_table(summary: dict[str, Any]) -> None:
    print("| task | variant | n | catastrophes | final return | steps to threshold (reached) | return AUC "
          "| labels |")
    for env, s in summary.items():
        for name, row in s["variants"].items():
            def f(m: str, d: int = 1, row: dict[str, Any] = row) -> str:
                c = row[m]
                return f"{c['mean']:.{d}f} [{c['lo']:.{d}f}, {c['hi']:.{d}f}]"
            print(f"| {env_slug(env)} | {name} | {row['catastrophes']['n']} | {f('catastrophes')} "
                  f"| {f('final_return', 2)} | {f('steps_to_threshold', 0)} ({row['reached_threshold']}) "
                  f"| {f('return_auc', 2)} | {f('labels_used', 0)} |")


if __name__ == "__main__":
    sys.exit(main())
