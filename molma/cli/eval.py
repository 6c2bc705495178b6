"""``molma eval``: model-based evaluation (paper section 4.3, Figure 2a).

Every model answers the same test prompts with the same sampling seed, every objective (reward model or
rule) scores every response; responses and scores are saved to ``OUT/responses.jsonl`` and statistics to
``OUT/summary.json``; the win-rate table is printed. ``--rescore OUT`` re-scores saved responses without
regenerating. See docs/eval.md.
"""

from __future__ import annotations

import argparse
import functools
import logging
import random
import sys

log = logging.getLogger(__name__)


def _pairs(text: str, what: str) -> dict[str, str]:
    """``a=x,b=y`` -> {a: x, b: y} (values may contain ':' and '/')."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{what}: expected NAME=VALUE, got {item!r}")
        if name.strip() in out:
            raise argparse.ArgumentTypeError(f"{what}: {name.strip()!r} given twice")
        out[name.strip()] = value.strip()
    return out


def _models_arg(text: str) -> dict[str, str]:
    return _pairs(text, "--models")


def _rm_arg(text: str) -> tuple[str, str]:
    name, sep, spec = text.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise argparse.ArgumentTypeError(f"--rm: expected NAME=PATH_OR_RULE, got {text!r}")
    return name.strip(), spec.strip()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="generate on test prompts, score with every objective, win rates (Figure 2a)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_models_arg, action="append", default=[],
                   help="NAME=SPEC[,NAME=SPEC...]: builtin name, model folder or LoRA adapter folder "
                        "(e.g. ref=smollm2-135m-instruct,molma=runs/molma/final); repeatable")
    p.add_argument("--rm", type=_rm_arg, action="append", default=[], metavar="NAME=PATH_OR_RULE",
                   help="objective: reward-model folder or rule (rule:length, ...); repeatable, required")
    p.add_argument("--out", help="output folder (responses.jsonl, summary.json); in an experiment folder "
                                 "(EXP/eval) the runs that 'molma sweep --out EXP' recorded in EXP/sweeps.json are "
                                 "evaluated too and EXP/sweep/*.json, EXP/pareto/*.json written for molma report")
    p.add_argument("--no-sweeps", action="store_true",
                   help="do not add the sweep runs of EXP/sweeps.json (see --out)")
    p.add_argument("--rescore", metavar="DIR", help="re-score the saved responses in DIR with --rm")
    add_generation_arguments(p)
    p.add_argument("--versus", help="model whose win rates are reported (default: molma, else the first)")
    p.add_argument("--tie-tol", type=float, default=0.0, help="|score difference| <= this is a tie")
    p.add_argument("--kl-reference", metavar="NAME",
                   help="estimate KL(model || NAME) from log-probs of the sampled responses")
    p.add_argument("--no-resume", action="store_true", help="regenerate models already saved in --out")
    p.set_defaults(func=run_eval)


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """The options of every command that generates on evaluation prompts and scores the answers
    (``molma eval``, ``molma soup``): prompts, sampling, batch, precision, threads, device."""
    p.add_argument("--prompts", default="builtin:test",
                   help="builtin:test (held-out prompts of the builtin help/safe pools, same split as RL "
                        "training), heldout:RUN_DIR (the prompts that training run set aside, rebuilt from "
                        "its config.yaml: any pools, same seed and fraction), builtin:help|safe, or a prompt "
                        "file (default: builtin:test)")
    p.add_argument("--n-prompts", type=int, help="random sample of this many prompts (seeded by --seed)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--heldout-fraction", type=float, default=0.2,
                   help="builtin:test: held-out share of each pool (as in RL training; default 0.2)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="builtin:test: seed of the train/held-out split (as in RL training; default 0)")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads (1 is much faster when other jobs share the CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32",
                   help="mixed precision of generation and reward-model scoring (auto: bf16 where the "
                        "hardware has it); default fp32")
    p.add_argument("--device", default="auto",
                   help="where models and reward models run: auto (a GPU when there is one), cpu, cuda:1, ...")


def load_objectives(specs: list[tuple[str, str]], device: str = "cpu", precision: str = "fp32") -> dict[str, object]:
    """``[(name, spec)]`` -> ``{name: Objective}`` via :func:`molma.rewards.load_objective` (reward
    models on ``device``, scoring in ``precision``)."""
    try:
        from molma.rewards import load_objective
    except ImportError:  # the package may not re-export it
        from molma.rewards.objective import load_objective
    out = {}
    for name, spec in specs:
        if name in out:
            raise ValueError(f"--rm {name}=...: objective {name!r} given twice")
        out[name] = load_objective(spec, name, device=device, precision=precision)
    return out


def load_eval_prompts(source: str, n: int | None = None, seed: int = 0, heldout_fraction: float = 0.2,
                      split_seed: int = 0) -> list:
    """Test prompts: ``builtin:test`` = the held-out part of the builtin help and safe pools (the split
    RL training uses, so these were never trained on); ``heldout:RUN_DIR`` = the held-out prompts of that
    training run (:func:`molma.rl.prompts.run_heldout_prompts`); ``builtin:<tag>``; or any prompt source
    read by :func:`molma.data.read_prompts`. ``n`` draws a seeded random sample, kept in source order."""
    if source.startswith("heldout:"):
        from molma.rl.prompts import run_heldout_prompts

        prompts = run_heldout_prompts(source.split(":", 1)[1])
    elif source == "builtin:test":
        from molma.rl.prompts import train_heldout_pools

        _, heldout = train_heldout_pools({"help": "builtin:help", "safe": "builtin:safe"}, heldout_fraction,
                                         seed=split_seed)
        prompts = [p for tag in ("help", "safe") for p in heldout[tag]]
    elif source.startswith("builtin:"):
        from molma.data import load_builtin_prompts

        prompts = list(load_builtin_prompts(source.split(":", 1)[1]))
    else:
        from molma.data import read_prompts

        prompts = list(read_prompts(source))
    if not prompts:
        raise ValueError(f"no prompts in {source}")
    if n is not None:
        if n <= 0:
            raise ValueError(f"--n-prompts must be > 0, got {n}")
        if n < len(prompts):
            keep = sorted(random.Random(seed).sample(range(len(prompts)), n))
            prompts = [prompts[i] for i in keep]
    return prompts


def threads_and_device(args: argparse.Namespace, command: str):
    """Apply ``--threads`` and resolve ``--device`` for an evaluating command; None (after printing the error
    naming the option) when the device is not available."""
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    from molma.distributed import device_for

    try:
        return device_for(args.device)
    except RuntimeError as err:
        print(f"molma {command}: error: --device {args.device}: {err}", file=sys.stderr)
        return None


def run_eval(args: argparse.Namespace) -> int:
    from molma.eval.generate import load_for_eval
    from molma.eval.runner import EvalConfig, evaluate_models, rescore
    from molma.eval.tables import reward_table

    if not args.rm:
        print("molma eval: error: give at least one objective with --rm NAME=PATH_OR_RULE", file=sys.stderr)
        return 2
    device = threads_and_device(args, "eval")
    if device is None:
        return 2
    try:
        objectives = load_objectives(args.rm, str(device), args.precision)
        if args.rescore:
            result = rescore(args.rescore, objectives, batch_size=args.batch_size, versus=args.versus,
                             tie_tol=args.tie_tol, progress=not args.no_progress)
        else:
            models: dict[str, str] = {}
            for group in args.models:
                for name, spec in group.items():
                    if name in models:
                        raise ValueError(f"--models: {name!r} given twice")
                    models[name] = spec
            if not models:
                print("molma eval: error: give --models NAME=SPEC,... (or --rescore DIR)", file=sys.stderr)
                return 2
            if not args.out:
                print("molma eval: error: --out DIR is required", file=sys.stderr)
                return 2
            from molma.layout import MANIFEST, experiment_of, sweep_models

            exp = experiment_of(args.out)
            added = {} if args.no_sweeps else {n: s for n, s in sweep_models(exp).items() if n not in models}
            if added:
                log.info("evaluating the %d sweep run(s) of %s too: %s", len(added), exp / MANIFEST,
                         ", ".join(added))
                models.update(added)
            prompts = load_eval_prompts(args.prompts, args.n_prompts, args.seed, args.heldout_fraction,
                                        args.split_seed)
            config = EvalConfig(max_new_tokens=args.max_new_tokens, seed=args.seed,
                                batch_size=args.batch_size, do_sample=not args.greedy,
                                temperature=args.temperature, top_p=args.top_p,
                                score_batch_size=args.batch_size, versus=args.versus, tie_tol=args.tie_tol,
                                kl_reference=args.kl_reference, resume=not args.no_resume,
                                progress=not args.no_progress, precision=args.precision)
            result = evaluate_models(models, prompts, objectives, config, out_dir=args.out,
                                     loader=functools.partial(load_for_eval, device=device))
    except (ValueError, FloatingPointError) as err:  # bad input; a non-finite reward
        print(f"molma eval: error: {err}", file=sys.stderr)
        return 2
    print(result.win_rate_text())
    print()
    print(reward_table(result.summary, result.objectives).to_text())
    print(f"\nsaved: {result.out_dir}/responses.jsonl, {result.out_dir}/summary.json")
    if not args.no_sweeps and result.out_dir is not None:
        from molma.layout import experiment_of, write_sweep_files

        try:
            written = write_sweep_files(experiment_of(result.out_dir), result)
        except ValueError as err:
            print(f"molma eval: error: {err}", file=sys.stderr)
            return 2
        for path in written:
            print(f"sweep file: {path}")
    return 0
