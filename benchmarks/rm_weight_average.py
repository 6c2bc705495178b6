"""Benchmark: RMsafe as a weight average of reward models trained with different seeds (WARM, Rame et al. 2024)
against its members, on the experiment's real HH-RLHF split (validation dialogues never trained on).

Runs only the experiment's judges stage (``molma.experiment.train_judges``) with ``rm_safe_seeds`` set: RMhelp
and one RMsafe per seed (the config's ``rm_safe`` settings, two at a time in worker processes), then their
average; every member and the average are scored on the held-out sets. Resumable: members finished before are
reused. Writes a JSON record (members' and the average's accuracies with Wilson intervals, wall time, CPU).

    .venv/bin/python benchmarks/rm_weight_average.py --seeds 0 1 2 3 --out outputs/rm-warm \\
        --json benchmarks/results/rm_weight_average.json

``--inner-validation`` trains and scores on the training dialogues alone, split again by dialogue in the same
way: how settings such as the number of members are chosen without looking at the validation dialogues.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VALIDATION = "HH-RLHF harmless (validation dialogues)"


def training_dialogues_file(cfg, path: Path) -> dict:
    """Write the raw lines of the HH file's training dialogues (the experiment's split) to ``path``: read with
    the same split settings, they split again into inner train / validation dialogues. Nothing of the
    validation dialogues is in it."""
    import gzip

    from molma.data.hh import read_hh_split

    split = read_hh_split(cfg.hh_data, cfg.hh_validation_fraction, seed=cfg.seed)
    lines = {int(p.source.rsplit(":", 1)[1]) for p in split.train_pairs}
    held = {int(p.source.rsplit(":", 1)[1]) for p in split.validation_pairs}
    assert not lines & held
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(cfg.hh_data, "rt", encoding="utf-8") as src, gzip.open(path, "wt", encoding="utf-8") as dst:
        for number, line in enumerate(src, start=1):
            if number in lines:
                dst.write(line)
    return {"file": str(path), "source": cfg.hh_data, "training_dialogue_pairs": len(lines),
            "validation_dialogue_pairs_left_out": len(held),
            "split": f"hh_validation_fraction {cfg.hh_validation_fraction} and seed {cfg.seed}, applied twice"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cpu/experiment.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", default="outputs/rm-warm", help="folder of the judges (as an experiment's rm/)")
    parser.add_argument("--json", default="benchmarks/results/rm_weight_average.json")
    parser.add_argument("--also", nargs="*", default=[], metavar="SEEDS",
                        help="averages of subsets of the members to score too, e.g. 0,1 (comma-separated seeds)")
    parser.add_argument("--inner-validation", action="store_true",
                        help="train and score on the training dialogues only: the config's HH split applied again "
                             "to them gives inner train / validation dialogues, for choosing settings without "
                             "the validation dialogues that Table 2 reports")
    parser.add_argument("overrides", nargs="*", help="experiment config overrides (key=value)")
    args = parser.parse_args()

    import torch

    from molma.config import load_config, to_dict
    from molma.environment import environment_info
    from molma.eval.stats import wilson_interval
    from molma.experiment import ExperimentConfig, judge_pairs, train_judges

    overrides = [*args.overrides, f"rm_safe_seeds=[{','.join(map(str, args.seeds))}]", "rm_safe_candidates=[]"]
    cfg = load_config(ExperimentConfig, args.config, overrides)
    inner = None
    if args.inner_validation:
        inner = training_dialogues_file(cfg, Path(args.out) / "hh-train-dialogues.jsonl.gz")
        cfg = load_config(ExperimentConfig, args.config, [*overrides, f"hh_data={inner['file']}"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    train_judges(cfg, Path(args.out))
    wall = time.perf_counter() - t0

    def with_interval(correct: int, n: int) -> dict:
        low, high = wilson_interval(correct, n)
        return {"accuracy": round(correct / n, 4), "correct": correct, "n": n, "wilson_95": [round(low, 4),
                                                                                             round(high, 4)]}

    members = json.loads((Path(args.out) / "members" / "members.json").read_text())["members"]
    subsets = {}
    if args.also:
        from molma.rewards import METADATA_FILE, RewardModel, evaluate_reward_model
        from molma.rewards.averaging import average_reward_models

        heldout_sets = judge_pairs(cfg)[1]
    for spec in args.also:  # e.g. the average of two members, which costs no more wall time than one
        seeds = [int(s) for s in spec.split(",")]
        folder = average_reward_models([Path(args.out) / "members" / f"rm-safe-seed{s}" for s in seeds],
                                       Path(args.out) / "subsets" / f"rm-safe-seeds{'-'.join(map(str, seeds))}")
        saved = json.loads((folder / METADATA_FILE).read_text())["config"]  # scored as trained, as in the stage
        judge = RewardModel.from_pretrained(folder, name="safe", max_length=saved["max_length"],
                                            precision=saved["precision"])
        subsets[spec] = {label: with_interval(r["correct"], r["n"]) for label, data in heldout_sets.items()
                         for r in [evaluate_reward_model(judge, data)]}
    rows = json.loads((Path(args.out) / "results.json").read_text())
    record = {
        "benchmark": "RMsafe: weight average of one reward model per seed (WARM) vs its members",
        "command": "benchmarks/rm_weight_average.py --config " + args.config + " --seeds "
                   + " ".join(map(str, args.seeds)) + (" --also " + " ".join(args.also) if args.also else "")
                   + (" --inner-validation" if args.inner_validation else "")
                   + "".join(f" {o}" for o in args.overrides),
        "rm_safe_settings": cfg.rm_safe, "seeds": args.seeds,
        "inner_validation": inner,
        "members": {name: {label: with_interval(v["correct"], v["n"]) for label, v in sets.items()}
                    for name, sets in members.items()},
        "average": {r["data"]: with_interval(r["correct"], r["n"]) for r in rows if r["model"] == "RMsafe"},
        "subset_averages": subsets,
        "rmhelp": {r["data"]: with_interval(r["correct"], r["n"]) for r in rows if r["model"] == "RMhelp"},
        "target": {"set": VALIDATION, "accuracy": 0.62},
        "wall_s": round(wall, 1), "workers": cfg.workers, "threads": cfg.threads,
        "environment": environment_info(), "config": to_dict(cfg),
    }
    achieved = record["average"].get(VALIDATION, {}).get("accuracy")
    record["met"] = achieved is not None and achieved >= 0.62 if not inner else None  # inner split: no target
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("members", "average", "subset_averages", "met", "wall_s")}, indent=1))


if __name__ == "__main__":
    main()
