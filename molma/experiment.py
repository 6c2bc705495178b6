"""The experiment pipeline (``molma experiment`` and ``molma demo``): judges, RL runs, evaluation, report.

Stages, each cached under ``OUT/`` and keyed by a hash of its settings and of the stages it uses (a second
run with the same config reuses finished stages; a changed setting reruns that stage and those after it;
a killed run resumes at the first unfinished stage):

1. ``data/``     prompt pools written as JSONL: train / validation / held-out per pool. With ``hh_data``
                 the safety pool is the real HH-RLHF red-teaming first turns, split by dialogue
                 (:mod:`molma.data.hh`): the held-out prompts are the first turns of the dialogues the
                 safety judge is validated on, so the policy never trains on a prompt the evaluation uses.
                 ``validation`` prompts are set aside from training for choosing settings.
2. ``rm/``       RMhelp (builtin pairs: no real helpfulness preference data is reachable offline) and
                 RMsafe (real HH-RLHF pairs of the train dialogues, or builtin pairs); Table 2 on every
                 held-out set, with the number of pairs.
   ``lr-search/`` (with ``lr_search``) the learning rate of some methods, chosen on the *validation* prompts:
                 each is trained at every candidate rate, the policies answer the validation prompts, and
                 the rate with the largest smaller mean reward gain over the reference is kept
                 (``lr-search/selection.json``); the chosen run becomes the method's main run.
3. ``runs/``     every method (seed ``seed``), extra seeds of some methods, the SO-weighted weight sweep
                 (Fig. 4) and the preference sweeps (Pareto fronts); ``workers`` runs them in parallel.
   ``soups/``    Rewarded Soups of two finished runs (``soup_runs``, ``soup_weights``): exact LoRA
                 interpolations, evaluated with the others and drawn as the ``soup`` Pareto front.
4. ``eval/``     every policy and the reference answer the same held-out prompts with the same seed; both
                 judges score them; KL to the reference.
5. ``report/``   HTML + Markdown report; ``evidence.json`` with every paired comparison; the printed table
                 and a one-sentence verdict.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

import molma
from molma.config import check_range, from_dict, load_config, to_dict

log = logging.getLogger(__name__)

POOLS = ("help", "safe")
# TrainConfig keys that change what a run logs, not what it learns: left out of the run's stage key
LOGGING_KEYS = frozenset({"progress", "tensorboard", "report_to"})


@dataclass
class ExperimentConfig:
    """One experiment (see the module docstring); ``configs/demo.yaml`` and ``configs/cpu/experiment.yaml``
    are two sizes of it."""

    out: str = "outputs/experiment"
    title: str = "molma experiment: MOLMA vs baselines"
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    threads: int | None = None  # torch CPU threads per process (None: torch's default)
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16 where the hardware has it), every stage
    workers: int = 1  # RL runs trained at the same time (separate processes, `threads` each)
    # glibc's mmap threshold (bytes) in the RL worker processes (MALLOC_MMAP_THRESHOLD_), where the peak memory
    # is: blocks above it go back to the system when freed instead of staying in the heap. 1048576 took a demo
    # RL run from 4.4 to 3.5 GB peak resident and made it ~20 % slower (measured); None: glibc's default
    # (Linux only; ignored elsewhere)
    worker_mmap_threshold: int | None = None
    # --- data
    hh_data: str | None = None  # HH-RLHF harmless-base file: RMsafe's pairs and the safety prompts
    hh_data_required: bool = True  # false: when hh_data is missing, warn and use the builtin safety data
    hh_validation_fraction: float = 0.2  # dialogues (grouped by first turn) held out from RMsafe and RL
    hh_max_train_pairs: int | None = None  # use at most this many train-dialogue pairs for RMsafe
    help_prompts: str = "builtin:help"  # training pool of helpfulness prompts
    help_eval_prompts: str | None = None  # held-out helpfulness prompts (None: a share of help_prompts)
    prompt_heldout_fraction: float = 0.2  # of a pool without its own held-out source
    prompt_validation_fraction: float = 0.1  # of the training prompts, never trained on (for choosing settings)
    # leave out prompts longer than this many tokens once chat-templated (counted in data/data.json): a batch
    # is padded to its longest prompt, so one long prompt makes every row of it cost that much
    prompt_max_tokens: int | None = None
    # --- reward models: RewardTrainConfig overrides (rm: both; rm_help / rm_safe: one)
    rm: dict[str, Any] = field(default_factory=dict)
    rm_help: dict[str, Any] = field(default_factory=dict)
    rm_safe: dict[str, Any] = field(default_factory=dict)
    rm_heldout_fraction: float = 0.2  # builtin pairs kept out of RM training, for Table 2
    rm_benchmarks: dict[str, str] = field(default_factory=dict)  # extra "label: data spec" for Table 2
    # RMsafe settings to choose from: each entry overrides rm_safe ({} is rm_safe itself); the one with the best
    # accuracy on the trainer's own held-out share of the *training* pairs (eval_fraction) becomes RMsafe, so
    # the validation dialogues that Table 2 reports are never used for the choice (rm/candidates/selection.json)
    rm_safe_candidates: list[dict[str, Any]] = field(default_factory=list)
    # RMsafe as a weight average (WARM, Rame et al. 2024): rm_safe trained once per seed here (data order and
    # head initialisation), the members' weights averaged into one model (rm/rm-safe; the members stay in
    # rm/members, each scored for the record); [] for one RMsafe with the experiment's seed
    rm_safe_seeds: list[int] = field(default_factory=list)
    # --- RL: TrainConfig overrides shared by every run
    train: dict[str, Any] = field(default_factory=dict)
    # per-algorithm TrainConfig overrides on top of train, e.g. {gapo: {lr: 1.0e-3}} (sweep runs included)
    algo_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    # learning rates chosen on the validation prompts (never the held-out ones), see choose_learning_rate:
    # {lrs: [1.0e-3, 3.0e-3], algos: {molma: [], so-weighted: [so-help, so-safe]}} trains molma and so-weighted
    # at each lr (main seed) and gives so-help and so-safe so-weighted's choice; {} for none
    lr_search: dict[str, Any] = field(default_factory=dict)
    algos: list[str] = field(default_factory=lambda: ["molma", "so-help", "so-safe", "so-weighted",
                                                      "so-piecewise", "gapo"])
    extra_seeds: dict[str, list[int]] = field(default_factory=dict)  # e.g. {molma: [1], so-weighted: [1]}
    sweep_weights: list[float] = field(default_factory=lambda: [0.25, 0.75])  # SO-weighted, Fig. 4
    pareto_algos: list[str] = field(default_factory=lambda: ["pgapo", "molma"])
    pareto_weights: list[float] = field(default_factory=lambda: [0.25, 0.75])
    sweep_iterations: int | None = None  # iterations of sweep runs (None: as the main runs)
    # Rewarded Soups (Rame et al. 2023): LoRA interpolations theta_0 + w dW_A + (1 - w) dW_B of the two runs in
    # soup_runs (A first, whose objective is the first: w weighs help), one per weight in (0, 1), evaluated with
    # the other models and drawn as the "soup" Pareto front with A (w = 1) and B (w = 0) at its ends; [] for none
    soup_runs: list[str] = field(default_factory=lambda: ["so-help", "so-safe"])
    soup_weights: list[float] = field(default_factory=list)
    # --- evaluation
    eval_prompts: int = 24  # held-out prompts, split evenly between the pools
    eval_max_new_tokens: int = 32
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        check_range("hh_validation_fraction", self.hh_validation_fraction, low=0.0, high=1.0, low_open=True,
                    high_open=True)
        check_range("prompt_heldout_fraction", self.prompt_heldout_fraction, low=0.0, high=1.0, low_open=True,
                    high_open=True)
        check_range("prompt_validation_fraction", self.prompt_validation_fraction, low=0.0, high=1.0,
                    high_open=True)
        check_range("rm_heldout_fraction", self.rm_heldout_fraction, low=0.0, high=1.0, low_open=True,
                    high_open=True)
        check_range("eval_prompts", self.eval_prompts, low=2)
        check_range("eval_max_new_tokens", self.eval_max_new_tokens, low=1)
        check_range("eval_batch_size", self.eval_batch_size, low=1)
        check_range("workers", self.workers, low=1)
        if self.threads is not None:
            check_range("threads", self.threads, low=1)
        if self.worker_mmap_threshold is not None:
            check_range("worker_mmap_threshold", self.worker_mmap_threshold, low=1)
        if self.prompt_max_tokens is not None:
            check_range("prompt_max_tokens", self.prompt_max_tokens, low=8)
        if self.hh_max_train_pairs is not None:
            check_range("hh_max_train_pairs", self.hh_max_train_pairs, low=2)
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        for w in [*self.sweep_weights, *self.pareto_weights]:
            check_range("sweep/pareto weight", w, low=0.0, high=1.0, low_open=True, high_open=True)
        if "molma" not in self.algos:
            raise ValueError("algos must include 'molma' (the win rates are MOLMA's against the others)")
        unknown = set(self.algo_train) - {*self.algos, *self.pareto_algos}
        if unknown:
            raise ValueError(f"algo_train names {sorted(unknown)}, which are not in algos {self.algos} or "
                             f"pareto_algos {self.pareto_algos}")
        unknown = set(self.extra_seeds) - set(self.algos)
        if unknown:
            raise ValueError(f"extra_seeds names {sorted(unknown)}, which are not in algos {self.algos}")
        for algo, seeds in self.extra_seeds.items():
            if self.seed in seeds:
                raise ValueError(f"extra_seeds[{algo}] repeats the main seed {self.seed}")
            for s in seeds:
                check_range(f"extra_seeds[{algo}]", s, low=0, high=2**32 - 1)
        check_range("seed", self.seed, low=0, high=2**32 - 1)
        if self.sweep_iterations is not None:
            check_range("sweep_iterations", self.sweep_iterations, low=1)
        for w in self.soup_weights:
            check_range("soup_weights", w, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.soup_weights and (len(self.soup_runs) != 2 or not set(self.soup_runs) <= set(self.algos)):
            raise ValueError(f"soup_runs must name two of algos {self.algos} (the soup's ends), got "
                             f"{self.soup_runs}")
        self._check_lr_search()
        self._check_stage_settings()

    def _check_lr_search(self) -> None:
        if not self.lr_search:
            return
        unknown = set(self.lr_search) - {"lrs", "algos", "seeds", "max_kl"}
        if unknown:
            raise ValueError(f"lr_search: unknown key(s) {sorted(unknown)} (expected lrs, algos, seeds, max_kl)")
        seeds = self.lr_search.get("seeds", [self.seed])
        if (not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in seeds) or len(set(seeds)) != len(seeds)
                or self.seed not in seeds):
            raise ValueError(f"lr_search.seeds: give different integer seeds including the main seed {self.seed} "
                             f"(its run at the chosen rate is the main run), got {seeds!r}")
        if self.lr_search.get("max_kl") is not None:
            check_range("lr_search.max_kl", float(self.lr_search["max_kl"]), low=0.0, low_open=True)
        lrs = self.lr_search.get("lrs")
        if not isinstance(lrs, list) or len(lrs) < 2 or len(set(map(float, lrs))) != len(lrs):
            raise ValueError(f"lr_search.lrs: give at least two different learning rates, got {lrs!r}")
        for lr in lrs:
            check_range("lr_search.lrs", float(lr), low=0.0, low_open=True)
        groups = self.lr_search.get("algos")
        if not isinstance(groups, dict) or not groups:
            raise ValueError("lr_search.algos: map each searched algorithm to the algorithms that take its "
                             f"learning rate (a list, may be empty), got {groups!r}")
        planned = {*self.algos, *self.pareto_algos}
        seen: list[str] = []
        for algo, followers in groups.items():
            if algo not in self.algos:
                raise ValueError(f"lr_search.algos: {algo!r} is searched, so it must be in algos {self.algos} "
                                 "(its main run is the search's run at the chosen rate)")
            if not isinstance(followers, list):
                raise ValueError(f"lr_search.algos.{algo}: expected a list of algorithms, got {followers!r}")
            for name in [algo, *followers]:
                if name not in planned:
                    raise ValueError(f"lr_search.algos names {name!r}, which is not in algos {self.algos} or "
                                     f"pareto_algos {self.pareto_algos}")
                if name in seen:
                    raise ValueError(f"lr_search.algos names {name!r} twice")
                if "lr" in self.algo_train.get(name, {}):
                    raise ValueError(f"algo_train.{name}.lr and lr_search both set {name}'s learning rate")
                seen.append(name)
        if self.prompt_validation_fraction <= 0:
            raise ValueError("lr_search needs validation prompts (prompt_validation_fraction > 0)")

    def _check_stage_settings(self) -> None:
        """Build the RL and reward-model settings now, so a bad key or value in ``train`` / ``rm*`` fails
        before any model is trained (each message names the section and key)."""
        from molma.rewards import RewardTrainConfig
        from molma.rl import TrainConfig

        for algo in dict.fromkeys([*self.algos, *self.pareto_algos]):
            settings = {"model": self.model, "seed": self.seed, "precision": self.precision, **self.train,
                        **self.algo_train.get(algo, {}),
                        "algo": algo, "objectives": {"help": "rm-help", "safe": "rm-safe"}}
            if self.sweep_iterations is not None and algo in self.pareto_algos:
                settings["iterations"] = self.sweep_iterations
            from_dict(TrainConfig, settings, source=f"train (algo {algo})")
        if self.rm_safe_seeds and self.rm_safe_candidates:
            raise ValueError("rm_safe_seeds (a weight average of RMsafe) and rm_safe_candidates (a choice among "
                             "settings) exclude each other: set one")
        if len(self.rm_safe_seeds) == 1 or len(set(self.rm_safe_seeds)) != len(self.rm_safe_seeds):
            raise ValueError(f"rm_safe_seeds: a weight average needs two or more different seeds, got "
                             f"{self.rm_safe_seeds}")
        sections = [("rm_help", "help", self.rm_help), ("rm_safe", "safe", self.rm_safe)]
        sections += [(f"rm_safe_candidates[{i}]", "safe", {**self.rm_safe, **c})
                     for i, c in enumerate(self.rm_safe_candidates)]
        for source, objective, section in sections:
            rm_cfg = from_dict(RewardTrainConfig, {"objective": objective, "base": self.model,
                                                   "precision": self.precision, **self.rm, **section}, source=source)
            if source.startswith("rm_safe_candidates") and (rm_cfg.eval_data or not rm_cfg.eval_fraction):
                raise ValueError(f"{source}: choosing RMsafe needs the trainer's own held-out share "
                                 "(eval_fraction > 0 and no eval_data)")


def _hash(*parts: Any) -> str:
    blob = json.dumps([molma.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_key(spec: str | None) -> Any:
    """A cache key for a data source: a file's name and the SHA-256 of its bytes; other specs as they are.

    Content, not path and modification time: a fresh copy of the same data (a new checkout of ``../shared``,
    another folder) must not invalidate every stage that depends on it (it once cleared a finished
    experiment's reward models), and an edited file with the same size and mtime must."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        return [path.name, hashlib.sha256(path.read_bytes()).hexdigest()]
    return spec


def claim_folder(folder: Path, key: str) -> None:
    """Record a stage's key in its folder before the stage runs; a folder left by other settings (a changed
    config, or one from before keys were recorded) is cleared first, so a stage never resumes from files
    written with different settings (a run's checkpoints, an evaluation's saved responses); a stage killed
    under the same key keeps its files and resumes."""
    stamp = folder / ".stage-key"
    if folder.exists() and (not stamp.exists() or stamp.read_text().strip() != key):
        import shutil

        log.warning("%s was written with other settings: cleared", folder)
        print(f"{folder}: written with other settings, cleared", flush=True)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from molma.atomic import write_text_atomic

    write_text_atomic(stamp, key + "\n")


class Stages:
    """Content-addressed stage cache: ``ROOT/.stages/<stage>.json`` records the key of a finished stage
    (a hash of its settings and of its inputs' keys) and its time; the same key means reuse."""

    def __init__(self, root: Path, label: str = "demo") -> None:
        self.markers = root / ".stages"
        self.label = label
        self.timings: dict[str, float] = {}
        self.reused: list[str] = []

    def _marker(self, name: str) -> Path:
        return self.markers / (name.replace(" ", "-").replace("/", "_") + ".json")

    def is_done(self, name: str, folder: Path, key: str) -> bool:
        marker = self._marker(name)
        return marker.exists() and folder.exists() and json.loads(marker.read_text()).get("key") == key

    def mark_done(self, name: str, folder: Path, key: str, seconds: float) -> None:
        self.markers.mkdir(parents=True, exist_ok=True)
        from molma.atomic import write_text_atomic

        write_text_atomic(self._marker(name), json.dumps({"key": key, "seconds": seconds, "folder": str(folder)}))
        self.timings[name] = seconds
        print(f"[{self.label}] {name}: done in {seconds:.0f} s", flush=True)

    def mark_copied(self, name: str, folder: Path, key: str, source: Path) -> None:
        """Record stage ``name`` as done under ``key`` by a copy of ``source`` (no time of its own: it counts
        as reused)."""
        self.markers.mkdir(parents=True, exist_ok=True)
        from molma.atomic import write_text_atomic

        write_text_atomic(self._marker(name), json.dumps({"key": key, "seconds": 0.0, "folder": str(folder),
                                                          "copied_from": str(source)}))
        self.reused.append(name)
        self.timings[name] = 0.0
        print(f"[{self.label}] {name}: copied from {source} (trained with the same settings)", flush=True)

    def reuse(self, name: str, folder: Path) -> None:
        self.reused.append(name)
        self.timings[name] = json.loads(self._marker(name).read_text()).get("seconds", 0.0)
        log.info("stage %s: reusing %s (same config)", name, folder)
        print(f"[{self.label}] {name}: reused ({folder})", flush=True)

    def run(self, name: str, folder: Path, key: str, fn: Callable[[], Any]) -> None:
        if self.is_done(name, folder, key):
            self.reuse(name, folder)
            return
        print(f"[{self.label}] {name}: running ...", flush=True)
        claim_folder(folder, key)  # never resume from files that other settings wrote (e.g. stale responses)
        t0 = time.perf_counter()
        fn()
        self.mark_done(name, folder, key, round(time.perf_counter() - t0, 1))


# ------------------------------------------------------------------------------------------ 1. data
def _prepare_data(cfg: ExperimentConfig, out: Path) -> None:
    """Write the prompt pools (``<pool>-{train,validation,heldout}.jsonl``) and ``data.json``."""
    from molma.data.hh import normalise_prompt, read_hh_split, write_prompts
    from molma.data.mixing import split_off
    from molma.rl.prompts import load_pool

    pools: dict[str, dict[str, list]] = {}
    info: dict[str, Any] = {}
    # helpfulness: a training pool, held-out prompts from their own source or a share of it
    help_pool = load_pool(cfg.help_prompts, "help")
    if cfg.help_eval_prompts:
        help_train, help_heldout = help_pool, load_pool(cfg.help_eval_prompts, "help")
    else:
        help_train, help_heldout = split_off(help_pool, cfg.prompt_heldout_fraction, cfg.seed)
    pools["help"] = {"train": help_train, "heldout": help_heldout}
    info["help"] = {"source": cfg.help_prompts, "heldout_source": cfg.help_eval_prompts or "share of source"}
    # safety: real HH red-teaming first turns split by dialogue, or the builtin pool
    if cfg.hh_data:
        split = read_hh_split(cfg.hh_data, cfg.hh_validation_fraction, seed=cfg.seed)
        pools["safe"] = {"train": split.train_prompts, "heldout": split.heldout_prompts}
        info["safe"] = {"source": cfg.hh_data, "split": "HH dialogues grouped by first Human turn",
                        "rm_train_pairs": len(split.train_pairs), "rm_validation_pairs": len(split.validation_pairs),
                        "pairs_with_empty_reply_left_out": split.dropped}
    else:
        safe_pool = load_pool("builtin:safe", "safe")
        tr, ho = split_off(safe_pool, cfg.prompt_heldout_fraction, cfg.seed)
        pools["safe"] = {"train": tr, "heldout": ho}
        info["safe"] = {"source": "builtin:safe", "heldout_source": "share of source"}
    if cfg.prompt_max_tokens is not None:
        from molma.data.chat import render_prompt
        from molma.models import load_tokenizer

        tok = load_tokenizer(cfg.model)

        def fits(p) -> bool:
            return len(tok(render_prompt(tok, p.text), add_special_tokens=False)["input_ids"]) <= cfg.prompt_max_tokens

        for tag, parts in pools.items():
            for part in ("train", "heldout"):
                kept = [p for p in parts[part] if fits(p)]
                info[tag][f"{part}_longer_than_{cfg.prompt_max_tokens}_tokens_left_out"] = len(parts[part]) - len(kept)
                parts[part] = kept
    for tag, parts in pools.items():
        # drop held-out texts from training (two sources may share a prompt), then set validation aside
        heldout_keys = {normalise_prompt(p.text) for p in parts["heldout"]}
        train = [p for p in parts["train"] if normalise_prompt(p.text) not in heldout_keys]
        leaked = len(parts["train"]) - len(train)
        validation: list = []
        if cfg.prompt_validation_fraction > 0:
            train, validation = split_off(train, cfg.prompt_validation_fraction, cfg.seed + 1)
        for part, prompts in (("train", train), ("validation", validation), ("heldout", parts["heldout"])):
            write_prompts(out / f"{tag}-{part}.jsonl", [replace(p, tag=tag) for p in prompts])
        info[tag].update({"train": len(train), "validation": len(validation), "heldout": len(parts["heldout"]),
                          "removed_from_train_as_heldout": leaked})
        if not train:
            raise ValueError(f"prompt pool {tag!r}: no training prompts left")
    from molma.atomic import write_text_atomic

    write_text_atomic(out / "data.json", json.dumps(info, indent=2))


def _eval_prompts(cfg: ExperimentConfig, data_dir: Path) -> list:
    """``eval_prompts`` held-out prompts, split evenly between the pools, evenly spaced in each file."""
    from molma.rl.prompts import load_pool

    chosen = []
    per_pool = cfg.eval_prompts // len(POOLS)
    for tag in POOLS:
        pool = load_pool(str(data_dir / f"{tag}-heldout.jsonl"), tag)
        if len(pool) < per_pool:
            raise ValueError(f"only {len(pool)} held-out {tag} prompts for eval_prompts={cfg.eval_prompts} "
                             f"({per_pool} per pool)")
        step = len(pool) / per_pool
        chosen += [pool[int(i * step)] for i in range(per_pool)]
    return chosen


# ------------------------------------------------------------------------------------------ 2. judges
def judge_pairs(cfg: ExperimentConfig) -> tuple[dict[str, list], dict[str, list]]:
    """The judges' training pairs by objective and Table 2's held-out sets by label: the builtin pairs split
    ``rm_heldout_fraction`` off per objective; with ``hh_data``, RMsafe's pairs are the HH train dialogues' and
    the validation dialogues' pairs a held-out set."""
    from molma.data import load_builtin_preferences
    from molma.data.mixing import split_off

    heldout_sets: dict[str, list] = {}
    train_sets: dict[str, list] = {}
    for objective in POOLS:
        tr, ho = split_off(load_builtin_preferences(objective), cfg.rm_heldout_fraction, cfg.seed)
        train_sets[objective] = tr
        heldout_sets[f"builtin-{objective} (held out)"] = ho
    if cfg.hh_data:
        from molma.data.hh import read_hh_split

        split = read_hh_split(cfg.hh_data, cfg.hh_validation_fraction, seed=cfg.seed)
        train_sets["safe"] = split.train_pairs[: cfg.hh_max_train_pairs]
        heldout_sets["HH-RLHF harmless (validation dialogues)"] = split.validation_pairs
    return train_sets, heldout_sets


def train_judges(cfg: ExperimentConfig, out: Path) -> None:
    """The judges stage: RMhelp (builtin pairs) and RMsafe (the HH train dialogues' pairs; one model, a choice
    among ``rm_safe_candidates`` or a weight average over ``rm_safe_seeds``) trained into ``out``, in
    ``cfg.workers`` processes; Table 2 (each judge on every held-out set) in ``out/results.json``. Models
    finished by an earlier, killed call with the same settings are reused."""
    from molma.rewards import (
        RewardTrainConfig,
        evaluate_reward_model,
        format_table,
    )
    from molma.rewards.evaluate import write_results

    train_sets, heldout_sets = judge_pairs(cfg)

    def rm_config(objective: str, section: dict, folder: Path, source: str) -> RewardTrainConfig:
        return from_dict(RewardTrainConfig, {"objective": objective, "base": cfg.model, "seed": cfg.seed,
                                             "precision": cfg.precision, "output_dir": str(folder),
                                             **cfg.rm, **section}, source=f"experiment config: {source}")

    configs = {"help": rm_config("help", cfg.rm_help, out / "rm-help", "rm_help")}
    candidates = [{**cfg.rm_safe, **c} for c in cfg.rm_safe_candidates]
    if candidates:
        for i, section in enumerate(candidates):
            configs[f"safe-{i}"] = rm_config("safe", section, out / "candidates" / f"rm-safe-{i}",
                                             f"rm_safe_candidates[{i}]")
    elif cfg.rm_safe_seeds:
        for seed in cfg.rm_safe_seeds:
            configs[f"safe-seed{seed}"] = rm_config("safe", {**cfg.rm_safe, "seed": seed},
                                                    out / "members" / f"rm-safe-seed{seed}", "rm_safe")
    else:
        configs["safe"] = rm_config("safe", cfg.rm_safe, out / "rm-safe", "rm_safe")
    # every model (judge, RMsafe candidate or member) is scored on Table 2's held-out sets by the job that trained
    # it, so RMhelp's scoring runs beside RMsafe's training (the demo's judges stage: 107 s of sequential scoring
    # after it)
    jobs = {name: (c, train_sets[c.objective], heldout_sets) for name, c in configs.items()}
    # WARM members share their frozen bottom layers' forward: computed once (split among the workers) into
    # trunk files that every member unfinished so far reads (molma.rewards.trunk); deleted afterwards
    members = [n for n in jobs if n.startswith("safe-seed") and not _finished_reward_model(configs[n])]
    shares_trunk = (len(members) >= 2 and configs[members[0]].finetune == "full"
                    and configs[members[0]].train_top_layers is not None)
    trunk_dir = out / "members" / ".trunk"
    n_shards = max(1, cfg.workers) if shares_trunk else 0  # one per worker
    trunk_files = [trunk_dir / f"shard{i}-of-{n_shards}.safetensors" for i in range(n_shards)]
    trunk_of = {name: (trunk_files if trunk_files and name in members else None) for name in jobs}
    scored: dict[tuple[str, str], dict] = {}  # (objective, held-out set) -> row already computed
    try:
        _train_judge_jobs(cfg, configs, jobs, members, trunk_files, trunk_of, train_sets["safe"], scored)
    finally:
        shutil.rmtree(trunk_dir, ignore_errors=True)
    if candidates:
        configs["safe"], chosen = _select_rm_safe(cfg, configs, out, scored)
        scored.update({("safe", label): row for (job, label), row in list(scored.items()) if job == chosen})
    if cfg.rm_safe_seeds:
        configs["safe"] = _average_rm_safe(cfg, configs, out, scored)

    rows = []
    for objective in POOLS:
        rm_cfg = configs[objective]
        judge = None
        for label, data in heldout_sets.items():
            row = scored.get((objective, label)) or evaluate_reward_model(judge := judge or _load_judge(rm_cfg), data)
            rows.append({**row, "model": f"RM{objective}", "data": label, "trained_pairs": len(train_sets[objective]),
                         "train_data": ("HH-RLHF harmless (train dialogues)" if objective == "safe" and cfg.hh_data
                                        else f"builtin-{objective} (train split)")})
        for label, spec in cfg.rm_benchmarks.items():
            from molma.rewards import load_pairs

            judge = judge or _load_judge(rm_cfg)
            row = evaluate_reward_model(judge, load_pairs(spec, objective=objective))
            rows.append({**row, "model": f"RM{objective}", "data": label})
    write_results(rows, out)
    print(format_table(rows), flush=True)


def _train_judge_jobs(cfg: ExperimentConfig, configs: dict, jobs: dict, members: list[str], trunk_files: list[Path],
                      trunk_of: dict, safe_pairs: list, scored: dict) -> None:
    """Run the judges stage's jobs (RMhelp, RMsafe candidates or members; the members' trunk shards first) in
    ``cfg.workers`` processes or in this one; each job's held-out rows go into ``scored``."""
    if cfg.workers > 1 and len(jobs) > 1:
        with _worker_pool(cfg.workers) as pool:
            def submit(name: str):
                return pool.submit(_train_rm_job, *jobs[name], cfg.threads, trunk_of[name])

            shards = [pool.submit(_trunk_shard_job, configs[members[0]], safe_pairs, f, i, len(trunk_files),
                                  cfg.threads) for i, f in enumerate(trunk_files)]
            # with trunk shards: RMhelp queued behind them, the members once every shard is written; without: the
            # RMsafe jobs first (the longest), RMhelp when a worker is free
            futures = {name: submit(name) for name in jobs if (name == "help") == bool(shards)}
            for shard in shards:
                shard.result()
            futures.update({name: submit(name) for name in jobs if name not in futures})
            for name, future in futures.items():
                scored.update({(name, label): row for label, row in future.result().items()})
    else:
        if trunk_files:
            from molma.rewards.train import write_trunk_features

            write_trunk_features(configs[members[0]], safe_pairs, trunk_files[0])
        for name, job in jobs.items():
            scored.update({(name, label): row for label, row in _train_and_score_rm(*job, trunk_of[name]).items()})


def _train_rm_job(rm_cfg, pairs: list, heldout_sets: dict[str, list] | None, threads: int | None,
                  trunk_files: list[Path] | None = None) -> dict[str, dict]:
    """:func:`_train_and_score_rm` as the body of a worker process."""
    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    return _train_and_score_rm(rm_cfg, pairs, heldout_sets, trunk_files)


def _trunk_shard_job(rm_cfg, pairs: list, path: Path, shard: int, shards: int, threads: int | None) -> Path:
    """:func:`molma.rewards.train.write_trunk_features` for one shard, as the body of a worker process."""
    from molma.rewards.train import write_trunk_features

    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    return write_trunk_features(rm_cfg, pairs, path, shard=shard, shards=shards)


def _train_and_score_rm(rm_cfg, pairs: list, heldout_sets: dict[str, list] | None,
                        trunk_files: list[Path] | None = None) -> dict[str, dict]:
    """Train one reward model (its frozen layers' forward read from ``trunk_files`` if given) and score it on
    ``heldout_sets`` (label -> pairs; None: not scored). Returns the rows of
    :func:`molma.rewards.evaluate_reward_model` by label."""
    from molma.rewards import evaluate_reward_model, train_reward_model

    if _finished_reward_model(rm_cfg):  # a judges stage killed after this model: not trained twice
        print(f"{rm_cfg.output_path}: trained before with these settings, reused", flush=True)
    else:
        train_reward_model(rm_cfg, pairs=pairs, trunk_features=trunk_files)
    if not heldout_sets:
        return {}
    judge = _load_judge(rm_cfg)
    return {label: evaluate_reward_model(judge, data) for label, data in heldout_sets.items()}


def _finished_reward_model(rm_cfg) -> bool:
    """Whether ``rm_cfg.output_path`` holds a reward model saved with ``rm_cfg``'s settings (its folder appears
    only once complete: train_reward_model writes it atomically)."""
    from molma.rewards import METADATA_FILE

    meta_file = rm_cfg.output_path / METADATA_FILE
    if not meta_file.is_file():
        return False
    saved = dict(json.loads(meta_file.read_text(encoding="utf-8")).get("config") or {})
    wanted = to_dict(rm_cfg)
    return {k: v for k, v in saved.items() if k != "output_dir"} == {k: v for k, v in wanted.items()
                                                                      if k != "output_dir"}


def _load_judge(rm_cfg):
    """A trained reward model as a judge, scored as trained: the same context length; forwards in the run's
    precision, the score head in float32."""
    from molma.rewards import RewardModel

    return RewardModel.from_pretrained(rm_cfg.output_path, name=rm_cfg.objective, max_length=rm_cfg.max_length,
                                       precision=rm_cfg.precision)


def _average_rm_safe(cfg: ExperimentConfig, configs: dict, out: Path, scored: dict) -> Any:
    """Average the RMsafe members (``safe-seed<s>``) into ``out/rm-safe`` and write ``members/members.json`` with
    each member's accuracy on every held-out set (scored for the record; the average is not chosen by them).
    Returns RMsafe's config (the first member's, pointing at the average)."""
    from molma.atomic import write_text_atomic
    from molma.rewards.averaging import average_reward_models

    names = [f"safe-seed{seed}" for seed in cfg.rm_safe_seeds]
    members = {name: {label: {k: row[k] for k in ("accuracy", "correct", "n")}
                      for (job, label), row in scored.items() if job == name} for name in names}
    final = average_reward_models([configs[n].output_path for n in names], out / "rm-safe",
                                  record={"heldout_accuracy": members})
    write_text_atomic(out / "members" / "members.json", json.dumps({
        "rule": "RMsafe = the uniform average of the members' weights (WARM); the members' held-out accuracies "
                "are recorded, not used", "seeds": cfg.rm_safe_seeds, "members": members}, indent=2))
    print("RMsafe: weight average of seeds " + ", ".join(map(str, cfg.rm_safe_seeds)) + "; members on the held-out "
          "sets: " + "; ".join(f"{n}: " + ", ".join(f"{v['accuracy']:.3f}" for v in m.values())
                               for n, m in members.items()), flush=True)
    return replace(configs[names[0]], output_dir=str(final))


def _select_rm_safe(cfg: ExperimentConfig, configs: dict, out: Path, scored: dict) -> tuple[Any, str]:
    """Choose RMsafe among the trained candidates by the accuracy on each trainer's own held-out share of the
    training pairs (``molma_rm.json``; ties: the earlier candidate), move it to ``rm-safe`` and write
    ``selection.json`` with every candidate's settings and accuracies. The validation dialogues' accuracy of every
    candidate (``scored``: (job, held-out set) -> row, by the job that trained it) is recorded for the record;
    it plays no part in the choice. Returns the chosen config and its job name."""
    import shutil

    names = [n for n in configs if n.startswith("safe-")]
    summary = []
    for i, name in enumerate(names):
        c = configs[name]
        meta = json.loads((c.output_path / "molma_rm.json").read_text())
        entry = {"candidate": i, "settings": cfg.rm_safe_candidates[i], "selection_accuracy": meta["accuracy"],
                 "selection_pairs": meta["counts"]["eval_pairs"], "train_seconds": meta.get("train_seconds")}
        summary.append(entry)
    best = max(range(len(names)), key=lambda i: (summary[i]["selection_accuracy"], -i))
    for entry, name in zip(summary, names):
        entry["selected"] = entry["candidate"] == best
        entry["heldout_accuracy"] = {label: row["accuracy"] for (job, label), row in scored.items() if job == name}
    chosen = configs[names[best]]
    final = out / "rm-safe"
    if final.exists():
        shutil.rmtree(final)
    shutil.move(str(chosen.output_path), str(final))
    from molma.atomic import write_text_atomic

    (out / "candidates").mkdir(exist_ok=True)
    write_text_atomic(out / "candidates" / "selection.json", json.dumps({
        "rule": "RMsafe = the candidate with the highest accuracy on the held-out share (eval_fraction) of its "
                "own training pairs; ties: the earlier candidate. heldout_accuracy (scored by the job that trained "
                "each candidate) plays no part in the choice.",
        "selected": best, "candidates": summary}, indent=2))
    print(f"RMsafe: candidate {best} chosen ({summary[best]['settings']}); selection accuracies "
          + ", ".join(f"{e['selection_accuracy']:.3f} on {e['selection_pairs']}" for e in summary), flush=True)
    return replace(chosen, output_dir=str(final)), names[best]


# ------------------------------------------------------------------------------------------ 3. RL runs
@dataclass
class RunSpec:
    algo: str
    importance: list[float] | None = None
    iterations: int | None = None
    seed: int | None = None


def seed_run_name(algo: str, seed: int) -> str:
    """The name of ``algo``'s run on an extra seed (``extra_seeds``)."""
    return f"{algo}-s{seed}"


def plan_runs(cfg: ExperimentConfig) -> tuple[dict[str, RunSpec], dict[str, list[float]],
                                              dict[str, dict[str, list[float]]]]:
    """Every RL run by name, the SO-weighted sweep members and the preference-sweep fronts."""
    runs: dict[str, RunSpec] = {a: RunSpec(a) for a in cfg.algos}
    for algo, seeds in cfg.extra_seeds.items():
        for s in seeds:
            runs[seed_run_name(algo, s)] = RunSpec(algo, seed=s)
    sweep: dict[str, list[float]] = {}
    for w in cfg.sweep_weights:
        name = "so-weighted" if abs(w - 0.5) < 1e-9 and "so-weighted" in runs else f"so-weighted-w{w:g}"
        runs.setdefault(name, RunSpec("so-weighted", [w, 1 - w], cfg.sweep_iterations))
        sweep[name] = [w, 1 - w]
    pareto: dict[str, dict[str, list[float]]] = {}
    for algo in cfg.pareto_algos:
        for w in cfg.pareto_weights:
            name = algo if abs(w - 0.5) < 1e-9 and algo in runs else f"{algo}-w{w:g}"
            runs.setdefault(name, RunSpec(algo, [w, 1 - w], cfg.sweep_iterations))
            pareto.setdefault(algo, {})[name] = [w, 1 - w]
        if algo in runs:  # the equal-weight run is the middle point of the front
            pareto.setdefault(algo, {})[algo] = [0.5, 0.5]
    if "so-weighted" in runs and sweep:
        sweep.setdefault("so-weighted", [0.5, 0.5])
    return runs, sweep, pareto


def _train_settings(cfg: ExperimentConfig, rm_dir: Path, data_dir: Path, spec: RunSpec, out: Path,
                    lr: float | None = None) -> dict:
    """A run's TrainConfig settings; ``lr`` (the learning-rate search's choice) overrides ``train`` and
    ``algo_train``."""
    settings = {"model": cfg.model, "seed": cfg.seed, "precision": cfg.precision, **cfg.train,
                **cfg.algo_train.get(spec.algo, {}), **({"lr": float(lr)} if lr is not None else {}),
                "algo": spec.algo, "out": str(out),
                "objectives": {"help": str(rm_dir / "rm-help"), "safe": str(rm_dir / "rm-safe")},
                "prompts": {tag: str(data_dir / f"{tag}-train.jsonl") for tag in POOLS},
                "heldout_fraction": 0.0, "progress": cfg.workers == 1}
    if spec.importance is not None:
        settings["importance"] = spec.importance
    if spec.iterations is not None:
        settings["iterations"] = spec.iterations
    if spec.seed is not None:
        settings["seed"] = spec.seed
    return settings


def _train_run(settings: dict, threads: int | None) -> float:
    """One RL run (also the body of a worker process); returns its wall time."""
    from molma.rl import MultiObjectiveTrainer, TrainConfig

    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    from molma.rl.checkpoint import latest_checkpoint

    t0 = time.perf_counter()
    train_cfg = from_dict(TrainConfig, settings, source=f"experiment config: train ({settings['algo']})")
    # a run killed with the experiment resumes from its last intact checkpoint (same settings: same folder key)
    resume = latest_checkpoint(Path(train_cfg.out) / "checkpoints") is not None
    if resume:
        log.warning("%s: resuming from its last checkpoint", train_cfg.out)
    MultiObjectiveTrainer(train_cfg).train(resume=resume)
    return time.perf_counter() - t0


def _worker_pool(n: int, mmap_threshold: int | None = None):
    """``n`` worker processes, started fresh ("spawn": no forked torch thread pools or open models)."""
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    # one job per process (Python >= 3.11): the RL workers of the CPU experiment, which trained one run after
    # another, were resident at 5.4-5.8 GB each after ten runs (measured); a fresh
    # process per job costs a few seconds of start-up and starts from nothing
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    # glibc reads MALLOC_MMAP_THRESHOLD_ when a process starts, and spawned workers inherit the environment
    # of the moment they start, set it while the pool is open (_PoolWithEnv restores it)
    env = {"MALLOC_MMAP_THRESHOLD_": str(int(mmap_threshold))} if mmap_threshold else {}
    return _PoolWithEnv(ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), **fresh), env)


