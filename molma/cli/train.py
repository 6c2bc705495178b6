"""``molma train`` and ``molma sweep``: RL fine-tuning from a YAML config plus overrides.

Before any model is loaded the command checks what it can (:func:`preflight`): the algorithm name, the
optional packages it needs (Nash-MTL), every objective spec (rule, reward-model folder or hub id). Besides
the :class:`~molma.rl.TrainConfig` keys a config may hold ``threads`` (torch CPU threads, set before any
model loads; ``--threads`` wins) and ``processes`` (what the trainer records in a run's ``config.yaml``;
ignored with a note, the process count comes from ``torchrun`` / ``accelerate launch``), so a run's
``config.yaml`` reloads as it is: ``molma train --config runs/x/config.yaml`` (its ``out`` is that run's
folder: pass ``--out`` to train a new run beside it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", config_kind="train",
        help="multi-objective RL fine-tuning (molma, gapo, pgapo, so-*, any gradient method; apa / ppo / grpo / rloo)",
        description="Train a policy with MOLMA (APA + Aligned-MTL), GAPO / P-GAPO, any registered gradient "
                    "method, or a single-objective baseline. Settings: --config YAML (section 'train' if "
                    "present) then key=value overrides, e.g. iterations=20 lora.r=16 objectives.help=runs/rm-help.")
    p.add_argument("--algo", help="molma | gapo | pgapo | so-help | so-safe | so-weighted | so-piecewise | "
                                  "<gradient method, e.g. mgda, pcgrad, cagrad, upgrad, imtl-g, nash-mtl> | "
                                  "trl-grpo-sum | trl-grpo-norm | safe-rlhf; any of them + -apa / -ppo / -grpo / "
                                  "-rloo fixes the loss (molma-grpo, gapo-grpo, so-weighted-grpo, ...)")
    p.add_argument("--config", help="YAML config (a TrainConfig mapping, or one under the key 'train')")
    p.add_argument("--out", help="run folder (default from the config)")
    p.add_argument("--loss", choices=["auto", "apa", "ppo", "grpo", "rloo"],
                   help="policy loss (auto: ppo for gapo / pgapo / safe-rlhf, grpo for trl-grpo-*, apa otherwise; "
                        "grpo / rloo build no critic)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest intact checkpoint in --out (an error when there is none)")
    p.add_argument("--threads", type=int, help="torch CPU threads, set before any model loads (default: the "
                   "config's 'threads:', else torch's default; 1 is fastest on a shared 2-core machine)")
    p.add_argument("--push-to-hub", metavar="REPO_ID",
                   help="upload final/ to this Hugging Face Hub repository (OWNER/NAME) when training ends; "
                        "needs a token (hf auth login or HF_TOKEN). Config key: push_to_hub")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=_train)

    s = subparsers.add_parser("sweep", config_kind="train",
                              help="train one run per importance weight (SO-weighted sweep, Fig. 4; or a P-GAPO "
                                   "/ MOLMA preference sweep for a Pareto front)")
    s.add_argument("--algo", default="so-weighted")
    s.add_argument("--weights", required=True,
                   help="help-objective weights, comma separated (the other objective gets 1 - w), e.g. 0.2,0.5,0.8")
    s.add_argument("--config")
    s.add_argument("--out", required=True,
                   help="experiment folder: runs go to OUT/runs/<algo>-w<weight>, and OUT/sweeps.json records "
                        "them, so that 'molma eval --out OUT/eval' evaluates them and writes the sweep files "
                        "'molma report OUT' draws (OUT/sweep/ for so-weighted, OUT/pareto/ for the others)")
    s.add_argument("--threads", type=int, help="torch CPU threads (default: the config's 'threads:')")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=_sweep)


def _set_threads(value: Any, where: str) -> None:
    from molma.config import ConfigError

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: threads must be an integer >= 1, got {value!r}")
    import torch

    torch.set_num_threads(value)


def _load(args: argparse.Namespace, extra: dict | None = None):
    """The TrainConfig of the command line; sets torch's threads (``--threads``, else the config's)."""
    from molma.config import load_config, parse_overrides, read_yaml

    if getattr(args, "threads", None) is not None:
        _set_threads(args.threads, "--threads")
    top = read_yaml(args.config) if args.config else {}
    section = "train" if "train" in top else None
    over = parse_overrides(args.overrides)
    for key in ("algo", "out", "loss", "push_to_hub"):
        value = getattr(args, key, None)
        if value is not None:
            over[key] = value
    over.update(extra or {})
    extras: dict[str, Any] = {}
    if section is not None and "threads" in top:  # a top-level threads: beside a train: section
        extras["threads"] = top["threads"]
    from molma.rl import TrainConfig
    from molma.rl.config import RUN_CONFIG_EXTRA_KEYS  # handled here (see the module docstring)

    cfg = load_config(TrainConfig, args.config, over, section=section, extra_keys=RUN_CONFIG_EXTRA_KEYS,
                      extras=extras)
    if "processes" in extras:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        (log.warning if extras["processes"] != world else log.info)(
            "%s: ignoring 'processes: %s' (the trainer records it; this run has %d process(es), set by "
            "torchrun / accelerate launch)", args.config or "command line", extras["processes"], world)
    if "threads" in extras and getattr(args, "threads", None) is None:
        _set_threads(extras["threads"], f"{args.config or 'command line'}: threads")
    return cfg


def preflight(cfg) -> None:
    """Checks that need no model, so a typo fails in seconds, before anything loads: the algorithm (a
    preset or a registered gradient method), the optional packages it needs, every objective spec
    (:func:`molma.rewards.check_objective_spec`), the packages of the ``report_to`` backends and, with
    ``push_to_hub``, a Hub token. Raises :class:`~molma.config.ConfigError`."""
    from molma.config import ConfigError
    from molma.rl.config import PRESET_ALGOS

    method = cfg.gradient_method
    if method is not None:
        from molma.gradients.weightings import WEIGHTING_NAMES, get_weighting

        try:
            get_weighting(method, **({"p": cfg.gapo_p} if method == "gapo" else {}))
        except ValueError:
            methods = [n for n in WEIGHTING_NAMES if n not in PRESET_ALGOS and n != "aligned-mtl"]
            raise ConfigError(f"algo: unknown algorithm {cfg.algo!r}; choose one of {', '.join(PRESET_ALGOS)} or "
                              f"a gradient method: {', '.join(methods)}") from None
        except ImportError as err:
            raise ConfigError(f"algo {cfg.algo!r}: {err}") from None
    from molma.rewards.objective import check_objective_spec

    for name, spec in cfg.objectives.items():
        try:
            check_objective_spec(spec, name)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"objectives.{name}: {err}") from None
    from molma.hub import HubError, check_token
    from molma.tracking import check_available

    try:
        check_available(cfg.report_to)
        if cfg.push_to_hub:
            check_token(cfg.push_to_hub)
    except (ImportError, HubError) as err:
        raise ConfigError(str(err)) from None


def _train(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    cfg = _load(args)
    from molma.distributed import rank
    from molma.rl import MultiObjectiveTrainer
    from molma.rl.checkpoint import CheckpointError, find_checkpoint

    try:
        if args.resume:  # before any model is loaded: is there anything to resume from at all?
            path, problems = find_checkpoint(Path(cfg.out) / "checkpoints", verify=False)
            if path is None:
                raise CheckpointError(f"--resume: no usable checkpoint in {cfg.out}: {'; '.join(problems)} "
                                      f"(one is written every save_every={cfg.save_every} iterations; "
                                      "drop --resume to start over)")
        preflight(cfg)
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
    from molma.distributed import rank
    from molma.layout import RUNS, record_sweep, sweep_run_name
    from molma.rl import MultiObjectiveTrainer

    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    if not weights or any(not 0.0 <= w <= 1.0 for w in weights):
        raise SystemExit(f"--weights must be numbers in [0, 1], got {args.weights!r}")
    runs = {}
    configs = {}
    for w in weights:  # every run's config is checked before the first one trains
        out = f"{args.out}/{RUNS}/{sweep_run_name(args.algo, w)}"
        configs[w] = _load(args, {"out": out, "importance": [w, 1.0 - w]} if 0 < w < 1 else
                           {"out": out, "importance": [max(w, 1e-6), max(1.0 - w, 1e-6)]})
        preflight(configs[w])
    done: dict[str, list[float]] = {}
    for w, cfg in configs.items():
        out = cfg.out
        summary = MultiObjectiveTrainer(cfg).train()
        name = sweep_run_name(args.algo, w)
        runs[name] = {"weight_help": w, "final": summary.get("final"), "out": out}
        done[name] = [w, round(1.0 - w, 12)]
        if rank() == 0:  # after each run: what eval can load
            record_sweep(args.out, args.algo, list(cfg.objectives), done)
    if rank() != 0:
        return 0
    print(json.dumps(runs, indent=2))
    print(f"sweep recorded in {args.out}/sweeps.json; 'molma eval --out {args.out}/eval ...' evaluates its runs "
          f"too and writes the sweep files for 'molma report {args.out}'")
    return 0
