"""``molma train`` and ``molma sweep``: RL fine-tuning from a YAML config plus overrides."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="multi-objective RL fine-tuning (molma, gapo, pgapo, so-*, any gradient method)",
        description="Train a policy with MOLMA (APA + Aligned-MTL), GAPO / P-GAPO, any registered gradient "
                    "method, or a single-objective baseline. Settings: --config YAML (section 'train' if "
                    "present) then key=value overrides, e.g. iterations=20 lora.r=16 objectives.help=runs/rm-help.")
    p.add_argument("--algo", help="molma | gapo | pgapo | so-help | so-safe | so-weighted | so-piecewise | "
                                  "<gradient method, e.g. mgda, pcgrad, cagrad, upgrad, imtl-g, nash-mtl>")
    p.add_argument("--config", help="YAML config (a TrainConfig mapping, or one under the key 'train')")
    p.add_argument("--out", help="run folder (default from the config)")
    p.add_argument("--loss", choices=["auto", "apa", "ppo"], help="policy loss (auto: ppo for gapo/pgapo)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest intact checkpoint in --out (an error when there is none)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=_train)

    s = subparsers.add_parser("sweep", help="train one run per importance weight (SO-weighted sweep, Fig. 4; "
                                            "or a P-GAPO / MOLMA preference sweep for a Pareto front)")
    s.add_argument("--algo", default="so-weighted")
    s.add_argument("--weights", required=True,
                   help="help-objective weights, comma separated (the other objective gets 1 - w), e.g. 0.2,0.5,0.8")
    s.add_argument("--config")
    s.add_argument("--out", required=True, help="parent folder; runs go to OUT/<algo>-w<weight>")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=_sweep)


def _load(args: argparse.Namespace, extra: dict | None = None):
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    from molma.config import load_config, parse_overrides, read_yaml
    from molma.rl import TrainConfig

    section = None
    if args.config and "train" in read_yaml(args.config):
        section = "train"
    over = parse_overrides(args.overrides)
    for key in ("algo", "out", "loss"):
        value = getattr(args, key, None)
        if value is not None:
            over[key] = value
    over.update(extra or {})
    return load_config(TrainConfig, args.config, over, section=section)


def _train(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from molma.rl import MultiObjectiveTrainer
    from molma.rl.checkpoint import CheckpointError, find_checkpoint
    from molma.rl.parallel import rank

    cfg = _load(args)
    try:
        if args.resume:  # before any model is loaded: is there anything to resume from at all?
            path, problems = find_checkpoint(Path(cfg.out) / "checkpoints", verify=False)
            if path is None:
                raise CheckpointError(f"--resume: no usable checkpoint in {cfg.out}: {'; '.join(problems)} "
                                      f"(one is written every save_every={cfg.save_every} iterations; "
                                      "drop --resume to start over)")
        summary = MultiObjectiveTrainer(cfg).train(resume=args.resume)
    except CheckpointError as err:
        print(f"molma train: error: {err}", file=sys.stderr)
        return 2
    if rank() != 0:  # under torchrun / accelerate launch, process 0 reports
        return 0
    print(json.dumps({k: summary[k] for k in ("algo", "iterations", "wall_time_s", "final") if k in summary},
                     indent=2))
    print(f"run folder: {cfg.out}  (metrics.jsonl, tensorboard/, checkpoints/, final/)")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from molma.rl import MultiObjectiveTrainer

    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    if not weights or any(not 0.0 <= w <= 1.0 for w in weights):
        raise SystemExit(f"--weights must be numbers in [0, 1], got {args.weights!r}")
    runs = {}
    for w in weights:
        out = f"{args.out}/{args.algo}-w{w:g}"
        cfg = _load(args, {"out": out, "importance": [w, 1.0 - w]} if 0 < w < 1 else
                    {"out": out, "importance": [max(w, 1e-6), max(1.0 - w, 1e-6)]})
        summary = MultiObjectiveTrainer(cfg).train()
        runs[f"{args.algo}-w{w:g}"] = {"weight_help": w, "final": summary.get("final"), "out": out}
    print(json.dumps(runs, indent=2))
    return 0