class _PoolWithEnv:
    """A process pool whose workers start with extra environment variables (set while the pool is open)."""

    def __init__(self, pool, env: dict[str, str]) -> None:
        self.pool, self.env, self.saved = pool, env, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        self.pool.__enter__()
        return self.pool

    def __exit__(self, *exc) -> None:
        try:
            self.pool.__exit__(*exc)
        finally:
            for k, v in self.saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _run_all(cfg: ExperimentConfig, stages: Stages, jobs: dict[str, tuple[Path, str, dict]]) -> None:
    """Train every run not finished yet: in this process, or ``workers`` at a time in worker processes."""
    todo = {}
    for name, (folder, key, settings) in jobs.items():
        if stages.is_done(f"train {name}", folder, key):
            stages.reuse(f"train {name}", folder)
        else:
            todo[name] = (folder, key, settings)
    for folder, key, _ in todo.values():
        claim_folder(folder, key)
    if cfg.workers == 1 or len(todo) <= 1:
        for name, (folder, key, settings) in todo.items():
            print(f"[{stages.label}] train {name}: running ...", flush=True)
            seconds = _train_run(settings, None)
            stages.mark_done(f"train {name}", folder, key, round(seconds, 1))
        return
    from concurrent.futures import as_completed

    print(f"[{stages.label}] training {len(todo)} runs, {cfg.workers} at a time: {', '.join(todo)}", flush=True)
    with _worker_pool(cfg.workers, cfg.worker_mmap_threshold) as pool:
        futures = {pool.submit(_train_run, settings, cfg.threads): name for name, (_, _, settings) in todo.items()}
        for future in as_completed(futures):
            name = futures[future]
            seconds = future.result()  # a failed run raises here, after the finished ones were marked
            folder, key, _ = todo[name]
            stages.mark_done(f"train {name}", folder, key, round(seconds, 1))


