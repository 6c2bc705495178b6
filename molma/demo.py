"""The end-to-end demo (``molma demo`` / ``make demo``): the paper's pipeline on the embedded SmolLM2.

Stages, each cached under ``OUT/`` and keyed by a hash of its settings and of the stages it uses (a
second run with the same config reuses finished stages; a changed setting reruns that stage and those
after it):

1. ``rm/``       RMhelp and RMsafe on the builtin preference pairs (held-out pairs give Table 2)
2. ``runs/``     MOLMA, the four SO baselines and GAPO on the builtin 60/40 prompt mix (LoRA)
3. ``runs/``     the SO-weighted weight sweep (Fig. 4) and the P-GAPO / MOLMA preference sweeps (Pareto)
4. ``eval/``     every policy and the reference answer the same held-out prompts; both RMs score them
5. ``report/``   HTML + Markdown report with every table and figure; the win-rate table is printed
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import molma
from molma.config import check_range, from_dict, load_config, to_dict

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out: str = "outputs/demo"
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: torch's default)
    # reward models: RewardTrainConfig overrides shared by RMhelp and RMsafe
    rm: dict[str, Any] = field(default_factory=dict)
    rm_heldout_fraction: float = 0.2  # builtin pairs kept out of RM training, for Table 2
    rm_benchmarks: dict[str, str] = field(default_factory=dict)  # extra "label: data spec" for Table 2
    # RL: TrainConfig overrides shared by every run
    train: dict[str, Any] = field(default_factory=dict)
    algos: list[str] = field(default_factory=lambda: ["molma", "so-help", "so-safe", "so-weighted",
                                                      "so-piecewise", "gapo"])
    sweep_weights: list[float] = field(default_factory=lambda: [0.25, 0.75])  # SO-weighted, Fig. 4
    pareto_algos: list[str] = field(default_factory=lambda: ["pgapo", "molma"])
    pareto_weights: list[float] = field(default_factory=lambda: [0.25, 0.75])
    sweep_iterations: int | None = None  # iterations of sweep runs (None: as the main runs)
    # evaluation
    eval_prompts: int = 24
    eval_max_new_tokens: int = 32
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        check_range("rm_heldout_fraction", self.rm_heldout_fraction, low=0.0, high=1.0, low_open=True,
                    high_open=True)
        check_range("eval_prompts", self.eval_prompts, low=1)
        for w in [*self.sweep_weights, *self.pareto_weights]:
            check_range("sweep/pareto weight", w, low=0.0, high=1.0, low_open=True, high_open=True)
        if "molma" not in self.algos:
            raise ValueError("algos must include 'molma' (the win rates are MOLMA's against the others)")


def _hash(*parts: Any) -> str:
    blob = json.dumps([molma.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Stages:
    """Content-addressed stage cache: ``ROOT/.stages/<stage>.json`` records the key of a finished stage
    (a hash of its settings and of its inputs' keys) and its time; the same key means reuse."""

    def __init__(self, root: Path) -> None:
        self.markers = root / ".stages"
        self.timings: dict[str, float] = {}
        self.reused: list[str] = []

    def run(self, name: str, folder: Path, key: str, fn: Callable[[], Any]) -> None:
        marker = self.markers / (name.replace(" ", "-").replace("/", "_") + ".json")
        if marker.exists() and (folder.exists() and json.loads(marker.read_text()).get("key") == key):
            self.reused.append(name)
            self.timings[name] = json.loads(marker.read_text()).get("seconds", 0.0)
            log.info("stage %s: reusing %s (same config)", name, folder)
            print(f"[demo] {name}: reused ({folder})", flush=True)
            return
        print(f"[demo] {name}: running ...", flush=True)
        t0 = time.perf_counter()
        fn()
        seconds = round(time.perf_counter() - t0, 1)
        self.markers.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"key": key, "seconds": seconds, "folder": str(folder)}))
        self.timings[name] = seconds
        print(f"[demo] {name}: done in {seconds:.0f} s", flush=True)


