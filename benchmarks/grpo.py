"""MOLMA-GRPO against MOLMA-APA on SmolLM2-135M-Instruct with LoRA: the same rollout budget, time and reward.

Both variants generate the same number of responses per iteration (``--experience``; GRPO as
``experience / group_size`` prompts with ``group_size`` responses each, APA as ``experience`` prompts) with
the same ``max_new_tokens``, for the same number of iterations, so they sample about the same number of
tokens (the JSON records the counts). Reported per variant:

1. seconds per iteration (median over iterations 2..N, by phase: generation, scoring, reference, training)
   and seconds per 1,000 generated tokens;
2. the held-out rewards after the budget: each objective's mean score of one seeded sample per held-out
   prompt (the prompts the run set aside), for the trained policy and for the initial one;
3. the parameters each variant holds and trains (GRPO builds no critic).

Objectives: ``--objectives help=RM_FOLDER,safe=RM_FOLDER`` (reward models, e.g. outputs/experiment/rm/rm-help);
default: rule objectives (``length`` and ``banned_words``), so the timing is of the trainer. ``--tiny`` runs the
whole script in seconds on a tiny random Llama (a check that the script works, not a measurement) and
writes to a temporary folder unless ``--out`` is given.

    .venv/bin/python benchmarks/grpo.py [--iterations 10] [--experience 16] [--objectives help=...,safe=...]
    .venv/bin/python benchmarks/grpo.py --tiny
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from molma.atomic import write_text_atomic
from molma.environment import environment_info
from molma.models import LoraSettings
from molma.rl import MultiObjectiveTrainer, TrainConfig
from molma.rl.rollout import GenerationSettings, generate


def parse_pairs(spec: str, option: str) -> dict[str, str]:
    """``name=value,name=value`` from the command line option ``option`` (named in the error)."""
    pairs = [part.split("=", 1) for part in spec.split(",") if part.strip()]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"{option}: expected name=value,name=value, got {spec!r}")
    return {name.strip(): value.strip() for name, value in pairs}


def parse_objectives(spec: str | None) -> dict[str, str]:
    if not spec:
        return {"help": "rule:length", "safe": "rule:banned_words"}
    return parse_pairs(spec, "--objectives")


def heldout_rewards(trainer: MultiObjectiveTrainer, max_prompts: int, max_new_tokens: int, seed: int = 0,
                    adapters: bool = True) -> dict[str, float]:
    """Mean score per objective of one seeded sample per held-out prompt (``adapters=False``: the initial
    policy, i.e. the LoRA base with adapters off)."""
    scores = heldout_scores(trainer, max_prompts, max_new_tokens, seed, adapters)
    return {name: round(statistics.mean(v), 4) for name, v in scores.items()}


@torch.no_grad()
def heldout_scores(trainer: MultiObjectiveTrainer, max_prompts: int, max_new_tokens: int, seed: int = 0,
                   adapters: bool = True, pools: list[str] | None = None) -> dict[str, list[float]]:
    """Each objective's score of one seeded sample per held-out prompt, in prompt order (the held-out pools,
    or those named in ``pools``, one after the other; the first ``max_prompts``); ``adapters=False``: the
    initial policy."""
    from contextlib import nullcontext

    from molma.data.chat import render_prompt
    from molma.models.precision import autocast

    prompts = [p for tag, pool in trainer.heldout_pools.items() if pools is None or tag in pools
               for p in pool][:max_prompts]
    if not prompts:
        raise SystemExit("no held-out prompts (heldout_fraction 0?)")
    texts = [render_prompt(trainer.tokenizer, p.text) for p in prompts]
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    scores: dict[str, list[float]] = {name: [] for name in trainer.names}
    off = trainer.policy.disable_adapter() if not adapters else nullcontext()
    with off, autocast(trainer.policy, trainer.precision):
        for start in range(0, len(texts), 16):
            chunk = texts[start:start + 16]
            batch, _ = generate(trainer.policy, trainer.tokenizer, chunk, settings, seed=seed,
                                rows=list(range(start, start + len(chunk))))
            ids = batch.response_ids.masked_fill(batch.response_mask == 0, trainer.tokenizer.pad_token_id)
            responses = trainer.tokenizer.batch_decode(ids, skip_special_tokens=True)
            plain = [p.text for p in prompts[start:start + len(chunk)]]
            for obj in trainer.objectives:
                scores[obj.name].extend(obj.score(plain, responses).float().tolist())
    return scores


def run_variant(name: str, algo: str, args, tmp: str, policy_factory) -> dict:
    cfg = TrainConfig(algo=algo, objectives=parse_objectives(args.objectives), iterations=args.iterations,
                      experience_size=args.experience, minibatch_size=args.minibatch,
                      max_new_tokens=args.max_new_tokens, lr=args.lr, weight_decay=0.0, whiten_advantages=True,
                      critic_backbone=args.critic_backbone, lora=LoraSettings(r=8, alpha=16), save_every=0,
                      report_to="none", progress=False, seed=args.seed, group_size=args.group_size,
                      out=f"{tmp}/{name}", **({"model": args.model} if args.model else {}))
    kwargs = {}
    if policy_factory is not None:  # --tiny
        kwargs["policy"], kwargs["tokenizer"] = policy_factory()
    trainer = MultiObjectiveTrainer(cfg, **kwargs)
    before = heldout_rewards(trainer, args.heldout_prompts, args.max_new_tokens, adapters=False)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    after = heldout_rewards(trainer, args.heldout_prompts, args.max_new_tokens)
    rows = [json.loads(x) for x in Path(cfg.out, "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows  # the first iteration is a warm-up
    phases = {k.split("/", 1)[1]: round(statistics.median(r[k] for r in timed), 3)
              for k in timed[0] if k.startswith("time/")}
    tokens = [r["response_tokens"] * args.experience for r in rows]  # generated tokens per iteration

    def count(modules, trainable: bool = False) -> int:
        return sum(p.numel() for m in modules if m is not None for p in m.parameters()
                   if p.requires_grad or not trainable)

    result = {
        "algo": algo, "loss": cfg.policy_loss, "group_size": cfg.group_samples,
        "prompts_per_iteration": args.experience // cfg.group_samples, "responses_per_iteration": args.experience,
        "seconds_per_iteration": phases, "wall_s": round(wall, 1),
        "generated_tokens_total": round(sum(tokens)),
        "seconds_per_1k_generated_tokens": round(1000 * statistics.median(
            r["time/total"] / (r["response_tokens"] * args.experience) for r in timed), 3),
        "heldout_rewards_initial": before, "heldout_rewards_trained": after,
        "heldout_reward_gain": {k: round(after[k] - before[k], 4) for k in after},
        "last_train_rewards": {k.split("/")[-1]: round(rows[-1][k], 4) for k in rows[-1]
                               if k.startswith("reward/raw/") and k.count("/") == 2},
        "critic": trainer.critic is not None,
        "parameters_held": count([trainer.policy, trainer.reference, trainer.critic]),
        "parameters_trained": count([trainer.policy, trainer.critic], trainable=True),
    }
    print(name, json.dumps({k: result[k] for k in ("seconds_per_iteration", "heldout_reward_gain", "critic")}),
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--experience", type=int, default=16, help="responses per iteration (both variants)")
    parser.add_argument("--minibatch", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4, help="GRPO responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--critic-backbone", default="frozen", choices=["frozen", "trainable"],
                        help="MOLMA-APA's critic (frozen: the cheap one molma's CPU configs use)")
    parser.add_argument("--objectives", help="name=spec,... (default: rule objectives length, banned_words)")
    parser.add_argument("--model", help="policy (default: the builtin SmolLM2-135M-Instruct)")
    parser.add_argument("--heldout-prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama, 2 iterations: checks the script")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/grpo.json; --tiny: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    factory = None
    if args.tiny:
        from molma.models import tiny_llama

        args.iterations, args.experience, args.minibatch = 2, 8, 8
        args.max_new_tokens, args.heldout_prompts = min(args.max_new_tokens, 6), 8
        factory = tiny_llama
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(args.out or (f"{tmp}/grpo.json" if args.tiny else "benchmarks/results/grpo.json"))
        variants = {"molma-apa": "molma", "molma-grpo": "molma-grpo"}
        results = {name: run_variant(name, algo, args, tmp, factory) for name, algo in variants.items()}
        apa, grpo = results["molma-apa"], results["molma-grpo"]
        out = {
            "settings": vars(args), "environment": environment_info(),
            "note": "same responses per iteration, max_new_tokens and iterations for both variants; held-out "
                    "rewards: one seeded sample per held-out prompt, scored by each objective",
            "results": results,
            "ratio_seconds_per_iteration_grpo_to_apa": round(
                grpo["seconds_per_iteration"]["total"] / apa["seconds_per_iteration"]["total"], 3),
            "ratio_seconds_per_1k_tokens_grpo_to_apa": round(
                grpo["seconds_per_1k_generated_tokens"] / apa["seconds_per_1k_generated_tokens"], 3),
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_path, json.dumps(out, indent=2))
        print(json.dumps({k: v for k, v in out.items() if k.startswith("ratio")}))
        print(f"written: {out_path}")


if __name__ == "__main__":
    main()