def plan_soups(cfg: ExperimentConfig) -> dict[str, RunSpec]:
    """The Rewarded-Soups models by name (``soup-w0.25``), each with its weights on (first, second) objective."""
    from molma.models.soup import soup_label

    return {f"soup-{soup_label(w)}": RunSpec("rewarded-soup", [float(w), 1.0 - float(w)])
            for w in cfg.soup_weights}


def _make_soups(cfg: ExperimentConfig, root: Path, soup_dir: Path) -> None:
    """Write the soups of the two finished ``soup_runs`` (exact LoRA interpolation, molma.models.soup)."""
    from molma.models.soup import rewarded_soups

    soups = rewarded_soups([root / "runs" / name / "final" for name in cfg.soup_runs], cfg.soup_weights,
                           soup_dir)
    print(f"[experiment] soups of {' and '.join(cfg.soup_runs)}: " + ", ".join(s.label for s in soups), flush=True)


# ------------------------------------------------------------------------------------------ 4. evaluation
def _judges(cfg: ExperimentConfig, rm_dir: Path) -> list:
    from molma.rewards import RewardModel

    return [RewardModel.from_pretrained(rm_dir / "rm-help", name="help", precision=cfg.precision),
            RewardModel.from_pretrained(rm_dir / "rm-safe", name="safe", precision=cfg.precision)]


