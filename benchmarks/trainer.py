"""Seconds per RL iteration, split by phase, for SO-weighted, MOLMA-exact and MOLMA-fast on the
embedded SmolLM2-135M with LoRA, measured in one run (issue: MOLMA-fast / SO-weighted <= 1.10).

Objectives are the rule-based `length` and `banned_words` rewards so that the timing is of the trainer,
not of reward models. The first iteration of each run is a warm-up and not counted.

    .venv/bin/python benchmarks/trainer.py [--iterations 3] [--experience 16] [--minibatch 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from molma.models import LoraSettings
from molma.rl import MultiObjectiveTrainer, TrainConfig

VARIANTS = {
    "so-weighted": {"algo": "so-weighted"},
    "molma-exact": {"algo": "molma", "gradient_mode": "exact"},
    "molma-fast": {"algo": "molma", "gradient_mode": "fast"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--experience", type=int, default=16)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/trainer.json")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, variant in VARIANTS.items():
            cfg = TrainConfig(**variant, objectives={"help": "rule:length", "safe": "rule:banned_words"},
                              iterations=args.iterations, experience_size=args.experience,
                              minibatch_size=args.minibatch, max_new_tokens=args.max_new_tokens, lr=1e-4,
                              lora=LoraSettings(r=8, alpha=16), critic_backbone="frozen", save_every=0,
                              tensorboard=False, progress=False, out=f"{tmp}/{name}")
            t0 = time.perf_counter()
            MultiObjectiveTrainer(cfg).train()
            wall = time.perf_counter() - t0
            rows = [json.loads(x) for x in Path(cfg.out, "metrics.jsonl").read_text().splitlines()][1:]
            phases = {k.split("/", 1)[1]: statistics.median(r[k] for r in rows)
                      for k in rows[0] if k.startswith("time/")}
            results[name] = {"seconds_per_iteration": phases, "wall_s": round(wall, 1), "iterations_timed": len(rows)}
            print(name, json.dumps(phases), flush=True)
    so = results["so-weighted"]["seconds_per_iteration"]
    for name in ("molma-exact", "molma-fast"):
        mine = results[name]["seconds_per_iteration"]
        results[name]["ratio_total_to_so"] = round(mine["total"] / so["total"], 3)
        results[name]["ratio_training_to_so"] = round(mine["training"] / so["training"], 3)
    out = {"results": results, "target": "molma-fast total / so-weighted total <= 1.10",
           "met": results["molma-fast"]["ratio_total_to_so"] <= 1.10,
           "settings": vars(args), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
           "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: {kk: v for kk, v in r.items() if kk.startswith("ratio")} for k, r in results.items()}))


if __name__ == "__main__":
    main()
