"""Benchmark: a safety reward model (eq. 3.2) trained on HH-RLHF harmless-base pairs; held-out accuracy.

Trains on the first 1,500 pairs of ``../shared/data/hh-rlhf/harmless-base-test-first1800.jsonl.gz`` and
evaluates on the last 300 (never seen in training), with a CPU budget (target: under 45 minutes on 2 cores,
accuracy >= 60 %; the paper's RMsafe reached 60.6 % on Anthropic Harmless, OpenAssistant's DeBERTa RM
69.0 %). Writes ``benchmarks/results/rm_accuracy.json``. Not part of the test suite.

    .venv/bin/python benchmarks/rm_accuracy.py                    # the budget configuration below
    .venv/bin/python benchmarks/rm_accuracy.py epochs=2 learning_rate=3e-5   # any RewardTrainConfig override
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made 2-thread torch
# ~3-5x slower than this (measured); it costs nothing on an idle machine. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-first1800.jsonl.gz"
OUT = REPO / "benchmarks" / "results" / "rm_accuracy.json"

# The budget configuration (why: see docs/rewards.md, "Benchmark").
BUDGET = {
    "objective": "safe",
    "base": "smollm2-135m-instruct",
    "max_length": 256,
    "train_top_layers": 4,
    "batch_size": 16,
    "epochs": 1.0,
    "learning_rate": 5.0e-5,
    "head_learning_rate": 5.0e-4,
    "logging_steps": 10,
    "skip_invalid": True,  # 4 of the first 1500 HH pairs have an empty reply (lines 87, 517, 926, 1104)
}
REFERENCES = {"paper RMsafe (phi-2, Anthropic Harmless)": 0.606,
              "OpenAssistant DeBERTa-v3-large RM (Anthropic Harmless)": 0.690,
              "logistic regression on frozen SmolLM2 last-token features, 600 pairs (measured here)": 0.59}
TARGET = 0.60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train", type=int, default=1500, help="train on the first N pairs")
    parser.add_argument("--test", type=int, default=300, help="evaluate on the last N pairs")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep", type=Path, help="keep the trained checkpoint here (default: a temp folder)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="RewardTrainConfig overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if not args.data.exists():
        print(f"benchmark data not found: {args.data}", file=sys.stderr)
        return 2

    import torch

    from molma.config import load_config, parse_overrides, to_dict
    from molma.rewards import RewardTrainConfig, load_pairs, train_reward_model

    pairs = load_pairs(str(args.data))
    if args.train + args.test > len(pairs):
        print(f"{args.data} has {len(pairs)} pairs; --train + --test must not exceed it", file=sys.stderr)
        return 2
    train = pairs[:args.train]
    overrides = {**BUDGET, **parse_overrides(args.overrides)}
    out_dir = args.keep or Path(tempfile.mkdtemp(prefix="rm-bench-")) / "rm-safe"
    overrides["output_dir"] = str(out_dir)
    overrides["eval_fraction"] = 0.0
    overrides["eval_data"] = f"{args.data}[{len(pairs) - args.test}:]"
    config = load_config(RewardTrainConfig, None, overrides)

    load_start = os.getloadavg()
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    path = train_reward_model(config, pairs=train)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    meta = json.loads((path / "molma_rm.json").read_text())
    ev = meta["eval"]
    result = {
        "benchmark": "safety RM on HH-RLHF harmless-base: train first 1500 pairs, test last 300",
        "data": str(args.data.name),
        "train_pairs": meta["counts"]["train_pairs"],
        "train_pairs_skipped_invalid": meta["counts"]["invalid_skipped"],
        "test_pairs": ev["n"],
        "accuracy": ev["accuracy"],
        "correct": ev["correct"],
        "ties": ev["ties"],
        "test_loss": ev["loss"],
        "margin": ev["margin"],
        "chosen": ev["chosen"],
        "rejected": ev["rejected"],
        "last_epoch_train_accuracy": meta["last_epoch_train_accuracy"],
        "target": TARGET,
        "passed": ev["accuracy"] >= TARGET,
        "wall_seconds": round(wall, 1),
        "train_seconds": meta["train_seconds"],
        "cpu_seconds": round((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), 1),
        "budget_seconds": 45 * 60,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "platform": platform.platform(), "loadavg_start": load_start,
                    "loadavg_end": os.getloadavg()},
        "note": "Measured on a 2-core machine shared with other jobs (see loadavg): wall time is "
                "pessimistic; cpu_seconds / 2 approximates an idle 2-core run.",
        "config": to_dict(config),
        "references": REFERENCES,
        "versions": meta["versions"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"accuracy {100 * ev['accuracy']:.1f} % on {ev['n']} held-out pairs (target {100 * TARGET:.0f} %), "
          f"wall {wall / 60:.1f} min, cpu {result['cpu_seconds'] / 60:.1f} min; wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