def _eval_config(cfg: ExperimentConfig, versus: str | None = "molma"):
    from molma.eval import EvalConfig

    return EvalConfig(max_new_tokens=cfg.eval_max_new_tokens, seed=cfg.seed, batch_size=cfg.eval_batch_size,
                      versus=versus, kl_reference="ref", resume=True, precision=cfg.precision,
                      progress=cfg.workers == 1)


def _evaluate_models(cfg: ExperimentConfig, rm_dir: Path, models: dict[str, str], prompts: list, out: Path,
                     versus: str | None = None):
    """evaluate_models on ``models`` (the reference among them, as the KL reference) into ``out``, win rates
    of ``versus`` (default: MOLMA when present); also the body of a worker process."""
    from molma.eval import evaluate_models
    from molma.rl import load_policy

    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    def loader(spec: str):
        return load_policy(spec) if spec != cfg.model else _load_reference(cfg.model)

    if versus is None:
        versus = "molma" if "molma" in models else None  # a worker's share may not hold MOLMA
    return evaluate_models(models, prompts, _judges(cfg, rm_dir), _eval_config(cfg, versus), out_dir=out,
                           loader=loader)


def _evaluate_all(cfg: ExperimentConfig, rm_dir: Path, models: dict[str, str], prompts: list, out: Path,
                  versus: str = "molma"):
    """Every model of ``models`` (the reference "ref" among them) on ``prompts``: ``workers`` processes when
    there are several, else this one."""
    if cfg.workers > 1 and len(models) > 2:
        return _evaluate_in_parallel(cfg, rm_dir, models, prompts, out, versus)
    return _evaluate_models(cfg, rm_dir, models, prompts, out, versus)


