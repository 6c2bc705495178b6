"""Trainer speed, measured in one run on the embedded SmolLM2-135M with LoRA (ratios, not absolute times):

1. precision: seconds per iteration of the demo's MOLMA config (experience 16, whole-batch step) in bf16
   autocast vs float32 (target: bf16 >= 1.8x faster);
2. rollout: molma's generation path (bf16, the sampling head, seeded inversion sampling) in tokens/s against
   plain float32 HF ``generate`` on the same prompts and the same LoRA policy (target >= 2.5x);
3. cost of K objectives: MOLMA ``fast`` and ``exact`` against SO-weighted on the same batch for K = 2, 4, 8
   rule objectives (targets: fast <= 1.10x at every K, exact <= 2.5x at K = 8);
4. lengths: the training forward + backward on a batch padded to its longest prompt against one forward per
   group of similar prompt lengths, with and without the shared prompt prefix computed once (``--prompts
   real``: the experiments' mix of real prompts);
5. prefix: seconds per iteration of the demo's MOLMA config (bf16) with the shared prompt prefix computed once
   (rollout prefill, training, reference and critic forwards; molma.models.prefill) and without it;
6. overhead: a forward's fixed cost in tokens (no-grad forward, and forward + backward) on rows of one rollout
   batch, fitted over 2 / 4 / 8 / 16 rows, what molma.models.prefill's grouping charges per extra forward;
7. agreement: a short learning MOLMA run (lr 1e-3) in fp32 and bf16 from the same seed, reward curves compared
   with the gap between two fp32 seeds (the noise);
8. decoding: the bf16 rollout with and without each of two decoding shortcuts that change no number (session
   16): sibling projections as one product (molma.models.fusion) and keys cached in the dtype the attention
   reads (molma.models.prefill.keys_to_attend), four variants in alternating rounds, with a check that all
   four draw the same tokens with the same log-probs.

Objectives are rule-based (`length` with several caps, `banned_words`) so the timing is of the trainer, not
of reward models. The learning rate is ~0 (1e-12): every variant samples the same responses (sampling is
seeded per row), so variants differ only in how they compute. The first iteration of each run is a
warm-up and not counted; variants run in rounds in alternating order (ABC CBA ...) so slow drifts of the
machine's load hit them alike.

    .venv/bin/python benchmarks/trainer.py [--iterations 3] [--rounds 2] [--ks 2,4,8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import molma.models.prefill as prefill
import molma.rl.rollout as rollout
from molma.environment import read_cpuinfo
from molma.models import LoraSettings
from molma.rl import MultiObjectiveTrainer, TrainConfig


def objectives(k: int) -> dict[str, str]:
    specs = {"help": "rule:length", "safe": "rule:banned_words"}
    for i in range(2, k):
        specs[f"len{i}"] = f"rule:length:cap={20 + 5 * i}"
    return specs


def run_variant(name: str, settings: dict, args, tmp: str, r: int) -> tuple[list[dict], float]:
    cfg = TrainConfig(**settings, iterations=args.iterations, experience_size=args.experience,
                      minibatch_size=args.experience, max_new_tokens=args.max_new_tokens, lr=1e-12,
                      lora=LoraSettings(r=8, alpha=16), critic_backbone="frozen", save_every=0,
                      report_to="none", progress=False, out=f"{tmp}/{name}-{r}")
    t0 = time.perf_counter()
    MultiObjectiveTrainer(cfg).train()
    wall = round(time.perf_counter() - t0, 1)
    rows = [json.loads(x) for x in Path(cfg.out, "metrics.jsonl").read_text().splitlines()][1:]
    print(name, r, json.dumps({k: round(statistics.median(x[k] for x in rows), 2)
                               for k in rows[0] if k.startswith("time/")}), flush=True)
    return rows, wall


@contextlib.contextmanager
def without_shared_prefix():
    """Inside: molma's forwards group rows by prompt length but compute no shared prefix (session 13's code
    path), for the ratios of the ``prefix`` and ``lengths`` parts and the ``_groups`` rollout."""
    saved = prefill.prefill_cache, rollout.shares_prefix
    grouped = prefill.prefill_cache
    prefill.prefill_cache = lambda *a, **k: grouped(*a, **{**k, "share_prefix": False})
    rollout.shares_prefix = lambda model: False
    try:
        yield
    finally:
        prefill.prefill_cache, rollout.shares_prefix = saved


def summarise(rows: list[dict], walls: list[float]) -> dict:
    phases = {k.split("/", 1)[1]: round(statistics.median(x[k] for x in rows), 3)
              for k in rows[0] if k.startswith("time/")}
    return {"seconds_per_iteration": phases, "wall_s": walls, "iterations_timed": len(rows),
            "response_tokens_mean": round(statistics.mean(x["response_tokens"] for x in rows), 2)}


def measure(variants: dict[str, dict], args, tmp: str) -> dict[str, dict]:
    rows_of: dict[str, list[dict]] = {n: [] for n in variants}
    walls: dict[str, list[float]] = {n: [] for n in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            rows, wall = run_variant(name, variants[name], args, tmp, r)
            rows_of[name].extend(rows)
            walls[name].append(wall)
    return {n: summarise(rows_of[n], walls[n]) for n in names}


def benchmark_prompts(args) -> list[str]:
    """The rollout benchmark's prompts: ``builtin`` (the first builtin help prompts, 39-46 tokens templated:
    little padding) or ``real`` (the experiments' mix: 60 % self-instruct instructions, 40 % HH-RLHF
    red-teaming first turns from ../shared/data, 31-96 tokens: a left-padded batch is ~40 % padding), the pools'
    first prompts or, with ``--prompt-seed``, a seeded draw."""
    from molma.data import load_builtin_prompts

    if args.prompts == "builtin":
        return [p.text for p in load_builtin_prompts("help")[:args.experience]]
    from molma.data.hh import read_hh_split
    from molma.data.readers import read_prompts

    data = Path(args.shared_data)
    help_pool = [p.text for p in read_prompts(str(data / "self-instruct/seed_tasks.jsonl.gz"))]
    safe_pool = [p.text for p in read_hh_split(data / "hh-rlhf/harmless-base-test-first1800.jsonl.gz").train_prompts]
    if args.prompt_seed is not None:  # another draw of the same mix (another length profile)
        import random

        rng = random.Random(args.prompt_seed)
        rng.shuffle(help_pool)
        rng.shuffle(safe_pool)
    if args.prompt_max_tokens:  # as the experiments' pools: prompts longer once templated are left out
        from molma.data.chat import render_prompt
        from molma.models import load_tokenizer

        tok = load_tokenizer("smollm2-135m-instruct")

        def fits(text: str) -> bool:
            return len(tok(render_prompt(tok, text), add_special_tokens=False)["input_ids"]) <= args.prompt_max_tokens

        help_pool = [p for p in help_pool if fits(p)]
        safe_pool = [p for p in safe_pool if fits(p)]
    n_help = round(0.6 * args.experience)
    return help_pool[:n_help] + safe_pool[:args.experience - n_help]


def benchmark_policy(args):
    """The trainer's policy (SmolLM2 with LoRA r 8 on a frozen base), its tokenizer and ``--prompts`` rendered with
    the chat template: what the rollout parts time."""
    from molma.data.chat import render_prompt
    from molma.models import load_model

    model, tok = load_model("smollm2-135m-instruct", lora=LoraSettings(r=8, alpha=16))
    return model, tok, [render_prompt(tok, p) for p in benchmark_prompts(args)]


def generation_speed(args) -> dict:
    """molma's rollout path in bf16 against plain float32 HF generate, same prompts, alternating, on the
    trainer's policy: SmolLM2 with LoRA adapters (r 8) on a frozen base. (Until 2026-12 this part timed the
    bare model, whose weights all require grad, so autocast cached their bf16 casts; the trainer's frozen
    base was re-cast at every token, and its bf16 rollouts were no faster than fp32.) ``molma_rollout_bf16_padded``
    is the bf16 rollout with the prompt's prefill over the whole padded batch (before molma.models.prefill),
    ``molma_rollout_bf16_groups`` with the prefill by length groups but without the shared prefix (session 13's)."""
    from molma.models.precision import autocast
    from molma.rl.rollout import GenerationSettings, generate, tokenize_prompts

    model, tok, texts = benchmark_policy(args)
    model.eval()
    enc = tokenize_prompts(tok, texts, 96 if args.prompts == "real" else 256)
    lengths = enc["attention_mask"].sum(dim=1).tolist()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, max_prompt_tokens=enc["input_ids"].shape[1])
    grouped_prefill = prefill.prefill_cache
    speeds: dict[str, list[float]] = {"hf_generate_fp32": [], "molma_rollout_bf16": [], "molma_rollout_fp32": [],
                                      "molma_rollout_bf16_padded": [], "molma_rollout_bf16_groups": []}
    for r in range(args.rounds + 1):
        for name in list(speeds) if r % 2 == 0 else list(speeds)[::-1]:
            t0 = time.perf_counter()
            if name == "hf_generate_fp32":
                enc = tokenize_prompts(tok, texts, settings.max_prompt_tokens)
                with torch.no_grad():
                    out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=True, top_k=0,
                                         pad_token_id=tok.pad_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
                n_tokens = int((new != tok.pad_token_id).sum())
            else:
                prefill.prefill_cache = (lambda *a, **k: None) if name.endswith("padded") else grouped_prefill
                try:
                    with (without_shared_prefix() if name.endswith("groups") else contextlib.nullcontext(),
                          autocast(model, "fp32" if name.endswith("fp32") else "bf16", sampling=True)):
                        batch, _ = generate(model, tok, texts, settings, seed=r)
                finally:
                    prefill.prefill_cache = grouped_prefill
                n_tokens = int(batch.response_mask.sum())
            if r:  # round 0 is a warm-up
                speeds[name].append(n_tokens / (time.perf_counter() - t0))
    med = {k: round(statistics.median(v), 1) for k, v in speeds.items()}
    return {"tokens_per_s": med, "raw": {k: [round(x, 1) for x in v] for k, v in speeds.items()},
            "ratio_molma_bf16_to_hf_fp32": round(med["molma_rollout_bf16"] / med["hf_generate_fp32"], 3),
            "ratio_grouped_to_padded_prefill_bf16": round(med["molma_rollout_bf16"]
                                                          / med["molma_rollout_bf16_padded"], 3),
            "ratio_shared_prefix_to_groups_only_bf16": round(med["molma_rollout_bf16"]
                                                             / med["molma_rollout_bf16_groups"], 3),
            "prompts": args.prompts, "prompt_tokens": {"min": min(lengths), "max": max(lengths),
                                                       "mean": round(sum(lengths) / len(lengths), 1)},
            "batch": args.experience, "max_new_tokens": args.max_new_tokens, "model": "SmolLM2-135M + LoRA r 8"}