def _train_rms(cfg: DemoConfig, out: Path) -> None:
    from molma.data import load_builtin_preferences, split_records
    from molma.rewards import RewardTrainConfig, evaluate_reward_model, format_table, train_reward_model
    from molma.rewards.evaluate import write_results

    rows = []
    for objective in ("help", "safe"):
        pairs = load_builtin_preferences(objective)
        train, heldout, _ = split_records(pairs, (1 - cfg.rm_heldout_fraction, cfg.rm_heldout_fraction, 0.0),
                                          seed=cfg.seed)
        rm_cfg = from_dict(RewardTrainConfig, {"objective": objective, "base": cfg.model, "seed": cfg.seed,
                                               "output_dir": str(out / f"rm-{objective}"), **cfg.rm},
                           source="demo config: rm")
        path = train_reward_model(rm_cfg, pairs=train)
        for label, data in [(f"builtin-{objective} (held out)", heldout)]:
            row = evaluate_reward_model(path, data)
            rows.append({**row, "model": f"RM{objective}", "data": label})
        for label, spec in cfg.rm_benchmarks.items():
            from molma.rewards import load_pairs

            row = evaluate_reward_model(path, load_pairs(spec, objective=objective))
            rows.append({**row, "model": f"RM{objective}", "data": label})
    write_results(rows, out)
    print(format_table(rows), flush=True)


def _train_run(cfg: DemoConfig, rm_dir: Path, out: Path, algo: str, importance: list[float] | None,
               iterations: int | None = None) -> None:
    from molma.rl import MultiObjectiveTrainer, TrainConfig

    settings = {"model": cfg.model, "seed": cfg.seed, **cfg.train, "algo": algo, "out": str(out),
                "objectives": {"help": str(rm_dir / "rm-help"), "safe": str(rm_dir / "rm-safe")}}
    if importance is not None:
        settings["importance"] = importance
    if iterations is not None:
        settings["iterations"] = iterations
    train_cfg = from_dict(TrainConfig, settings, source=f"demo config: train ({algo})")
    MultiObjectiveTrainer(train_cfg).train()