def _evaluate_in_parallel(cfg: ExperimentConfig, rm_dir: Path, models: dict[str, str], prompts: list,
                          out: Path, versus: str = "molma"):
    """``workers`` processes each evaluate a share of the models (and the reference, for the KL) into
    ``out/part-<i>``; the parts are merged into ``out`` (responses.jsonl, summary.json) and the result of
    all models returned. The reference's responses are the same in every part (same prompts and seed)."""
    from molma.eval.responses import read_json_if_exists, read_responses, write_responses
    from molma.eval.runner import RESPONSES, SUMMARY, compute_result, write_summary

    others = [m for m in models if m != "ref"]
    groups = [others[i::cfg.workers] for i in range(cfg.workers)]
    groups = [g for g in groups if g]
    parts = [out / f"part-{i}" for i in range(len(groups))]
    with _worker_pool(len(groups)) as pool:
        futures = [pool.submit(_evaluate_models, cfg, rm_dir, {m: models[m] for m in [*g, "ref"]}, prompts, part,
                               versus if versus in [*g, "ref"] else None)
                   for g, part in zip(groups, parts)]
        for future in futures:
            future.result()
    records, kl, details, timings = [], {}, {}, {}
    config: dict = {}
    for i, part in enumerate(parts):
        summary = read_json_if_exists(part / SUMMARY) or {}
        config = config or dict(summary.get("config") or {})
        records += [r for r in read_responses(part / RESPONSES) if r.model != "ref" or i == 0]
        for m, v in (summary.get("kl") or {}).items():
            if m != "ref" or i == 0:
                kl[m] = v
                if m in (summary.get("kl_details") or {}):
                    details[m] = summary["kl_details"][m]
        timings.update({m: t for m, t in (summary.get("timings") or {}).items() if m != "ref" or i == 0})
    config["models"] = dict(models)
    config["parallel_parts"] = [str(p.name) for p in parts]
    order = list(models)
    records.sort(key=lambda r: (order.index(r.model), r.prompt_id))
    result = compute_result(records, versus, 0.0, kl, out, order, None, timings, config, details)
    write_responses(out / RESPONSES, records)
    write_summary(out, result)
    return result