@contextlib.contextmanager
def decoding_shortcuts(fused: bool, half_keys: bool):
    """Inside: the rollout with or without fused sibling projections and keys cached in bf16 (``decoding``)."""
    from molma.models import precision

    saved = precision._fused_siblings, prefill.keys_to_attend
    if not fused:
        precision._fused_siblings = lambda *a, **k: contextlib.nullcontext()
    if not half_keys:
        prefill.keys_to_attend = lambda keys, values: keys
    try:
        yield
    finally:
        precision._fused_siblings, prefill.keys_to_attend = saved


def decoding_speed(args) -> dict:
    """The bf16 rollout of ``--prompts`` (the trainer's LoRA policy, as in ``generation``) with neither, each and
    both of the session-16 decoding shortcuts, alternating; tokens/s medians, ratios to neither, and whether every
    variant drew the same tokens with the same log-probs in each round (they must: neither shortcut changes a
    number)."""
    from molma.models.precision import autocast
    from molma.rl.rollout import GenerationSettings, generate

    model, tok, texts = benchmark_policy(args)
    model.eval()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, max_prompt_tokens=96)
    variants = {"neither": (False, False), "fused": (True, False), "half_keys": (False, True), "both": (True, True)}
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    identical = True
    for r in range(args.rounds + 1):
        drawn = []
        for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            t0 = time.perf_counter()
            with decoding_shortcuts(*variants[name]), autocast(model, "bf16", sampling=True):
                batch, logp = generate(model, tok, texts, settings, seed=r)
            if r:  # round 0 is a warm-up
                speeds[name].append(int(batch.response_mask.sum()) / (time.perf_counter() - t0))
            drawn.append((batch.input_ids, logp))
        identical &= all(torch.equal(ids, drawn[0][0]) and torch.equal(lp, drawn[0][1]) for ids, lp in drawn)
    med = {k: round(statistics.median(v), 1) for k, v in speeds.items()}
    return {"tokens_per_s": med, "raw": {k: [round(x, 1) for x in v] for k, v in speeds.items()},
            "ratio_to_neither": {k: round(v / med["neither"], 3) for k, v in med.items()},
            "same_tokens_and_logprobs": identical, "prompts": args.prompts, "batch": args.experience,
            "max_new_tokens": args.max_new_tokens}


