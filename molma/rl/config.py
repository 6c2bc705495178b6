"""Configuration of the multi-objective RL trainer (defaults: MOLMA paper section 4.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from molma.config import (
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    SEED,
    UNIT,
    Range,
    check_ranges,
)
from molma.models import LoraSettings

SINGLE_OBJECTIVE_ALGOS = ("so-help", "so-safe", "so-weighted", "so-piecewise")
PRESET_ALGOS = ("molma", "gapo", "pgapo", *SINGLE_OBJECTIVE_ALGOS)


@dataclass
class TrainConfig:
    """One RL fine-tuning run.

    ``algo``: ``molma`` (APA + Aligned-MTL), ``gapo`` / ``pgapo`` (PPO + GAPO / P-GAPO weighting),
    ``so-help`` / ``so-safe`` / ``so-weighted`` / ``so-piecewise`` (single-objective baselines on the
    same loop), or the name of any gradient method of :mod:`molma.gradients` (MO with that method).
    """

    algo: str = "molma"
    model: str = "smollm2-135m-instruct"
    # objective name -> reward-model folder or rule ("rule:length", ...), in order
    objectives: dict[str, str] = field(default_factory=lambda: {"help": "runs/rm-help", "safe": "runs/rm-safe"})
    # task importance w (molma / any method), preference lambda (pgapo), weights (so-weighted); None = equal
    importance: list[float] | None = None
    help_objective: str = "help"
    safe_objective: str = "safe"
    piecewise_delta: float = 0.15
    # prompt pools: tag -> source ("builtin:help", a file, a hub dataset), and their mixing proportions
    prompts: dict[str, str] = field(default_factory=lambda: {"help": "builtin:help", "safe": "builtin:safe"})
    prompt_mix: dict[str, float] = field(default_factory=lambda: {"help": 0.6, "safe": 0.4})
    heldout_fraction: float = 0.2  # of each pool, never trained on (evaluation prompts)
    iterations: int = 100
    experience_size: int = 64
    minibatch_size: int = 8
    epochs_per_iteration: int = 1
    # generation
    max_new_tokens: int = 48
    max_prompt_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # losses
    loss: Literal["auto", "apa", "ppo"] = "auto"  # auto: ppo for gapo/pgapo (GAPO paper), apa otherwise
    kl_beta: float | None = None  # None: 0.01 with APA (MOLMA paper), 0.05 with PPO (GAPO Table 2)
    apa_lambda: float = 0.95
    ppo_clip: float = 0.1
    gamma: float = 1.0
    gae_lambda: float = 0.95
    whiten_advantages: bool = False
    value_coef: float = 1.0
    logit_eps: float = 1e-6
    # gradient combination
    # exact: K full gradients; fast: Gramian at the per-token log-probs, one backward; subset: Gramian
    # from the last transformer block's trainable parameters only (GAPO's memory saver), one backward
    gradient_mode: Literal["exact", "fast", "subset"] = "exact"
    gapo_p: int = 2
    modulate_critic: bool = False  # True: L_k = APA_k + value_k is modulated (Algorithm 1 verbatim)
    # optimisation (paper: AdamW 0.9/0.95, eps 1e-5, wd 0.1, clip 1.0, lr 1e-6 constant)
    lr: float = 1e-6
    critic_lr: float | None = None
    weight_decay: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-5
    clip_norm: float | None = 1.0
    lora: LoraSettings | None = None
    critic_backbone: Literal["trainable", "frozen"] = "trainable"
    # run
    device: str = "auto"  # auto: this process's GPU (LOCAL_RANK) when CUDA is available, else cpu
    # mixed precision of every forward (policy, reference, critic, reward models): float32 weights and
    # optimizer state, autocast forwards, float32 output layers; auto: bf16 where the hardware has it
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # with several processes: shard policy, reference and critic with FSDP2 (fully_shard) instead of
    # replicating them; the per-objective gradients are reduce-scattered and the Gramian all-reduced
    fsdp: bool = False
    # fsdp: gather the whole policy once per rollout, so decoding does not all-gather every block at
    # every token (costs the full policy's memory during generation; false: block by block)
    fsdp_gather_for_generation: bool = True
    seed: int = 0
    out: str = "runs/molma"
    save_every: int = 10
    max_bad_updates: int = 5
    # subtracted from every objective's raw score of a response cut at max_new_tokens without a stop token
    # (0: none; the share of such responses is logged as responses/unfinished either way)
    unfinished_penalty: float = 0.0
    tensorboard: bool = True
    progress: bool = True

    # the valid range of every numeric field (of each element for lists and dicts); NaN/inf never
    RANGES: ClassVar[dict[str, Range]] = {
        "importance": NON_NEGATIVE, "piecewise_delta": UNIT, "prompt_mix": UNIT, "heldout_fraction": FRACTION,
        "iterations": COUNT, "experience_size": COUNT, "minibatch_size": COUNT, "epochs_per_iteration": COUNT,
        "max_new_tokens": COUNT, "max_prompt_tokens": COUNT, "temperature": POSITIVE, "top_p": OPEN_UNIT,
        "top_k": Range(0), "kl_beta": NON_NEGATIVE, "apa_lambda": POSITIVE, "ppo_clip": POSITIVE,
        "gamma": UNIT, "gae_lambda": UNIT, "value_coef": NON_NEGATIVE,
        "logit_eps": Range(0.0, 0.5, low_open=True, high_open=True), "gapo_p": Range(1, 2),
        "lr": POSITIVE, "critic_lr": POSITIVE, "weight_decay": NON_NEGATIVE, "adam_betas": FRACTION,
        "adam_eps": POSITIVE, "clip_norm": POSITIVE, "seed": SEED, "save_every": Range(0),
        "max_bad_updates": COUNT, "unfinished_penalty": NON_NEGATIVE,
    }

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.minibatch_size > self.experience_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) > experience_size "
                             f"({self.experience_size})")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.gapo_p not in (1, 2):
            raise ValueError(f"gapo_p must be 1 or 2, got {self.gapo_p}")
        if len(self.objectives) < 1:
            raise ValueError("at least one objective is needed")
        if self.algo not in SINGLE_OBJECTIVE_ALGOS and len(self.objectives) < 2:
            raise ValueError(f"algo {self.algo!r} is multi-objective and needs >= 2 objectives")
        if self.importance is not None:
            if len(self.importance) != len(self.objectives):
                raise ValueError(f"importance has {len(self.importance)} values for "
                                 f"{len(self.objectives)} objectives")
            if any(w < 0 for w in self.importance) or sum(self.importance) <= 0:
                raise ValueError(f"importance must be non-negative with a positive sum, got {self.importance}")
        missing = set(self.prompt_mix) - set(self.prompts)
        if missing:
            raise ValueError(f"prompt_mix names pools {sorted(missing)} not in prompts {sorted(self.prompts)}")
        if abs(sum(self.prompt_mix.values()) - 1.0) > 1e-6:
            raise ValueError(f"prompt_mix proportions must sum to 1, got {sum(self.prompt_mix.values())}")
        if self.gradient_mode == "fast" and self.modulate_critic:
            raise ValueError("gradient_mode=fast modulates the policy only; set modulate_critic=false")

    # --- derived settings -------------------------------------------------------------------
    @property
    def multi_objective(self) -> bool:
        return self.algo not in SINGLE_OBJECTIVE_ALGOS

    @property
    def policy_loss(self) -> str:
        if self.loss != "auto":
            return self.loss
        return "ppo" if self.algo in ("gapo", "pgapo") else "apa"

    @property
    def beta(self) -> float:
        if self.kl_beta is not None:
            return self.kl_beta
        return 0.05 if self.policy_loss == "ppo" else 0.01

    @property
    def gradient_method(self) -> str | None:
        """Name of the weighting in molma.gradients (None for single-objective baselines)."""
        if not self.multi_objective:
            return None
        return {"molma": "aligned-mtl"}.get(self.algo, self.algo)

    @property
    def scalarization(self) -> str | None:
        return {
            "so-help": f"single:{self.help_objective}",
            "so-safe": f"single:{self.safe_objective}",
            "so-weighted": "weighted",
            "so-piecewise": "piecewise",
        }.get(self.algo)