def _evaluate(cfg: ExperimentConfig, root: Path, rm_dir: Path, data_dir: Path, runs: dict[str, RunSpec],
              sweep: dict[str, list[float]], pareto: dict[str, dict[str, list[float]]],
              soups: dict[str, RunSpec]) -> None:
    from molma.eval import sweep_from_result, write_sweep

    prompts = _eval_prompts(cfg, data_dir)
    models = {"ref": cfg.model, **{name: str(root / "runs" / name / "final") for name in runs},
              **{name: str(root / "soups" / name.removeprefix("soup-")) for name in soups}}
    result = _evaluate_all(cfg, rm_dir, models, prompts, root / "eval")
    if sweep:
        write_sweep(root / "sweep" / "so-weighted.json",
                    sweep_from_result(result, sweep, "SO-weighted", versus="molma", baseline="molma",
                                      baseline_weights=[0.5, 0.5]))
    for algo, members in pareto.items():
        write_sweep(root / "pareto" / f"{algo}.json",
                    sweep_from_result(result, members, algo.upper() if algo != "molma" else "MOLMA",
                                      versus=None, baseline=None))
    if soups:  # the soup front runs from the first run (w = 1) through the soups to the second (w = 0)
        first, second = cfg.soup_runs
        members = {first: [1.0, 0.0], **{name: spec.importance for name, spec in soups.items()}, second: [0.0, 1.0]}
        write_sweep(root / "pareto" / "soup.json",
                    sweep_from_result(result, members, "Rewarded soups", versus=None, baseline=None))


def _run_key(rm_key: str, data_key: str, settings: dict) -> str:
    """A run's stage key: its judges, its prompts and every setting that changes what it learns (its folder
    included, so two runs never share one)."""
    return _hash("run", rm_key, data_key, {k: v for k, v in settings.items() if k not in LOGGING_KEYS})


def adopt_finished_run(stages: Stages, src_name: str, src: Path, src_key: str, dst_name: str, dst: Path,
                       dst_key: str) -> bool:
    """Copy the finished run ``src`` (stage ``src_name`` done under ``src_key``) to ``dst`` and mark stage
    ``dst_name`` done under ``dst_key``, unless ``dst`` is done already. The caller passes as ``src_key`` the key
    ``src`` has with ``dst``'s settings (only the folder differs), so a run is only ever copied to settings it
    was trained with. The copy's ``config.yaml`` and ``run.json`` name their new folder. Returns whether it
    copied."""
    import shutil

    if stages.is_done(dst_name, dst, dst_key) or not stages.is_done(src_name, src, src_key):
        return False
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial)
    from molma.atomic import write_text_atomic

    write_text_atomic(partial / ".stage-key", dst_key + "\n")
    for meta in ("config.yaml", "run.json"):  # the settings it records: same but the folder
        if (partial / meta).is_file():
            text = (partial / meta).read_text()
            write_text_atomic(partial / meta, text.replace(str(src), str(dst)))
    shutil.rmtree(dst, ignore_errors=True)
    partial.rename(dst)
    stages.mark_copied(dst_name, dst, dst_key, src)
    return True


# ------------------------------------------------------------------------------------------ 3a. lr search
LR_RULE = ("the learning rate whose smaller mean reward gain over the reference (of the two objectives; each gain "
           "averaged over the searched seeds) on the validation prompts is largest, among the rates whose KL to "
           "the reference stays within max_kl on every seed (if none does: the rate with the smallest KL); ties go "
           "to the smaller rate")


def choose_learning_rate(gains: dict[float, dict[str, float]], kl: dict[float, float | None] | None = None,
                         max_kl: float | None = None) -> float:
    """The learning rate whose *smaller* mean reward gain over the reference (across objectives) is largest:
    a rate that buys one objective with the other loses to one that helps both. With ``max_kl``, only the
    rates whose KL to the reference (``kl[lr]``, the largest over seeds) is at most ``max_kl`` compete: a
    gain bought by drifting far from the reference did not transfer to held-out prompts (session 7's 1e-2
    run); if no rate stays within it, the one with the smallest KL is kept. Ties (within 1e-12) go to the
    smaller rate, which moves the policy less. ``gains[lr][objective]`` = mean(model - reference)."""
    if not gains:
        raise ValueError("choose_learning_rate: no candidates")
    candidates = list(gains)
    if max_kl is not None:
        drift = {lr: float("inf") if (kl or {}).get(lr) is None else float(kl[lr]) for lr in gains}
        within = [lr for lr in candidates if drift[lr] <= max_kl]
        if not within:
            least = min(drift.values())
            return min(lr for lr in candidates if drift[lr] == least)
        candidates = within
    worst = {lr: min(gains[lr].values()) for lr in candidates}
    best = max(worst.values())
    return min(lr for lr, w in worst.items() if w >= best - 1e-12)


def _lr_search_run(root: Path, algo: str, lr: float, seed: int | None = None) -> tuple[str, Path]:
    """The stage name and folder of ``algo``'s search run at ``lr`` (``seed``: another than the main seed)."""
    label = f"{algo}-lr{lr:g}" + (f"-s{seed}" if seed is not None else "")
    return f"lr-search-{label}", root / "lr-search" / "runs" / label


def _validation_prompts(data_dir: Path) -> list:
    """Every validation prompt of both pools (set aside from training; never the held-out ones)."""
    from molma.rl.prompts import load_pool

    prompts = []
    for tag in POOLS:
        path = data_dir / f"{tag}-validation.jsonl"
        if path.is_file() and path.read_text().strip():
            prompts += load_pool(str(path), tag)
    if not prompts:
        raise ValueError(f"{data_dir}: no validation prompts for lr_search (raise prompt_validation_fraction)")
    return prompts


def _search_learning_rates(cfg: ExperimentConfig, stages: Stages, root: Path, rm_dir: Path, rm_key: str,
                           data_dir: Path, data_key: str) -> dict[str, tuple[float, dict[int, tuple[str, Path, str]]]]:
    """``lr_search``: train each searched algorithm (every searched seed, every other setting as its main run)
    at every candidate rate, let the policies and the reference answer the validation prompts (both judges, KL
    to the reference), choose by :data:`LR_RULE` and write ``lr-search/selection.json``. Returns, per searched
    algorithm, the chosen lr and, per seed, that run's stage name, folder and key (the main run and the
    extra-seed runs copy them)."""
    if not cfg.lr_search:
        return {}
    from molma.eval import load_result

    lrs = [float(x) for x in cfg.lr_search["lrs"]]
    seeds = [int(x) for x in cfg.lr_search.get("seeds", [cfg.seed])]
    max_kl = cfg.lr_search.get("max_kl")
    jobs: dict[str, tuple[Path, str, dict]] = {}
    search_runs: dict[tuple[str, float, int], str] = {}
    for algo in cfg.lr_search["algos"]:
        for lr in lrs:
            for seed in seeds:
                other_seed = None if seed == cfg.seed else seed
                name, folder = _lr_search_run(root, algo, lr, other_seed)
                spec = RunSpec(algo, seed=other_seed)
                settings = _train_settings(cfg, rm_dir, data_dir, spec, folder, lr)
                jobs[name] = (folder, _run_key(rm_key, data_key, settings), settings)
                search_runs[algo, lr, seed] = name
                # a main run an earlier invocation trained at this rate (e.g. before the search was configured)
                main = root / "runs" / (algo if other_seed is None else seed_run_name(algo, seed))
                main_key = _run_key(rm_key, data_key, _train_settings(cfg, rm_dir, data_dir, spec, main, lr))
                adopt_finished_run(stages, f"train {main.name}", main, main_key, f"train {name}", folder,
                                   jobs[name][1])
    _run_all(cfg, stages, jobs)
    labels = {name: folder.name for name, (folder, _, _) in jobs.items()}  # model names in the evaluation
    models = {"ref": cfg.model, **{labels[name]: str(folder / "final") for name, (folder, _, _) in jobs.items()}}
    prompts = _validation_prompts(data_dir)
    eval_dir = root / "lr-search" / "eval"
    eval_key = _hash("lr search eval", {n: k for n, (_, k, _) in jobs.items()}, data_key, cfg.eval_max_new_tokens,
                     cfg.eval_batch_size, cfg.seed, cfg.precision)
    stages.run("lr search evaluation", eval_dir, eval_key,
               lambda: _evaluate_all(cfg, rm_dir, models, prompts, eval_dir, versus="ref"))
    result = load_result(eval_dir, versus="ref")
    chosen: dict[str, float] = {}
    report: dict[str, Any] = {"rule": LR_RULE, "lrs": lrs, "seeds": seeds, "max_kl": max_kl,
                              "n_prompts": len(result.prompt_ids),
                              "prompts_per_pool": {t: sum(p.tag == t for p in prompts) for t in POOLS},
                              "algos": {}}
    for algo, followers in cfg.lr_search["algos"].items():
        rows, gains, drift = [], {}, {}
        for lr in lrs:
            per_seed = []
            for seed in seeds:
                model = labels[search_runs[algo, lr, seed]]
                vs_ref = result.compare(model, "ref")
                per_seed.append({"seed": seed, "model": model, "kl": result.kl.get(model),
                                 "vs_reference": {o: {k: c[k] for k in (
                                     "mean_diff", "diff_ci_low", "diff_ci_high", "win_excl_ties", "sign_p", "n_win",
                                     "n_tie", "n_loss", "n_identical_ties")} for o, c in vs_ref.items()}})
            objectives = list(per_seed[0]["vs_reference"])
            gains[lr] = {o: sum(r["vs_reference"][o]["mean_diff"] for r in per_seed) / len(per_seed)
                         for o in objectives}
            kls = [r["kl"] for r in per_seed]
            drift[lr] = None if any(k is None for k in kls) else float(max(kls))
            row = {"lr": lr, "gain": gains[lr], "smaller_gain": min(gains[lr].values()), "kl_max": drift[lr],
                   "within_max_kl": None if max_kl is None else drift[lr] is not None and drift[lr] <= max_kl,
                   "seeds": per_seed}
            if len(seeds) == 1:  # the one-seed layout of earlier selection files
                row.update({k: per_seed[0][k] for k in ("model", "kl", "vs_reference")})
            rows.append(row)
        chosen[algo] = choose_learning_rate(gains, drift, max_kl)
        report["algos"][algo] = {"chosen_lr": chosen[algo], "also_used_by": list(followers), "candidates": rows}
        print(f"[{stages.label}] lr search {algo}: " + ", ".join(
            f"lr {r['lr']:g} gains " + " / ".join(f"{g:+.3f}" for g in gains[r['lr']].values())
            + ("" if r["kl_max"] is None else f" (KL {r['kl_max']:.2f})") for r in rows)
            + f" -> lr {chosen[algo]:g}" + (f" (also for {', '.join(followers)})" if followers else ""), flush=True)
    from molma.atomic import write_text_atomic

    write_text_atomic(root / "lr-search" / "selection.json", json.dumps(report, indent=2, default=float))
    picked = {}
    for algo, lr in chosen.items():
        names = {seed: search_runs[algo, lr, seed] for seed in seeds}
        picked[algo] = (lr, {seed: (name, *jobs[name][:2]) for seed, name in names.items()})
    return picked