def policy_and_rollout(args):
    """The trainer's policy (SmolLM2 + LoRA r 8, in training mode) and one bf16 rollout batch of ``--prompts``:
    what the ``lengths`` and ``overhead`` parts time forwards on."""
    from molma.models.precision import autocast
    from molma.rl.rollout import GenerationSettings, generate

    model, tok, texts = benchmark_policy(args)
    with autocast(model, "bf16", sampling=True):
        batch, _ = generate(model, tok, texts, GenerationSettings(max_new_tokens=args.max_new_tokens,
                                                                  max_prompt_tokens=96), seed=0)
    model.train()
    return model, batch


def length_grouping_speed(args) -> dict:
    """The training forward + backward of the policy (SmolLM2 + LoRA, bf16 autocast, the trainer's eager
    attention) on one rollout batch of ``--prompts``: one forward over the batch padded to its longest prompt,
    one per group of similar prompt lengths (session 13), and the shared prompt prefix once then the groups
    (``sequence_logprobs(by_length=...)``), alternating."""
    from molma.models.attention import training_attention
    from molma.models.precision import autocast
    from molma.rl.rollout import sequence_logprobs

    model, batch = policy_and_rollout(args)
    seconds: dict[str, list[float]] = {"padded": [], "by_length": [], "shared_prefix": []}
    for r in range(args.rounds + 1):
        for name in list(seconds) if r % 2 == 0 else list(seconds)[::-1]:
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with (without_shared_prefix() if name == "by_length" else contextlib.nullcontext(),
                  autocast(model, "bf16"), training_attention(model)):
                logp, _ = sequence_logprobs(model, batch, by_length=name != "padded")
            logp.sum().backward()
            if r:  # round 0 is a warm-up
                seconds[name].append(time.perf_counter() - t0)
    med = {k: round(statistics.median(v), 3) for k, v in seconds.items()}
    lengths = batch.prompt_lengths
    plan = rollout.prompt_plan(batch, model)
    return {"seconds_forward_backward": med, "raw": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
            "speedup_by_length": round(med["padded"] / med["by_length"], 3),
            "speedup_shared_prefix": round(med["padded"] / med["shared_prefix"], 3),
            "speedup_shared_prefix_over_groups": round(med["by_length"] / med["shared_prefix"], 3),
            "prompts": args.prompts, "shared_prefix_tokens": plan.prefix if plan else 0,
            "groups": [[lengths[i] for i in g] for g in prefill.length_groups(lengths)],
            "groups_after_prefix": [[lengths[i] for i in g] for g in plan.groups] if plan else None,
            "columns_padded": batch.input_ids.shape[1], "batch": len(lengths)}


