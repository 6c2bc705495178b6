"""``molma soup``: Rewarded Soups (Rame et al. 2023) of two LoRA policies trained from one base.

For each weight w, ``OUT/w<w>/`` is a policy folder whose adapter is exactly
``base + w * dW_A + (1 - w) * dW_B`` (w is the weight of the FIRST policy; the adapter concatenates the two
ranks), loadable by ``molma eval`` and ``peft.AutoPeftModelForCausalLM``; ``OUT/soup.json`` lists them.

With ``--rm`` the soups are also evaluated (as ``molma eval`` does, in ``OUT/eval``) and their mean rewards
written as a preference sweep, ``OUT/pareto/soup.json`` (the format ``molma report`` draws as a Pareto
front with hypervolume). With two objectives a point's weights are ``[w, 1 - w]`` in the order of
``--rm``: name the first policy's objective first.

  molma soup --policies runs/so-help/final,runs/so-safe/final --weights 0,0.25,0.5,0.75,1 --out runs/soup \\
             --rm help=runs/rm-help --rm safe=runs/rm-safe --prompts builtin:test
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path


def _weights(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--weights: expected numbers like 0,0.25,0.5, got {text!r}") from err
    if not out:
        raise argparse.ArgumentTypeError("--weights: give at least one weight")
    return out


def _policies(text: str) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    if len(out) != 2:
        raise argparse.ArgumentTypeError(f"--policies: expected two folders A,B, got {text!r}")
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    from molma.cli.eval import _rm_arg, add_generation_arguments

    p = subparsers.add_parser("soup", help="Rewarded Soups: interpolate two LoRA policies (exact adapter), "
                                           "optionally evaluate the front",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", type=_policies, required=True, metavar="A,B",
                   help="two LoRA policy folders with the same base model (e.g. runs/so-help/final,runs/so-safe/final)")
    p.add_argument("--weights", type=_weights, required=True, metavar="W,...",
                   help="weights in [0, 1] of the FIRST policy, e.g. 0,0.25,0.5,0.75,1")
    p.add_argument("--out", required=True, help="output folder: one policy folder w<w>/ per weight")
    p.add_argument("--rm", type=_rm_arg, action="append", default=[], metavar="NAME=PATH_OR_RULE",
                   help="evaluate the soups with this objective (repeatable); writes OUT/pareto/soup.json")
    add_generation_arguments(p)  # --prompts, --seed, sampling, --precision, --threads, --device, ...
    p.add_argument("--sweep-out", help="where the sweep JSON goes (default OUT/pareto/soup.json)")
    p.add_argument("--method", default="Rewarded soups", help="method name in the sweep JSON and the report")
    p.set_defaults(func=run_soup)


def run_soup(args: argparse.Namespace) -> int:
    from molma.models.soup import rewarded_soups

    try:
        soups = rewarded_soups(args.policies, args.weights, args.out)
    except ValueError as err:
        print(f"molma soup: error: {err}", file=sys.stderr)
        return 2
    for s in soups:
        print(f"{s.label}: {s.path}  (= base + {s.weight:g} dW[{args.policies[0]}] + {1 - s.weight:g} "
              f"dW[{args.policies[1]}])")
    if not args.rm:
        return 0
    return _evaluate(args, soups)


def _evaluate(args: argparse.Namespace, soups) -> int:
    from molma.cli.eval import load_eval_prompts, load_objectives, threads_and_device
    from molma.eval.generate import load_for_eval
    from molma.eval.runner import EvalConfig, evaluate_models
    from molma.eval.sweep import sweep_from_result, write_sweep

    device = threads_and_device(args, "soup")
    if device is None:
        return 2
    try:
        objectives = load_objectives(args.rm, str(device), args.precision)
        prompts = load_eval_prompts(args.prompts, args.n_prompts, args.seed, args.heldout_fraction,
                                    args.split_seed)
        # resume=False: the soups were just rewritten, never reuse older answers
        config = EvalConfig(max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                            do_sample=not args.greedy, temperature=args.temperature, top_p=args.top_p,
                            score_batch_size=args.batch_size, progress=not args.no_progress,
                            precision=args.precision, resume=False)
        models = {f"soup-{s.label}": str(s.path) for s in soups}
        result = evaluate_models(models, prompts, objectives, config, out_dir=Path(args.out) / "eval",
                                 loader=functools.partial(load_for_eval, device=device))
        if len(objectives) == 2:
            weights = {f"soup-{s.label}": [s.weight, 1.0 - s.weight] for s in soups}
            sweep = sweep_from_result(result, weights, args.method, versus=None, baseline=None)
        else:
            sweep = _sweep_without_weights(result, models, args)
        path = write_sweep(args.sweep_out or Path(args.out) / "pareto" / "soup.json", sweep)
    except (ValueError, FloatingPointError) as err:
        print(f"molma soup: error: {err}", file=sys.stderr)
        return 2
    for point in sweep["points"]:
        print(f"{point['label']}: " + ", ".join(f"{o} {v:.4f}" for o, v in point["means"].items()))
    print(f"saved: {result.out_dir}/responses.jsonl, {path}")
    return 0


def _sweep_without_weights(result, models, args: argparse.Namespace) -> dict:
    """A sweep whose points carry mean rewards only (more or fewer than two objectives)."""
    import numpy as np

    return {"method": args.method, "objectives": list(result.objectives),
            "points": [{"label": m, "means": {o: float(np.mean(result.scores[m][o])) for o in result.objectives}}
                       for m in models]}
