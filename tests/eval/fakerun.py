"""A small fake run directory in the layout ``molma report`` reads (no models needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from molma.eval.responses import ResponseRecord, write_responses
from molma.eval.runner import compute_result, write_summary
from molma.eval.sweep import write_sweep

EVIL = '<script>alert("x")</script> & </table></div>'
MODELS = {"molma": (0.8, 0.7), "ref": (0.0, 0.0), "so-help": (1.0, -0.5), "so-safe": (-0.4, 1.0)}


def make_fake_run(root: Path, n_prompts: int = 40, parts: tuple[str, ...] = ("eval", "runs", "rm", "sweep",
                                                                               "pareto")) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("model: smollm2-135m-instruct\nseed: 0\n")
    if "eval" in parts:
        records = []
        for model, (mh, ms) in MODELS.items():
            for i in range(n_prompts):
                response = EVIL if (model == "molma" and i == 0) else f"{model} answer {i}"
                records.append(ResponseRecord(
                    prompt_id=f"p{i:04d}", prompt=f"Question {i}? <b>bold</b> & more",
                    tag="help" if i % 5 else "safe", model=model, response=response,
                    scores={"help": float(rng.normal(mh, 1.0)), "safe": float(rng.normal(ms, 1.0))}))
        write_responses(root / "eval" / "responses.jsonl", records)
        k3 = "k3 per token, summed over the response"
        result = compute_result(records, "molma", 0.0, kl={"molma": 0.12, "ref": 0.0}, out_dir=root / "eval",
                                timings={m: {"generation_s": 1.5, "scoring_s": 0.5} for m in MODELS},
                                config={"generation": {"seed": 0, "max_new_tokens": 48}, "tie_tol": 0.0,
                                        "kl_reference": "ref"},
                                kl_details={"molma": {"kl": 0.12, "kl_se": 0.02, "mean_log_ratio": 0.1,
                                                      "estimator": k3, "n_responses": n_prompts,
                                                      "n_tokens": 20 * n_prompts},
                                            "ref": {"kl": 0.0, "kl_se": 0.0, "mean_log_ratio": 0.0,
                                                    "estimator": k3, "n_responses": n_prompts,
                                                    "n_tokens": 20 * n_prompts}})
        write_summary(root / "eval", result)
    if "runs" in parts:
        for k, name in enumerate(["molma", "so-help"]):
            run = root / "runs" / name
            run.mkdir(parents=True)
            rows = []
            for it in range(1, 21):
                rows.append({"iteration": it, "time/generation": 1.0, "time/scoring": 0.2,
                             "time/training": 0.5 + k, "time/total": 1.7 + k,
                             "reward/raw/help": 0.02 * it + 0.1 * k, "reward/raw/safe": 0.01 * it - 0.1 * k,
                             "reward/raw/help/help": 0.5, "kl": 0.005 * it, "loss/apa": 1.0 / it,
                             "sample": {"prompt": "p", "response": EVIL}})
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run / "run.json").write_text(json.dumps({"algo": name, "wall_time_s": 34.0 + 20 * k,
                                                      "iterations": 20}))
            (run / "config.yaml").write_text(f"algo: {name}\niterations: 20\n")
    if "rm" in parts:
        (root / "rm").mkdir()
        (root / "rm" / "help.json").write_text(json.dumps([
            {"model": "RM-help", "benchmark": "Anthropic Helpful", "accuracy": 0.608, "n": 1000},
            {"model": "RM-help", "benchmark": "PKU-SafeRLHF (helpfulness)", "accuracy": 0.734, "n": 1000}]))
        (root / "rm" / "safe.json").write_text(json.dumps(
            {"results": [{"model": "RM-safe", "benchmark": "Anthropic Harmless", "accuracy": 0.606}]}))
    if "sweep" in parts:
        write_sweep(root / "sweep" / "so-weighted.json", {
            "method": "SO-weighted", "objectives": ["help", "safe"], "versus": "molma",
            "points": [{"label": f"w={w}", "weights": [w, 1 - w], "means": {"help": w, "safe": 1 - w - 0.2},
                        "win_rates": {"help": {"win": 0.7 - 0.3 * w, "tie": 0.0, "ci_low": 0.5 - 0.3 * w,
                                               "ci_high": 0.85 - 0.3 * w},
                                      "safe": 0.4 + 0.3 * w}}
                       for w in (0.2, 0.4, 0.6, 0.8)],
            "baseline": {"label": "molma", "weights": [0.5, 0.5], "means": {"help": 0.6, "safe": 0.6}}})
    if "pareto" in parts:
        write_sweep(root / "pareto" / "pgapo.json", {
            "method": "P-GAPO", "objectives": ["help", "safe"],
            "points": [{"label": "0.2", "weights": [0.2, 0.8], "means": {"help": 0.3, "safe": 0.9}},
                       {"label": "0.5", "weights": [0.5, 0.5], "means": {"help": 0.6, "safe": 0.6}},
                       {"label": "0.8", "weights": [0.8, 0.2], "means": {"help": 0.9, "safe": 0.2}},
                       {"label": "0.6", "weights": [0.6, 0.4], "means": {"help": 0.5, "safe": 0.5}}]})
        write_sweep(root / "pareto" / "molma-w.json", {
            "method": "MOLMA (w)", "objectives": ["help", "safe"],
            "points": [{"label": "0.3", "weights": [0.3, 0.7], "means": {"help": 0.4, "safe": 0.8}},
                       {"label": "0.7", "weights": [0.7, 0.3], "means": {"help": 0.8, "safe": 0.4}}]})
    return root