def forward_overhead(args) -> dict:
    """The fixed cost of one forward in tokens, fitted as ``seconds = fixed + per_row x rows`` (least squares on
    the fastest of ``--rounds`` runs at 2, 4, 8 and 16 rows of one rollout batch): a no-grad forward (prefill,
    reference) and the training forward + backward (bf16, LoRA, the trainer's eager attention). ``fixed /
    per_row x columns`` is what splitting a batch costs in tokens, against the padding it saves."""
    import numpy as np

    from molma.models.attention import training_attention
    from molma.models.precision import autocast
    from molma.rl.rollout import sequence_logprobs

    model, batch = policy_and_rollout(args)
    sizes = [n for n in (2, 4, 8, 16) if n <= len(batch.prompt_lengths)]
    out = {}
    for mode in ("forward", "forward_backward"):
        best = {n: float("inf") for n in sizes}
        for _ in range(args.rounds):
            for n in sizes:
                part = batch.select(torch.arange(n))
                model.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                if mode == "forward":
                    with torch.no_grad(), autocast(model, "bf16", inference=True):
                        sequence_logprobs(model, part, by_length=False)
                else:
                    with autocast(model, "bf16"), training_attention(model):
                        logp, _ = sequence_logprobs(model, part, by_length=False)
                    logp.sum().backward()
                best[n] = min(best[n], time.perf_counter() - t0)
        per_row, fixed = np.polyfit(sizes, [best[n] for n in sizes], 1)
        out[mode] = {"seconds_fastest": {n: round(t, 3) for n, t in best.items()}, "fixed_s": round(float(fixed), 3),
                     "per_row_s": round(float(per_row), 4),
                     "fixed_in_tokens": round(float(fixed / per_row * batch.input_ids.shape[1]), 1)}
    return {**out, "columns": batch.input_ids.shape[1], "prompts": args.prompts}


