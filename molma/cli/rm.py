"""``molma rm``: train and evaluate reward models (one per objective, eq. 3.2).

    molma rm train --objective safe --data builtin --base smollm2-135m-instruct --config configs/rm/demo.yaml
    molma rm eval --model runs/rm-help --model runs/rm-safe --data builtin:help --data builtin:safe
    molma rm average --model runs/rm-safe-s0 --model runs/rm-safe-s1 --out runs/rm-safe   # WARM

``rm eval`` marks the pairs a reward-model folder was trained on and averages real and builtin sets
apart (see :func:`molma.rewards.evaluate.format_table`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)

TRAIN_FLAGS = ("objective", "data", "base", "output_dir", "push_to_hub")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("rm", help="train and evaluate reward models (one per objective)",
                                   description="Reward models: a transformer with a scalar head trained on "
                                               "preference pairs with -log(sigmoid(r(x,y_c) - r(x,y_r))).")
    sub = parser.add_subparsers(dest="rm_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])

    train = sub.add_parser(
        "train", help="train a reward model", config_kind="rm",
        description="Train a reward model; settings come from RewardTrainConfig defaults (the paper's), then "
                    "--config, then key=value overrides, then the flags below.",
        epilog="examples:\n  molma rm train --objective safe --data builtin --config configs/rm/demo.yaml\n"
               "  molma rm train --objective safe --data hh.jsonl.gz[:1500] finetune=lora lora.r=8 epochs=2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--objective", help="objective name: help, safe or any other (default: help)")
    train.add_argument("--data", help="pairs: a file (JSONL/CSV/Parquet, HH-RLHF, PKU, SHP, TRL conversational), "
                                      "a save_to_disk folder, a glob, builtin (= builtin:<objective>), builtin:help, "
                                      "builtin:safe, hub:NAME?split=...; optional [start:stop] suffix")
    train.add_argument("--base", help="backbone: smollm2-135m-instruct (builtin), a hub id or a local folder")
    train.add_argument("--out", "--output", "-o", dest="output_dir",
                       help="checkpoint folder (default runs/rm-<objective>); -o / --output are aliases")
    train.add_argument("--threads", type=int,
                       help="torch CPU threads, set before the model loads (default: the config's 'threads:', "
                            "else torch's default)")
    train.add_argument("--push-to-hub", metavar="REPO_ID",
                       help="upload the saved reward model to this Hugging Face Hub repository (OWNER/NAME); "
                            "needs a token (hf auth login or HF_TOKEN). Config key: push_to_hub")
    train.add_argument("--config", help="YAML file with RewardTrainConfig keys")
    train.add_argument("--section", help="read this top-level section of the YAML file (e.g. rm)")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. learning_rate=1e-4 lora.r=8 train_top_layers=4 "
                            "skip_invalid=true")
    train.set_defaults(func=run_train)

    ev = sub.add_parser(
        "eval", help="accuracy and score distribution of reward models on preference sets",
        description="Accuracy (chosen scored strictly higher; ties are not correct) and score statistics; "
                    "a table like the paper's Table 2 across models and data sets.",
        epilog="data specs: a file, builtin:help, builtin:safe, hub:..., with optional @help/@safe (label of "
               "PKU-SafeRLHF) and [start:stop] suffixes, e.g. pku.jsonl@safe[:1000]")
    ev.add_argument("--model", "-m", action="append", required=True,
                    help="reward-model folder or objective spec (rule:length, ...); repeatable")
    ev.add_argument("--data", "-d", action="append", required=True, help="preference set; repeatable")
    ev.add_argument("--objective", help="label for multi-label sets (PKU-SafeRLHF): help or safe")
    ev.add_argument("--limit", type=int, help="at most this many pairs per set")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--max-length", type=int, default=512)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--skip-invalid", action="store_true", help="skip bad rows instead of stopping")
    ev.add_argument("--exclude-train", action="store_true",
                    help="leave out the pairs a model was trained on (default: score them, mark the set with *, "
                         "and report the accuracy on the other pairs)")
    ev.add_argument("--out", default="rm-eval",
                    help="folder for results.csv and results.json (default rm-eval)")
    ev.set_defaults(func=run_eval)

    avg = sub.add_parser(
        "average", help="average the weights of reward models trained with different seeds (WARM)",
        description="Weight-average reward models fine-tuned from the same base with different seeds (WARM, "
                    "Rame et al. 2024): one model that scores like an ensemble of them, saved like any of them.")
    avg.add_argument("--model", "-m", action="append", required=True,
                     help="reward-model folder (same base, architecture and scoring); two or more")
    avg.add_argument("--out", "-o", required=True, help="folder of the averaged reward model")
    avg.set_defaults(func=run_average)


def _fail(command: str, err: BaseException) -> int:
    log.debug("failure", exc_info=err)
    print(f"molma rm {command}: error: {err}", file=sys.stderr)
    return 2


def run_train(args: argparse.Namespace) -> int:
    from molma.config import ConfigError, load_config, parse_overrides
    from molma.rewards.train import RewardTrainConfig, train_reward_model

    overrides = parse_overrides(args.overrides)
    for flag in TRAIN_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            overrides[flag] = value
    extras: dict[str, Any] = {}
    config = load_config(RewardTrainConfig, args.config, overrides, section=args.section, extra_keys=("threads",),
                         extras=extras)
    threads = args.threads if args.threads is not None else extras.get("threads")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
        import torch

        torch.set_num_threads(threads)
    try:
        path = train_reward_model(config)
    except ConfigError:
        raise
    except (ValueError, FloatingPointError, RuntimeError, ImportError) as err:  # HubError is a RuntimeError
        return _fail("train", err)
    print(f"reward model saved to {path}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from molma.rewards.evaluate import evaluate_many, format_table, write_results

    try:
        rows = evaluate_many(args.model, args.data, objective=args.objective, limit=args.limit,
                             skip_invalid=args.skip_invalid, exclude_train=args.exclude_train,
                             batch_size=args.batch_size, max_length=args.max_length, device=args.device)
    except (ValueError, FloatingPointError, RuntimeError, OSError) as err:
        return _fail("eval", err)
    print("\naccuracy (%), chosen scored higher; ties count as not correct")
    print(format_table(rows))
    print("\nscores: mean +- std (chosen | rejected | margin), ties")
    for r in rows:
        c, j, m = r["chosen"], r["rejected"], r["margin"]
        print(f"  {r['model']} on {r['data']} (n={r['n']}): {c['mean']:+.3f} +- {c['std']:.3f} | "
              f"{j['mean']:+.3f} +- {j['std']:.3f} | {m['mean']:+.3f} +- {m['std']:.3f}, ties {r['ties']}")
    csv_path, json_path = write_results(rows, args.out)
    print(f"\nwrote {csv_path} and {json_path}")
    return 0


def run_average(args: argparse.Namespace) -> int:
    from molma.rewards.averaging import average_reward_models

    try:
        path = average_reward_models(args.model, args.out)
    except (ValueError, OSError) as err:
        return _fail("average", err)
    print(f"weight average of {len(args.model)} reward models saved to {path}")
    return 0
