"""Benchmark: reward-model training with the frozen trunk's features stored once (molma.rewards.trunk) against
training that runs the frozen layers' forward at every step, in one process, on real HH-RLHF pairs.

The experiment's RMsafe settings (SmolLM2-135M-Instruct, top 8 of 30 layers trained, 256 tokens, batch 16, one
epoch) on the first ``--pairs`` pairs of the HH train dialogues: the features' cost, then one member trained
from them and one trained as before (same seed), and how far apart the two models' scores are on held-out pairs.

    .venv/bin/python benchmarks/rm_trunk.py --pairs 96 --json benchmarks/results/rm_trunk.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cpu/experiment.yaml")
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--heldout", type=int, default=64, help="validation-dialogue pairs the two models score")
    parser.add_argument("--json", default="benchmarks/results/rm_trunk.json")
    args = parser.parse_args()

    import torch

    from molma.config import from_dict, load_config
    from molma.environment import environment_info
    from molma.experiment import ExperimentConfig, judge_pairs
    from molma.rewards import RewardModel, RewardTrainConfig, evaluate_reward_model, train_reward_model
    from molma.rewards.train import write_trunk_features

    cfg = load_config(ExperimentConfig, args.config, [])
    torch.set_num_threads(cfg.threads or 1)
    train_sets, heldout_sets = judge_pairs(cfg)
    pairs = train_sets["safe"][:args.pairs]
    heldout = heldout_sets["HH-RLHF harmless (validation dialogues)"][:args.heldout]
    work = Path(tempfile.mkdtemp(prefix="rm-trunk-"))

    def config(name: str) -> RewardTrainConfig:
        return from_dict(RewardTrainConfig, {"objective": "safe", "base": cfg.model, "seed": cfg.seed,
                                             "precision": cfg.precision, "output_dir": str(work / name),
                                             **cfg.rm, **cfg.rm_safe}, source="rm_trunk benchmark")

    t0 = time.perf_counter()
    features = write_trunk_features(config("features"), pairs, work / "trunk.safetensors")
    feature_s = time.perf_counter() - t0
    trained, seconds = {}, {}
    for name, trunk in (("stored_trunk", features), ("every_step", None)):
        folder = train_reward_model(config(name), pairs=pairs, trunk_features=trunk)
        seconds[name] = json.loads((folder / "molma_rm.json").read_text())["train_seconds"]
        trained[name] = folder
    scores = {}
    for name, folder in trained.items():
        judge = RewardModel.from_pretrained(folder, name="safe", max_length=cfg.rm_safe["max_length"],
                                            precision=cfg.precision)
        scores[name] = judge.score([p.prompt for p in heldout], [p.chosen for p in heldout])
        scores[name + "_accuracy"] = evaluate_reward_model(judge, heldout)["accuracy"]
    diff = (scores["stored_trunk"] - scores["every_step"]).abs()
    record = {
        "benchmark": "reward-model training: frozen trunk's features stored once vs its forward at every step",
        "command": f"benchmarks/rm_trunk.py --pairs {args.pairs} --heldout {args.heldout}",
        "pairs": len(pairs), "settings": {**cfg.rm, **cfg.rm_safe}, "precision": cfg.precision,
        "features_s": round(feature_s, 1),
        "train_s": seconds,
        "speedup_per_member": round(seconds["every_step"] / seconds["stored_trunk"], 3),
        "members_for_features_to_pay": "features_s / (train_s.every_step - train_s.stored_trunk)",
        "break_even_members": round(feature_s / (seconds["every_step"] - seconds["stored_trunk"]), 2),
        "heldout_pairs": len(heldout),
        "score_abs_difference": {"mean": round(float(diff.mean()), 5), "max": round(float(diff.max()), 5)},
        "heldout_accuracy": {k: scores[k + "_accuracy"] for k in trained},
        "environment": environment_info(),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("features_s", "train_s", "speedup_per_member", "break_even_members",
                                             "score_abs_difference", "heldout_accuracy")}, indent=1))


if __name__ == "__main__":
    main()