def run_demo(config_path: str | None, overrides=(), out: str | None = None) -> Path:
    cfg = load_config(DemoConfig, config_path, overrides)
    if out:
        cfg.out = out
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    stages = Stages(root)

    # 0. the embedded model (dequantised and cached on first use)
    from molma.models import resolve_model_path

    print(f"[demo] model: {cfg.model} -> {resolve_model_path(cfg.model)}", flush=True)

    # 1. reward models
    rm_dir = root / "rm"
    rm_key = _hash("rm", cfg.model, cfg.seed, cfg.rm, cfg.rm_heldout_fraction, cfg.rm_benchmarks)
    stages.run("reward models", rm_dir, rm_key, lambda: _train_rms(cfg, rm_dir))

    # 2-3. RL runs: the methods, the SO-weighted sweep, the preference sweeps
    runs: dict[str, tuple[str, list[float] | None, int | None]] = {a: (a, None, None) for a in cfg.algos}
    sweep_models: dict[str, list[float]] = {}
    for w in cfg.sweep_weights:
        runs[f"so-weighted-w{w:g}"] = ("so-weighted", [w, 1 - w], cfg.sweep_iterations)
        sweep_models[f"so-weighted-w{w:g}"] = [w, 1 - w]
    pareto: dict[str, dict[str, list[float]]] = {}
    for algo in cfg.pareto_algos:
        for w in cfg.pareto_weights:
            name = f"{algo}-w{w:g}"
            if name not in runs:
                runs[name] = (algo, [w, 1 - w], cfg.sweep_iterations)
            pareto.setdefault(algo, {})[name] = [w, 1 - w]
        if algo in runs:  # the equal-weight run is the middle point of the front
            pareto[algo][algo] = [0.5, 0.5]
    run_keys = {}
    for name, (algo, importance, iters) in runs.items():
        folder = root / "runs" / name
        run_keys[name] = _hash("run", rm_key, cfg.model, cfg.seed, cfg.train, algo, importance, iters)
        stages.run(f"train {name}", folder, run_keys[name],
                   lambda a=algo, i=importance, n=iters, f=folder: _train_run(cfg, rm_dir, f, a, i, n))

    # 4. evaluation on held-out prompts
    eval_dir = root / "eval"
    eval_key = _hash("eval", run_keys, cfg.eval_prompts, cfg.eval_max_new_tokens, cfg.seed)
    result_box: dict[str, Any] = {}

    def evaluate() -> None:
        from molma.eval import EvalConfig, evaluate_models, sweep_from_result, write_sweep
        from molma.rewards import RewardModel
        from molma.rl import TrainConfig, load_policy
        from molma.rl.prompts import train_heldout_pools

        base = from_dict(TrainConfig, {"model": cfg.model, "seed": cfg.seed, **cfg.train}, source="demo: train")
        _, heldout = train_heldout_pools(base.prompts, base.heldout_fraction, seed=cfg.seed)
        prompts = [p for tag in sorted(heldout) for p in heldout[tag]]
        step = max(1, len(prompts) // cfg.eval_prompts)
        prompts = prompts[::step][: cfg.eval_prompts]
        models = {"ref": cfg.model, **{name: str(root / "runs" / name / "final") for name in runs}}
        objectives = [RewardModel.from_pretrained(rm_dir / "rm-help", name="help"),
                      RewardModel.from_pretrained(rm_dir / "rm-safe", name="safe")]

        def loader(spec: str):
            return load_policy(spec) if spec != cfg.model else _load_reference(cfg.model)

        ecfg = EvalConfig(max_new_tokens=cfg.eval_max_new_tokens, seed=cfg.seed, batch_size=cfg.eval_batch_size,
                          versus="molma", kl_reference="ref", resume=False)
        result = evaluate_models(models, prompts, objectives, ecfg, out_dir=eval_dir, loader=loader)
        result_box["result"] = result
        if sweep_models:
            write_sweep(root / "sweep" / "so-weighted.json",
                        sweep_from_result(result, sweep_models, "SO-weighted", versus="molma", baseline="molma",
                                          baseline_weights=[0.5, 0.5]))
        for algo, members in pareto.items():
            write_sweep(root / "pareto" / f"{algo}.json",
                        sweep_from_result(result, members, algo.upper() if algo != "molma" else "MOLMA",
                                          versus=None, baseline=None))

    stages.run("evaluation", eval_dir, eval_key, evaluate)

    # 5. report
    from molma.eval import build_report, load_result

    meta = {"config": to_dict(cfg), "stage_seconds": stages.timings, "reused_stages": stages.reused,
            "wall_time_s": round(time.perf_counter() - t_start, 1), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "molma": molma.__version__}
    (root / "demo.json").write_text(json.dumps(meta, indent=2))
    import yaml

    (root / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    report = build_report(root, title="molma demo: MOLMA vs baselines on SmolLM2-135M-Instruct (CPU)")
    result = result_box.get("result") or load_result(eval_dir, versus="molma")
    print("\nWin rates of MOLMA against each model (held-out prompts, judged by RMhelp / RMsafe):")
    print(result.win_rate_text())
    print(f"\nwall time: {time.perf_counter() - t_start:.0f} s (stages: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in stages.timings.items()) + ")")
    html = getattr(report, "html", None) or (root / "report" / "report.html")
    print(f"report: {Path(html).resolve()}")
    print(f"demo outputs: {root.resolve()}")
    return root


def _load_reference(name: str):
    from molma.models import load_model

    model, tok = load_model(name)
    return model.eval(), tok
