"""Cost of one multi-objective training step relative to a single-objective (SO) step.

One step = forward + backward(s) + optimizer step (AdamW) on a batch of 8 x 64 random tokens. The K
objectives are K differently weighted token-level LM losses ``L_k = -sum_t c_kt log p_t / sum_t c_kt``
(random positive weights ``c_k``) from ONE forward pass. Configurations:

* ``so``: ``mean_k L_k``, one ``backward()``, global-norm clipping (1.0), step.
* ``exact-loop`` / ``exact-batched``: ``MultiObjectiveBackward(mode="exact")`` with K looped
  ``autograd.grad`` calls or one batched VJP (``is_grads_batched``); ``exact`` is the faster of the two.
* ``fast-logprob``: ``mode="fast"`` with the per-token log-probabilities as the representation.
* ``fast-hidden``: ``mode="fast"`` with the final hidden states as the representation.
* ``subset-last``: ``mode="subset"`` with the last decoder layer's trainable parameters (GAPO).

All use the Aligned-MTL (MOLMA) weighting. Configurations are interleaved round by round (other jobs
share the machine) and the median over rounds is reported, with ratios to the SO median of the same
run. Usage: ``nice -n 10 .venv/bin/python benchmarks/gradients.py [--models tiny,smollm2] [--ks 2,4,8]
[--repeats 5] [--threads 1] [--configs exact-loop,fast-logprob] [--append]`` (writes
``benchmarks/results/gradients.json``; ``--append`` adds a run to the ones already there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from molma.gradients import MultiObjectiveBackward

ROOT = Path(__file__).resolve().parents[1]
BATCH, SEQ = 8, 64
TARGETS = {"fast": 1.10, "exact": 1.6}


def build_model(name: str) -> tuple[torch.nn.Module, list[torch.Tensor], list[torch.Tensor], int]:
    """(model, trainable params, last-layer trainable params, vocab size)."""
    if name == "tiny":
        from molma.models import tiny_llama

        model, tok = tiny_llama(seed=0)
        prefix = f"model.layers.{model.config.num_hidden_layers - 1}."
        last = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    else:
        from molma.models import LoraSettings, apply_lora, load_model

        base, tok = load_model("smollm2-135m-instruct")
        model = apply_lora(base, LoraSettings(r=16, alpha=32))
        layer = f"layers.{base.config.num_hidden_layers - 1}."
        last = [p for n, p in model.named_parameters() if layer in n and p.requires_grad]
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, last, model.config.vocab_size


def make_batch(vocab: int, K: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(vocab, 32000), (BATCH, SEQ), generator=g)
    weights = torch.rand(K, BATCH, SEQ - 1, generator=g) + 0.05
    return ids, weights


def forward(model: torch.nn.Module, ids: torch.Tensor, weights: torch.Tensor):
    """K token-weighted LM losses, per-token log-probs and final hidden states from one forward."""
    out = model(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states[-1]
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    tok_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    losses = [-(w * tok_lp).sum() / w.sum() for w in weights]
    return losses, tok_lp, hidden


def make_steps(model, params, last, ids, weights, extras: bool,
               only: set[str] | None = None) -> dict[str, Callable[[], Any]]:
    opt = torch.optim.AdamW(params, lr=1e-6)
    engines = {
        "exact-loop": MultiObjectiveBackward(params, "aligned-mtl", mode="exact", vjp="loop"),
        "exact-batched": MultiObjectiveBackward(params, "aligned-mtl", mode="exact", vjp="batched"),
        "fast-logprob": MultiObjectiveBackward(params, "aligned-mtl", mode="fast"),
    }
    if extras:
        engines["fast-hidden"] = MultiObjectiveBackward(params, "aligned-mtl", mode="fast")
        engines["subset-last"] = MultiObjectiveBackward(params, "aligned-mtl", mode="subset",
                                                        subset_params=last)
    if only:
        engines = {k: v for k, v in engines.items() if k in only}

    def so() -> None:
        opt.zero_grad(set_to_none=True)
        losses, _, _ = forward(model, ids, weights)
        torch.stack(losses).mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def molma(name: str) -> Callable[[], None]:
        engine = engines[name]

        def step() -> None:
            losses, tok_lp, hidden = forward(model, ids, weights)
            rep = {"fast-logprob": tok_lp, "fast-hidden": hidden}.get(name)
            diag = engine.backward(losses, representation=rep)
            if diag["skipped"]:
                raise RuntimeError(f"{name}: step skipped: {diag['skipped']}")
            opt.step()

        return step

    steps: dict[str, Callable[[], Any]] = {"so": so}
    steps.update({name: molma(name) for name in engines})
    return steps


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_model(name: str, ks: list[int], repeats: int, extras_ks: list[int],
                log: Callable[[str], None], only: set[str] | None = None) -> list[dict]:
    model, params, last, vocab = build_model(name)
    n_params = sum(p.numel() for p in params)
    rows = []
    for K in ks:
        ids, weights = make_batch(vocab, K, seed=K)
        steps = make_steps(model, params, last, ids, weights, extras=K in extras_ks, only=only)
        wall: dict[str, list[float]] = {k: [] for k in steps}
        cpu: dict[str, list[float]] = {k: [] for k in steps}
        for fn in steps.values():  # warm-up
            fn()
        for r in range(repeats):
            order = list(steps)
            random.Random(1000 * K + r).shuffle(order)  # no systematic position effects
            for key in order:
                w, c = timed(steps[key])
                wall[key].append(w)
                cpu[key].append(c)
            log(f"{name} K={K} round {r + 1}/{repeats}: "
                + ", ".join(f"{k}={v[-1]:.3f}s" for k, v in wall.items()))
        med = {k: statistics.median(v) for k, v in wall.items()}
        low = {k: min(v) for k, v in wall.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
        for key in steps:
            rows.append({"model": name, "trainable_params": n_params, "K": K, "config": key,
                         "median_s": round(med[key], 4), "ratio_to_so": round(med[key] / med["so"], 3),
                         "min_s": round(low[key], 4), "min_ratio_to_so": round(low[key] / low["so"], 3),
                         "cpu_median_s": round(cpu_med[key], 4),
                         "cpu_ratio_to_so": round(cpu_med[key] / cpu_med["so"], 3),
                         "times_s": [round(t, 4) for t in wall[key]]})
        candidates = [k for k in ("exact-loop", "exact-batched") if k in med]
        if candidates:
            best = min(candidates, key=lambda k: med[k])
            rows.append({"model": name, "trainable_params": n_params, "K": K, "config": "exact",
                         "uses": best, "median_s": round(med[best], 4),
                         "ratio_to_so": round(med[best] / med["so"], 3),
                         "min_ratio_to_so": round(low[best] / low["so"], 3),
                         "cpu_ratio_to_so": round(cpu_med[best] / cpu_med["so"], 3)})
    del model
    return rows


def summarise(rows: list[dict]) -> dict:
    out: dict[str, Any] = {}
    for row in rows:
        out.setdefault(row["model"], {}).setdefault(f"K={row['K']}", {})[row["config"]] = {
            "median": row["ratio_to_so"], "min": row["min_ratio_to_so"], "cpu": row["cpu_ratio_to_so"]}
    targets = {}
    for model, per_k in out.items():
        k2 = per_k.get("K=2")
        if k2 and "fast-logprob" in k2:
            fast = k2["fast-logprob"]["median"]
            targets.setdefault(model, {})[f"fast-logprob/so <= {TARGETS['fast']} (median)"] = \
                fast <= TARGETS["fast"]
        if k2 and "exact" in k2:
            exact = k2["exact"]["median"]
            targets.setdefault(model, {})[f"exact/so <= {TARGETS['exact']} (median)"] = \
                exact <= TARGETS["exact"]
    return {"ratios_to_so": out, "targets_at_K=2": targets}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny-repeats", type=int, default=10)
    ap.add_argument("--extras-ks", default="2", help="K values that also time fast-hidden and subset-last")
    ap.add_argument("--configs", default="", help="only these MOLMA configurations (comma list); so always")
    ap.add_argument("--append", action="store_true", help="add this run to the runs already in --out")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable ratios on a shared machine; 2 threads stalled under load)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gradients.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ks = [int(k) for k in args.ks.split(",")]

    def log(msg: str) -> None:
        print(msg, flush=True)

    rows: list[dict] = []
    t0 = time.time()
    load_before = os.getloadavg()
    extras_ks = [int(k) for k in args.extras_ks.split(",") if k]
    only = {c.strip() for c in args.configs.split(",") if c.strip()} or None
    for name in args.models.split(","):
        repeats = args.tiny_repeats if name.strip() == "tiny" else args.repeats
        rows += bench_model(name.strip(), ks, repeats, extras_ks, log, only)
    run = {
        "batch": [BATCH, SEQ], "weighting": "aligned-mtl", "repeats": args.repeats,
        "tiny_repeats": args.tiny_repeats,
        "torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": round(time.time() - t0, 1),
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "note": ("CPU, shared machine (other jobs running); configurations interleaved per round in a "
                 "shuffled order; ratios of medians (wall), of minima (wall) and of median CPU time"),
        "summary": summarise(rows), "rows": rows,
    }
    out = Path(args.out)
    runs = []
    if args.append and out.exists():
        old = json.loads(out.read_text())
        runs = old.get("runs", [old] if "rows" in old else [])
    result = {"benchmark": "molma.gradients: one training step (forward + backward(s) + AdamW step)",
              "runs": [*runs, run]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    log(json.dumps(run["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