def _load_reference(name: str):
    from molma.models import load_model

    model, tok = load_model(name)
    return model.eval(), tok


# ------------------------------------------------------------------------------------------ 5. evidence
def evidence(result, runs: dict[str, RunSpec], reference: str = "ref", main_seed: int | None = None) -> dict:
    """Every model against the reference and MOLMA against every model, per objective, with the paired
    statistics of :meth:`molma.eval.runner.EvalResult.compare`; mean rewards and KL per model (a run without
    a seed of its own has the experiment's ``main_seed``)."""
    out: dict[str, Any] = {"n_prompts": len(result.prompt_ids), "objectives": result.objectives,
                           "models": {}, "vs_reference": {}, "molma_vs": {}}

    for m in result.models:
        out["models"][m] = {"algo": runs[m].algo if m in runs else "reference",
                            "seed": (main_seed if runs[m].seed is None else runs[m].seed) if m in runs else None,
                            "importance": runs[m].importance if m in runs else None,
                            "kl": result.kl.get(m),
                            **{f"{o}/mean": float(result.scores[m][o].mean()) for o in result.objectives}}
    for m in result.models:
        if m != reference:
            out["vs_reference"][m] = result.compare(m, reference)
        if m != "molma":
            out["molma_vs"][m] = result.compare("molma", m)
    out["multiplicity"] = {family: adjust_family(out[family], result.objectives)
                           for family in ("vs_reference", "molma_vs")}
    return out


def adjust_family(comparisons: dict[str, dict[str, dict]], objectives: list[str], alpha: float = 0.05) -> dict:
    """Read a table of comparisons as one family of sign tests: adds ``holm_p`` (Holm-adjusted over every
    model and objective of the table, :func:`molma.eval.stats.holm_adjusted`) to each comparison in place and
    returns how many tests there are, how many reach ``p < alpha`` alone (with the count expected by chance
    when no model differs, ``alpha * n``) and which stay significant after the correction (model, objective,
    ``"gain"`` or ``"loss"`` for A)."""
    from molma.eval.stats import holm_adjusted

    keys = [(m, o) for m, per in comparisons.items() for o in objectives if per.get(o, {}).get("sign_p") is not None]
    adjusted = holm_adjusted([comparisons[m][o]["sign_p"] for m, o in keys]) if keys else []
    nominal, corrected = [], []
    for (m, o), holm in zip(keys, adjusted):
        c = comparisons[m][o]
        c["holm_p"] = float(holm)
        direction = "gain" if c["n_win"] > c["n_loss"] else "loss" if c["n_loss"] > c["n_win"] else "none"
        if c["sign_p"] < alpha and direction != "none":
            nominal.append([m, o, direction])
            if holm < alpha:
                corrected.append([m, o, direction])
    return {"n_tests": len(keys), "alpha": alpha, "expected_by_chance": alpha * len(keys),
            "nominal": nominal, "holm": corrected}


def _family_sentence(summary: dict, better: str, worse: str) -> str:
    """One paragraph under a comparison table: nominal hits against what chance gives, and Holm survivors
    (``better`` / ``worse`` name the direction of a gain / loss of the table's A side)."""
    n, alpha, nominal, holm = summary["n_tests"], summary["alpha"], summary["nominal"], summary["holm"]
    gains = sum(d == "gain" for *_, d in nominal)
    listed = ", ".join(f"{m} on {o} ({better if d == 'gain' else worse})" for m, o, d in holm) or "none"
    return (f"Multiple comparisons: {n} sign tests in this table; {len(nominal)} reach p < {alpha:g} on their own "
            f"({gains} {better}, {len(nominal) - gains} {worse}), about {alpha * n:.1f} expected by chance if no "
            f"model differed. Significant after Holm's correction over the {n} (family-wise error {alpha:g}): "
            f"{listed}.")


def evidence_markdown(facts: dict, meta: dict | None = None) -> str:
    """``evidence.json`` as Markdown: mean rewards and KL per model, every model against the reference and
    MOLMA against every model (win / tie / loss, win share among non-tied prompts with its Wilson 95 %
    interval, sign-test p and its Holm-adjusted value over the table, mean reward difference with its paired
    bootstrap 95 % interval), and under each table how many tests are significant alone and after Holm."""
    from molma.eval.tables import fmt_p, pct

    objectives = facts["objectives"]
    lines = [f"Held-out prompts: {facts['n_prompts']}. Judges: " + ", ".join(objectives) + ".", ""]
    lines += ["| model | algo | seed | " + " | ".join(f"{o} mean" for o in objectives) + " | KL to ref (k3) |",
              "|---" * (4 + len(objectives)) + "|"]
    for m, v in facts["models"].items():
        kl = "-" if v.get("kl") is None else f"{v['kl']:.3f}"
        seed = "-" if v.get("seed") is None else str(v["seed"])
        lines.append(f"| {m} | {v['algo']} | {seed} | " + " | ".join(f"{v[f'{o}/mean']:+.3f}" for o in objectives)
                     + f" | {kl} |")

    def table(title: str, comparisons: dict, row_label: str) -> list[str]:
        out = ["", f"### {title}", "",
               f"| {row_label} | judge | win | tie | loss | win of non-tied [95 % CI] | sign p | Holm p "
               "| mean diff [95 % CI] |",
               "|---|---|---|---|---|---|---|---|---|"]
        for m, per in comparisons.items():
            for o in objectives:
                c = per[o]
                excl = "-" if c.get("win_excl_ties") is None else \
                    f"{pct(c['win_excl_ties'])} [{pct(c['excl_ci_low'])}, {pct(c['excl_ci_high'])}]"
                diff = "-" if c.get("mean_diff") is None else \
                    f"{c['mean_diff']:+.3f} [{c['diff_ci_low']:+.3f}, {c['diff_ci_high']:+.3f}]"
                ties = f"{pct(c['tie'])}" + (f" ({c['n_identical_ties']} same text)" if c.get("n_identical_ties")
                                              else "")
                out.append(f"| {m} | {o} | {pct(c['win'])} | {ties} | {pct(c['loss'])} | {excl} | "
                           f"{fmt_p(c['sign_p'])} | {fmt_p(c.get('holm_p'))} | {diff} |")
        return out

    multiplicity = facts.get("multiplicity", {})
    lines += table("Every model against the reference (A = the model, B = ref)", facts["vs_reference"], "model")
    if "vs_reference" in multiplicity:
        lines += ["", _family_sentence(multiplicity["vs_reference"], "better than the reference", "worse")]
    lines += table("MOLMA (seed 0) against every model (A = molma)", facts["molma_vs"], "opponent")
    if "molma_vs" in multiplicity:
        lines += ["", _family_sentence(multiplicity["molma_vs"], "MOLMA better", "MOLMA worse")]
    if meta:
        workers = (meta.get("config") or {}).get("workers", 1)
        parallel = f"; up to {workers} runs at a time, so the wall time is shorter" if workers > 1 else ""
        lines += ["", f"Sum of the stage times: {meta.get('stage_seconds_total', 0) / 60:.1f} min (each RL run's own "
                  f"time counted{parallel}; precision {meta.get('precision')}, {meta.get('threads')} torch "
                  f"thread(s) per process, {meta.get('cpu_count')} CPU cores)."]
    return "\n".join(lines) + "\n"


def write_evidence(folder: Path, facts: dict, meta: dict) -> None:
    """``evidence.json`` (facts and run metadata) and ``evidence.md`` in ``folder``."""
    from molma.atomic import write_text_atomic

    write_text_atomic(folder / "evidence.json", json.dumps({"meta": meta, **facts}, indent=2, default=float))
    write_text_atomic(folder / "evidence.md", evidence_markdown(facts, meta))