def precision_agreement(args, tmp: str) -> dict:
    """A short MOLMA run that learns (lr 1e-3, two rule objectives) in fp32 and in bf16 from the same seed:
    per-iteration mean rewards of both, and their difference against the run-to-run noise of one precision
    (the same fp32 run with another seed)."""
    curves = {}
    for name, precision, seed in (("fp32", "fp32", 0), ("bf16", "bf16", 0), ("fp32-seed1", "fp32", 1)):
        cfg = TrainConfig(algo="molma", objectives=objectives(2), precision=precision, seed=seed,
                          iterations=args.agreement_iterations, experience_size=args.experience,
                          minibatch_size=args.experience, max_new_tokens=args.max_new_tokens, lr=1e-3,
                          lora=LoraSettings(r=8, alpha=16), critic_backbone="frozen", save_every=0,
                          report_to="none", progress=False, out=f"{tmp}/agree-{name}")
        MultiObjectiveTrainer(cfg).train()
        rows = [json.loads(x) for x in Path(cfg.out, "metrics.jsonl").read_text().splitlines()]
        curves[name] = {o: [round(r[f"reward/raw/{o}"], 4) for r in rows] for o in ("help", "safe")}
        print("agreement", name, json.dumps(curves[name]), flush=True)

    def mean_abs_gap(a: str, b: str, o: str) -> float:
        return round(statistics.mean(abs(x - y) for x, y in zip(curves[a][o], curves[b][o])), 4)

    gaps = {o: {"bf16_vs_fp32": mean_abs_gap("bf16", "fp32", o),
                "fp32_seed1_vs_fp32 (noise)": mean_abs_gap("fp32-seed1", "fp32", o)} for o in ("help", "safe")}
    return {"curves": curves, "mean_abs_gap_per_iteration": gaps,
            "within_noise": all(g["bf16_vs_fp32"] <= g["fp32_seed1_vs_fp32 (noise)"] for g in gaps.values()),
            "objectives": "rule:length (help), rule:banned_words (safe)", "lr": 1e-3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--experience", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ks", default="2,4,8", help="numbers of objectives for the K-cost part")
    parser.add_argument("--parts", default="precision,generation,objectives,agreement")
    parser.add_argument("--agreement-iterations", type=int, default=10)
    parser.add_argument("--prompts", choices=["builtin", "real"], default="builtin",
                        help="generation part: builtin help prompts (similar lengths) or the experiments' real mix")
    parser.add_argument("--prompt-seed", type=int, help="--prompts real: shuffle the pools with this seed "
                        "(default: their first prompts)")
    parser.add_argument("--shared-data", default="../shared/data", help="folder of the real data (--prompts real)")
    parser.add_argument("--prompt-max-tokens", type=int, default=96,
                        help="--prompts real: leave out prompts longer than this once chat-templated, as the "
                             "experiments do (configs/cpu/experiment.yaml prompt_max_tokens; 0: keep all, "
                             "session 13's draws, whose longest prompt was cut from the left)")
    parser.add_argument("--out", default="benchmarks/results/trainer.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    out: dict = {"settings": vars(args), "torch_threads": torch.get_num_threads(),
                 "python": platform.python_version(), "torch": torch.__version__,
                 "cpu": {**read_cpuinfo(), "cpu_count": os.cpu_count()},
                 "note": "ratios compare medians of the same phases in one run; lr ~0 so every variant samples "
                         "the same responses (see response_tokens_mean)"}
    with tempfile.TemporaryDirectory() as tmp:
        if "precision" in parts:
            res = measure({f"molma-{p}": {"algo": "molma", "precision": p, "objectives": objectives(2)}
                           for p in ("fp32", "bf16")}, args, tmp)
            speedup = res["molma-fp32"]["seconds_per_iteration"]["total"] / \
                res["molma-bf16"]["seconds_per_iteration"]["total"]
            out["precision"] = {"results": res, "speedup_bf16": round(speedup, 3), "target": ">= 1.8",
                                "met": speedup >= 1.8}
        if "generation" in parts:
            gen = generation_speed(args)
            out["generation"] = {**gen, "target": ">= 2.5", "met": gen["ratio_molma_bf16_to_hf_fp32"] >= 2.5}
        if "lengths" in parts:
            out["lengths"] = length_grouping_speed(args)
        if "overhead" in parts:
            out["overhead"] = forward_overhead(args)
        if "decoding" in parts:
            out["decoding"] = decoding_speed(args)
        if "prefix" in parts:
            settings = {"algo": "molma", "precision": "bf16", "objectives": objectives(2)}
            rows_of: dict[str, list[dict]] = {"shared": [], "groups_only": []}
            walls: dict[str, list[float]] = {n: [] for n in rows_of}
            for r in range(args.rounds):
                for name in list(rows_of) if r % 2 == 0 else list(rows_of)[::-1]:
                    with without_shared_prefix() if name == "groups_only" else contextlib.nullcontext():
                        rows, wall = run_variant(f"molma-bf16-{name}", settings, args, tmp, r)
                    rows_of[name].extend(rows)
                    walls[name].append(wall)
            res = {n: summarise(rows_of[n], walls[n]) for n in rows_of}
            out["prefix"] = {"results": res, "speedup_shared_prefix": round(
                res["groups_only"]["seconds_per_iteration"]["total"]
                / res["shared"]["seconds_per_iteration"]["total"], 3)}
        if "objectives" in parts:
            per_k = {}
            for k in [int(x) for x in args.ks.split(",")]:
                variants = {f"so-weighted-K{k}": {"algo": "so-weighted"},
                            f"molma-fast-K{k}": {"algo": "molma", "gradient_mode": "fast"},
                            f"molma-exact-K{k}": {"algo": "molma", "gradient_mode": "exact"},
                            f"molma-exact-batched-K{k}": {"algo": "molma", "gradient_mode": "exact",
                                                          "gradient_vjp": "batched"}}
                for v in variants.values():
                    v.update(objectives=objectives(k), precision="bf16")
                    if v["algo"] == "so-weighted":
                        v["importance"] = [1.0] * k
                res = measure(variants, args, tmp)
                total = {name: r["seconds_per_iteration"]["total"] for name, r in res.items()}
                so = total[f"so-weighted-K{k}"]
                per_k[k] = {"results": res, "ratio_fast_to_so": round(total[f"molma-fast-K{k}"] / so, 3),
                            "ratio_exact_to_so": round(total[f"molma-exact-K{k}"] / so, 3),
                            "ratio_exact_batched_to_so": round(total[f"molma-exact-batched-K{k}"] / so, 3)}
            out["objectives"] = {"per_k": per_k, "targets": "fast <= 1.10 at every K; exact <= 2.5 at K = 8",
                                 "met_fast": all(v["ratio_fast_to_so"] <= 1.10 for v in per_k.values()),
                                 "met_exact_k8": min(per_k.get(8, {}).get("ratio_exact_to_so", 99),
                                                     per_k.get(8, {}).get("ratio_exact_batched_to_so", 99)) <= 2.5}
        if "agreement" in parts:
            out["agreement"] = precision_agreement(args, tmp)
    out["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items()
                      if k in ("precision", "generation", "lengths", "overhead", "prefix", "objectives",
                               "agreement", "decoding")},
                     default=str)[:3000])


if __name__ == "__main__":
    main()
