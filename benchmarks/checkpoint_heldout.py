"""Held-out evaluation of an experiment's runs at an earlier iteration: did the last iterations help?

Used for docs/results/cpu-experiment-40-iterations (each run after 20 of its 40 iterations). Three steps:

1. ``--copy`` while the experiment trains: the trainer keeps only its two newest checkpoints, so this polls
   ``OUT/runs/RUN/checkpoints/iter-NNNNNN`` and copies it to ``--keep`` as soon as it is written.
2. ``--evaluate`` after the experiment: each copied checkpoint becomes a policy folder (the run's own config,
   resumed from the checkpoint with ``iterations = N``: no step is taken, ``final/`` is written), then the
   experiment's held-out evaluation is extended by these policies into ``--eval-out`` (same prompts, seed,
   judges and settings; the saved responses of the experiment's models are reused).
3. ``--compare`` (also run by ``--evaluate``): each run at the end against itself at iteration N and each
   earlier policy against the reference (paired sign test and bootstrap, as everywhere in molma), with Holm's
   correction over all comparisons, written to ``--json``.

    python benchmarks/checkpoint_heldout.py --copy --iteration 20 &      # beside `molma experiment ...`
    python benchmarks/checkpoint_heldout.py --evaluate --iteration 20 --json benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path


def copy_checkpoints(root: Path, runs: list[str], iteration: int, keep: Path, poll_s: float = 10.0) -> None:
    """Step 1: copy each run's ``iter-<iteration>`` checkpoint before the trainer prunes it."""
    name = f"iter-{iteration:06d}"
    while True:
        for run in runs:
            src, dst = root / "runs" / run / "checkpoints" / name, keep / run
            if (src / "meta.json").is_file() and not dst.exists():  # written whole (atomic folder)
                shutil.copytree(src, dst.with_name(dst.name + ".partial"))
                dst.with_name(dst.name + ".partial").rename(dst)
                print(f"copied {src} -> {dst}", flush=True)
        if all((keep / run).exists() for run in runs):
            return
        time.sleep(poll_s)


def materialise(root: Path, runs: list[str], iteration: int, keep: Path, policies: Path) -> dict[str, str]:
    """Step 2a: ``policies/RUN/final`` from each kept checkpoint (resume with ``iterations = iteration``)."""
    from molma.rl import MultiObjectiveTrainer
    from molma.rl.config import load_run_config

    out = {}
    for run in runs:
        dst = policies / run
        if not (dst / "final").is_dir():
            (dst / "checkpoints").mkdir(parents=True, exist_ok=True)
            shutil.copytree(keep / run, dst / "checkpoints" / f"iter-{iteration:06d}", dirs_exist_ok=True)
            (dst / "checkpoints" / "latest").write_text(f"iter-{iteration:06d}")
            shutil.copyfile(root / "runs" / run / "metrics.jsonl", dst / "metrics.jsonl")
            cfg = replace(load_run_config(root / "runs" / run / "config.yaml"), iterations=iteration, out=str(dst),
                          report_to="none")
            MultiObjectiveTrainer(cfg).train(resume=True)
        out[f"{run}-it{iteration}"] = str(dst / "final")
    return out


def evaluate(root: Path, runs: list[str], earlier: dict[str, str], eval_out: Path) -> None:
    """Step 2b: the experiment's held-out evaluation with the earlier policies added."""
    from molma.config import load_config
    from molma.experiment import ExperimentConfig, _eval_prompts, _evaluate_models

    cfg = load_config(ExperimentConfig, str(root / "config.yaml"))
    eval_out.mkdir(parents=True, exist_ok=True)
    for name in ("responses.jsonl", "summary.json"):
        if not (eval_out / name).exists():
            shutil.copyfile(root / "eval" / name, eval_out / name)
    models = {"ref": cfg.model, **{r: str(root / "runs" / r / "final") for r in runs}, **earlier}
    _evaluate_models(cfg, root / "rm", models, _eval_prompts(cfg, root / "data"), eval_out, versus="molma")


def compare(runs: list[str], iteration: int, eval_out: Path) -> dict:
    """Step 3: end vs iteration N per run, and iteration N vs the reference, Holm-corrected together."""
    from molma.eval import load_result
    from molma.experiment import adjust_family

    result = load_result(eval_out, versus="molma")
    pairs = {f"{r} vs {r}-it{iteration}": (r, f"{r}-it{iteration}") for r in runs}
    pairs |= {f"{r}-it{iteration} vs ref": (f"{r}-it{iteration}", "ref") for r in runs}
    comparisons = {label: result.compare(a, b) for label, (a, b) in pairs.items()}
    family = adjust_family(comparisons, result.objectives)
    models = {m: {"kl": result.kl.get(m), **{f"{o}/mean": float(result.scores[m][o].mean())
                                               for o in result.objectives}} for m in result.models}
    return {"n_prompts": len(result.prompt_ids), "objectives": result.objectives, "iteration": iteration,
            "models": models, "comparisons": comparisons, "multiplicity": family}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", type=Path, default=Path("outputs/experiment"))
    p.add_argument("--runs", default="molma,so-weighted,molma-s1,so-weighted-s1")
    p.add_argument("--iteration", type=int, default=20)
    p.add_argument("--keep", type=Path, default=Path("outputs/checkpoint-heldout/kept"))
    p.add_argument("--policies", type=Path, default=Path("outputs/checkpoint-heldout/policies"))
    p.add_argument("--eval-out", type=Path, default=Path("outputs/checkpoint-heldout/eval"))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/checkpoint_heldout.json"))
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--copy", action="store_true")
    mode.add_argument("--evaluate", action="store_true")
    mode.add_argument("--compare", action="store_true")
    args = p.parse_args()
    runs = args.runs.split(",")
    if args.copy:
        copy_checkpoints(args.experiment, runs, args.iteration, args.keep)
        return
    if args.evaluate:
        import torch

        torch.set_num_threads(1)
        earlier = materialise(args.experiment, runs, args.iteration, args.keep, args.policies)
        evaluate(args.experiment, runs, earlier, args.eval_out)
    facts = compare(runs, args.iteration, args.eval_out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(facts, indent=2, default=float) + "\n")
    print(json.dumps(facts["multiplicity"], indent=1))


if __name__ == "__main__":
    main()