def run_experiment(config_path: str | None, overrides=(), out: str | None = None,
                   config_class: type = ExperimentConfig, label: str = "experiment") -> Path:
    cfg = load_config(config_class, config_path, overrides)
    if out:
        cfg.out = out
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.hh_data and not Path(cfg.hh_data).is_file():
        if cfg.hh_data_required:
            raise FileNotFoundError(f"{config_path or 'config'}: hh_data: no such file {cfg.hh_data} (the HH-RLHF "
                                    "harmless-base file; set hh_data_required: false to fall back to builtin data)")
        log.warning("hh_data %s not found: the safety judge and prompts fall back to the builtin data",
                    cfg.hh_data)
        print(f"[{label}] WARNING: {cfg.hh_data} not found; using the builtin safety pairs and prompts", flush=True)
        cfg.hh_data = None
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    stages = Stages(root, label)
    from molma.models import resolve_model_path
    from molma.models.precision import resolve_precision

    print(f"[{label}] model: {cfg.model} -> {resolve_model_path(cfg.model)}; precision "
          f"{resolve_precision(cfg.precision)} ({cfg.precision})", flush=True)

    # 1. data
    data_dir = root / "data"
    split_key = _hash("hh split", cfg.seed, _file_key(cfg.hh_data), cfg.hh_validation_fraction)  # what RMs use
    data_key = _hash("data", split_key, cfg.model, cfg.prompt_max_tokens, _file_key(cfg.help_prompts),
                     _file_key(cfg.help_eval_prompts), cfg.prompt_heldout_fraction, cfg.prompt_validation_fraction)
    stages.run("data", data_dir, data_key, lambda: _prepare_data(cfg, data_dir))

    # 2. reward models
    rm_dir = root / "rm"
    rm_key = _hash("rm", split_key, cfg.model, cfg.seed, cfg.precision, cfg.rm, cfg.rm_help, cfg.rm_safe,
                   cfg.rm_heldout_fraction, cfg.rm_benchmarks, cfg.hh_max_train_pairs,
                   *([cfg.rm_safe_candidates] if cfg.rm_safe_candidates else []),
                   *([("rm_safe_seeds", cfg.rm_safe_seeds)] if cfg.rm_safe_seeds else []))
    stages.run("reward models", rm_dir, rm_key, lambda: train_judges(cfg, rm_dir))

    # 3. RL runs (the learning rates of lr_search's algorithms chosen first, on the validation prompts)
    searched = _search_learning_rates(cfg, stages, root, rm_dir, rm_key, data_dir, data_key)
    chosen_lr = {name: lr for algo, (lr, _) in searched.items()
                 for name in [algo, *cfg.lr_search["algos"][algo]]}
    runs, sweep, pareto = plan_runs(cfg)
    jobs = {}
    for name, spec in runs.items():
        folder = root / "runs" / name
        settings = _train_settings(cfg, rm_dir, data_dir, spec, folder, chosen_lr.get(spec.algo))
        jobs[name] = (folder, _run_key(rm_key, data_key, settings), settings)
    for algo, (_, chosen_runs) in searched.items():  # the search's chosen runs are the main and extra-seed runs
        for seed, (name, folder, key) in chosen_runs.items():
            main = algo if seed == cfg.seed else seed_run_name(algo, seed)
            if main in jobs:
                adopt_finished_run(stages, f"train {name}", folder, key, f"train {main}", *jobs[main][:2])
    _run_all(cfg, stages, jobs)
    soups = plan_soups(cfg)
    soup_key = None
    if soups:  # Rewarded Soups of two finished runs
        soup_key = _hash("soups", [jobs[name][1] for name in cfg.soup_runs], cfg.soup_weights)
        stages.run("soups", root / "soups", soup_key, lambda: _make_soups(cfg, root, root / "soups"))

    # 4. evaluation
    eval_dir = root / "eval"
    eval_key = _hash("eval", {n: k for n, (_, k, _) in jobs.items()}, cfg.eval_prompts, cfg.eval_max_new_tokens,
                     cfg.eval_batch_size, cfg.seed, cfg.precision, *([soup_key] if soup_key else []))
    stages.run("evaluation", eval_dir, eval_key,
               lambda: _evaluate(cfg, root, rm_dir, data_dir, runs, sweep, pareto, soups))

    # 5. evidence and report
    from molma.eval import build_report, load_result
    result = load_result(eval_dir, versus="molma")
    facts = evidence(result, {**runs, **soups}, main_seed=cfg.seed)
    wall = round(time.perf_counter() - t_start, 1)
    # an experiment finished over several invocations of one config (resumed after a kill, or rerun only to
    # publish): keep each finished one's wall time and the stages it ran, so the cost stays on record when the
    # last invocation only reuses stages; another config starts the record anew (the title only names the
    # report, so a new title, e.g. when publishing, keeps the record)
    previous = json.loads((root / f"{label}.json").read_text()) if (root / f"{label}.json").is_file() else {}

    def settings(config: dict) -> dict:
        return {k: v for k, v in config.items() if k != "title"}

    if settings(previous.get("config") or {}) != settings(to_dict(cfg)):
        previous = {}
    ran = [name for name in stages.timings if name not in stages.reused]
    invocations = [*previous.get("invocations", []),
                   {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": wall, "stages_run": ran}]
    meta = {"config": to_dict(cfg), "chosen_lr": chosen_lr, "stage_seconds": stages.timings,
            "reused_stages": stages.reused,
            "wall_time_s": wall, "invocations": invocations,
            "wall_time_s_all_invocations": round(sum(i["wall_s"] for i in invocations), 1),
            "stage_seconds_total": round(sum(stages.timings.values()), 1),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "precision": resolve_precision(cfg.precision), "molma": molma.__version__}
    from molma.atomic import write_text_atomic

    write_evidence(root, facts, meta)
    write_text_atomic(root / f"{label}.json", json.dumps(meta, indent=2))
    import yaml

    write_text_atomic(root / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    report = build_report(root, title=cfg.title)
    html = getattr(report, "html", None) or (root / "report" / "report.html")
    print(f"\n{label} wall time: {time.perf_counter() - t_start:.0f} s (stages: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in stages.timings.items()) + ")")
    print(f"report: {Path(html).resolve()}\nevidence: {(root / 'evidence.md').resolve()}")
    # last: the table with paired tests; it ends with the one-sentence verdict
    print(f"\nMOLMA against each model ({len(result.prompt_ids)} held-out prompts, judged by RMhelp / RMsafe; "
          "RMhelp is trained on builtin pairs: no real helpfulness preference data is reachable offline):")
    print(result.win_rate_text())  # ends with the one-sentence verdict (molma.eval.tables.verdict_sentence)
    return root


def summarise_runs(root: Path) -> dict[str, dict]:
    """Per RL run of ``root/runs``: algorithm, loss, wall time, and the median seconds per iteration of each
    phase (generation, scoring, reference, training, total) with the generated tokens per iteration, from
    its ``run.json`` and ``metrics.jsonl``: the cost of each method at the same rollout budget."""
    import statistics

    out = {}
    for folder in sorted(p for p in (root / "runs").iterdir() if (p / "run.json").is_file()):
        run = json.loads((folder / "run.json").read_text())
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        settings = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
        phases = sorted({k for r in rows for k in r if k.startswith("time/")})
        out[folder.name] = {
            "algo": run.get("algo"), "loss": _policy_loss(folder / "config.yaml", settings), "iterations": len(rows),
            "wall_time_s": run.get("wall_time_s"),
            "rollouts_per_iteration": settings.get("experience_size"),
            "response_tokens_mean": round(statistics.fmean(r.get("response_tokens", 0.0) for r in rows), 2)
            if rows else None,
            "median_seconds_per_iteration": {k.removeprefix("time/"): round(statistics.median(
                r[k] for r in rows if k in r), 3) for k in phases},
            "train_kl_last": rows[-1].get("kl") if rows else None}
    return out


def _policy_loss(path: Path, settings: dict) -> str | None:
    """The loss a run's saved ``config.yaml`` resolves to (``loss: auto`` -> apa / ppo / grpo); the recorded
    ``loss`` when the file does not load as this version's TrainConfig."""
    from molma.rl.config import load_run_config

    try:
        return load_run_config(path).policy_loss
    except (OSError, TypeError, ValueError):
        return settings.get("loss")


# the files of a finished experiment that are worth keeping in the repository: (source under OUT, name in DEST)
PUBLISHED_FILES = [("config.yaml", "config.yaml"),
                   ("data/data.json", "data.json"), ("rm/results.json", "rm_results.json"),
                   ("rm/candidates/selection.json", "rm_selection.json"),
                   ("rm/members/members.json", "rm_members.json"), ("eval/summary.json", "eval_summary.json"),
                   ("lr-search/selection.json", "lr_selection.json"),
                   ("lr-search/eval/summary.json", "lr_search_eval_summary.json")]


def publish_results(root: str | Path, dest: str | Path, title: str | None = None) -> Path:
    """Copy a finished experiment's results (no model weights, no responses) into ``dest`` (e.g.
    ``docs/results/cpu-experiment``): the evidence, Table 2 rows, the RMsafe choice, prompt-pool sizes, the
    evaluation summary, the sweep and Pareto files under ``sweeps/``, and the report without example prompts
    under ``report/``. Files of an earlier publication that this one does not write are removed."""
    import shutil

    from molma.eval import build_report

    root, dest = Path(root), Path(dest)
    if not (root / "evidence.json").is_file():
        raise FileNotFoundError(f"{root}: no evidence.json (run the experiment to the end first)")
    dest.mkdir(parents=True, exist_ok=True)
    # the evidence is recomputed from the saved evaluation by this version of the code (same numbers as the
    # experiment's own evidence.json; tables as this version writes them)
    from molma.eval import load_result

    cfg = load_config(ExperimentConfig, str(root / "config.yaml"))
    meta = json.loads((root / "experiment.json").read_text()) if (root / "experiment.json").is_file() else {}
    facts = evidence(load_result(root / "eval", versus="molma"), {**plan_runs(cfg)[0], **plan_soups(cfg)},
                     main_seed=cfg.seed)
    for sub in ("report", "sweeps"):
        shutil.rmtree(dest / sub, ignore_errors=True)
    for src, name in PUBLISHED_FILES:
        if (root / src).is_file():
            shutil.copyfile(root / src, dest / name)
        elif (dest / name).exists():
            (dest / name).unlink()
    for sub in ("sweep", "pareto"):
        for path in sorted((root / sub).glob("*.json")):
            (dest / "sweeps").mkdir(exist_ok=True)
            shutil.copyfile(path, dest / "sweeps" / (path.name if sub == "sweep" else f"pareto-{path.name}"))
    write_evidence(dest, facts, meta)
    from molma.atomic import write_text_atomic

    write_text_atomic(dest / "runs.json", json.dumps(summarise_runs(root), indent=2))
    build_report(root, out_dir=dest / "report", title=title or cfg.title, n_examples=0)
    print(f"published {root} -> {dest}", flush=True)
    return dest

