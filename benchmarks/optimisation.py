"""Does the trainer raise the reward it optimises? One run per number of epochs per iteration, same seed.

Every iteration the trainer samples ``--experience`` rollouts and takes ``epochs`` whole-batch steps on them
(``minibatch_size = experience_size``, as molma's CPU configs do). The question this answers is whether those
settings *optimise* at all at CPU scale: a run whose training reward shows no trend while its KL to the
reference grows is drifting, not learning. Reported per variant (``--epochs 1 4`` -> two runs):

1. the optimised reward per iteration (the mean raw score of the iteration's rollouts) and its least-squares
   slope per iteration with a 95 % interval (``scipy.stats.linregress``, t quantile), the first and last
   quarters' means, the KL to the reference per iteration;
2. the held-out reward of the trained policy against the initial one (one seeded sample per held-out prompt,
   prompts the run never trains on): means, the paired mean difference with its bootstrap 95 % interval,
   wins / ties / losses and the sign test; and seconds per iteration.

Default objective: ``rule:banned_words`` (minus the number of common words such as "the", "a", "is": a
reward any working policy-gradient loop lowers the count of) optimised by SO-help, with ``rule:length``
logged beside it (not optimised). ``--objectives help=RM_FOLDER,safe=RM_FOLDER --algo so-safe`` asks the
same of a reward model; ``--algo molma`` (or so-weighted, molma-grpo) optimises both objectives, each judged on its own
pool's held-out prompts. ``--tiny`` checks the script in seconds on a tiny random Llama.

    .venv/bin/python benchmarks/optimisation.py [--epochs 1 4] [--iterations 24] [--workers 2]
    .venv/bin/python benchmarks/optimisation.py --tiny
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo import heldout_scores, parse_objectives, parse_pairs  # noqa: E402  (held-out scoring lives there)

from molma.atomic import write_text_atomic  # noqa: E402
from molma.environment import environment_info  # noqa: E402
from molma.eval.stats import paired_comparison  # noqa: E402
from molma.models import LoraSettings  # noqa: E402
from molma.rl import MultiObjectiveTrainer, TrainConfig  # noqa: E402

DEFAULT_OBJECTIVES = "help=rule:banned_words,safe=rule:length"


def _finite_or_none(x: float) -> float | None:
    """A constant series has no interval: None, not NaN (which is not JSON)."""
    return round(float(x), 5) if math.isfinite(x) else None


def trend(values: list[float]) -> dict[str, float | None]:
    """Least-squares slope per iteration with a 95 % t interval, and the first / last quarters' means."""
    x = list(range(1, len(values) + 1))
    fit = stats.linregress(x, values)
    half = stats.t.ppf(0.975, len(values) - 2) * fit.stderr
    q = max(len(values) // 4, 1)
    return {"slope_per_iteration": _finite_or_none(fit.slope), "slope_ci_low": _finite_or_none(fit.slope - half),
            "slope_ci_high": _finite_or_none(fit.slope + half), "slope_p": _finite_or_none(fit.pvalue),
            "first_quarter_mean": round(statistics.mean(values[:q]), 4),
            "last_quarter_mean": round(statistics.mean(values[-q:]), 4)}


def heldout_comparison(trained: list[float], initial: list[float]) -> dict[str, float | int | None]:
    """The trained policy's held-out scores against the initial policy's, prompt by prompt."""
    full = paired_comparison(trained, initial)
    keys = ("n", "n_win", "n_tie", "n_loss", "sign_p", "mean_diff", "diff_ci_low", "diff_ci_high")
    return {k: round(full[k], 4) if isinstance(full[k], float) else full[k] for k in keys}


def optimised_objectives(cfg: TrainConfig) -> list[str]:
    """The objectives whose rewards the algorithm optimises: so-help / so-safe one, the others all."""
    if cfg.algo in ("so-help", "so-safe"):
        return [cfg.safe_objective if cfg.algo == "so-safe" else cfg.help_objective]
    return list(cfg.objectives)


def run_variant(epochs: int, args: argparse.Namespace, folder: str) -> dict:
    torch.set_num_threads(args.threads)
    prompts = parse_pairs(args.prompts, "--prompts") if args.prompts else None
    cfg = TrainConfig(algo=args.algo, objectives=parse_objectives(args.objectives), iterations=args.iterations,
                      experience_size=args.experience, minibatch_size=args.experience, epochs_per_iteration=epochs,
                      max_new_tokens=args.max_new_tokens, max_prompt_tokens=96, lr=args.lr, weight_decay=0.0,
                      whiten_advantages=True, critic_backbone="frozen", lora=LoraSettings(r=8, alpha=16),
                      save_every=0, report_to="none", progress=False, seed=args.seed,
                      heldout_fraction=args.heldout_fraction, out=f"{folder}/epochs{epochs}",
                      **({"prompts": prompts} if prompts else {}), **({"model": args.model} if args.model else {}))
    kwargs = {}
    if args.tiny:
        from molma.models import tiny_llama

        kwargs["policy"], kwargs["tokenizer"] = tiny_llama()
    trainer = MultiObjectiveTrainer(cfg, **kwargs)
    targets = optimised_objectives(cfg)
    # each optimised objective is judged on its own pool's held-out prompts when there is one (so-safe: safety
    # prompts; molma: help on help prompts, safe on safety prompts); the others on the first target's prompts
    pools = {t: [t] if trainer.heldout_pools.get(t) else None for t in targets}
    before = {t: heldout_scores(trainer, args.heldout_prompts, args.max_new_tokens, adapters=False, pools=pools[t])
              for t in targets}
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    after = {t: heldout_scores(trainer, args.heldout_prompts, args.max_new_tokens, pools=pools[t]) for t in targets}
    judged_on = {k: k if k in targets else targets[0] for k in cfg.objectives}  # objective -> its prompts
    rows = [json.loads(x) for x in Path(cfg.out, "metrics.jsonl").read_text().splitlines()]
    rewards = {name: [round(r[f"reward/raw/{name}"], 4) for r in rows] for name in cfg.objectives}
    result = {
        "epochs_per_iteration": epochs, "gradient_steps": epochs * args.iterations, "optimised": targets,
        "train_reward_trend": {t: trend(rewards[t]) for t in targets},
        "train_rewards": rewards, "kl": [round(r["kl"], 4) for r in rows],
        "heldout_prompts": {t: len(before[t][t]) for t in targets},
        "heldout_pools": {t: pools[t] or sorted(trainer.heldout_pools) for t in targets},
        "heldout_rewards_initial": {k: round(statistics.mean(before[t][k]), 4) for k, t in judged_on.items()},
        "heldout_rewards_trained": {k: round(statistics.mean(after[t][k]), 4) for k, t in judged_on.items()},
        # trained against initial on the same prompts and sampling seed: mean difference with its paired
        # bootstrap interval, wins / ties / losses and the sign test
        "heldout_vs_initial": {k: heldout_comparison(after[t][k], before[t][k]) for k, t in judged_on.items()},
        "seconds_per_iteration": round(statistics.median(r["time/total"] for r in rows[1:] or rows), 2),
        "wall_s": round(wall, 1),
    }
    for t in targets:
        gain = result["heldout_vs_initial"][t]
        print(f"epochs {epochs}: {t} {json.dumps(result['train_reward_trend'][t])} kl {result['kl'][-1]} held-out "
              f"{gain['mean_diff']:+.3f} [{gain['diff_ci_low']:+.3f}, {gain['diff_ci_high']:+.3f}] "
              f"p {gain['sign_p']:.3f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 4], help="whole-batch steps per iteration")
    parser.add_argument("--algo", default="so-help",
                        choices=["so-help", "so-safe", "so-weighted", "molma", "molma-grpo"],
                        help="so-help / so-safe optimise one objective, so-weighted / molma / molma-grpo "
                             "(Aligned-MTL on group-relative advantages, no critic) both")
    parser.add_argument("--objectives", default=DEFAULT_OBJECTIVES, help="help=SPEC,safe=SPEC (rules or RM folders)")
    parser.add_argument("--prompts", help="help=FILE,safe=FILE prompt pools (default: the builtin ones)")
    parser.add_argument("--iterations", type=int, default=24)
    parser.add_argument("--experience", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--heldout-fraction", type=float, default=0.2)
    parser.add_argument("--heldout-prompts", type=int, default=64)
    parser.add_argument("--model", help="policy (default: the builtin SmolLM2-135M-Instruct)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=1, help="runs trained at a time (processes)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama, 3 iterations: checks the script")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/optimisation.json)")
    args = parser.parse_args()
    for spec, option in ((args.objectives, "--objectives"), (args.prompts, "--prompts")):
        if spec:
            parse_pairs(spec, option)  # a malformed option stops here, before any model loads
    if args.tiny:
        args.iterations, args.experience, args.max_new_tokens, args.heldout_prompts = 3, 8, 6, 8
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(args.out or (f"{tmp}/optimisation.json" if args.tiny
                                     else "benchmarks/results/optimisation.json"))
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_variant, e, args, tmp) for e in args.epochs]
            results = [f.result() for f in futures]
        out = {"settings": vars(args), "environment": environment_info(),
               "note": "train rewards: mean raw score of each iteration's rollouts; slope: least squares over "
                       "iterations, 95 % t interval; held-out: one seeded sample per held-out prompt",
               "results": {f"epochs{r['epochs_per_iteration']}": r for r in results}}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_path, json.dumps(out, indent=2))
        print(f"written: {out_path}")


if __name__ == "__main__":
    main()
