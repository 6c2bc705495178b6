"""Configuration of the multi-objective RL trainer (defaults: MOLMA paper section 4.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from molma.config import check_range
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
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check_range("iterations", self.iterations, low=1)
        check_range("experience_size", self.experience_size, low=1)
        check_range("minibatch_size", self.minibatch_size, low=1)
        if self.minibatch_size > self.experience_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) > experience_size "
                             f"({self.experience_size})")
        check_range("epochs_per_iteration", self.epochs_per_iteration, low=1)
        check_range("max_new_tokens", self.max_new_tokens, low=1)
        check_range("lr", self.lr, low=0.0, low_open=True)
        check_range("apa_lambda", self.apa_lambda, low=0.0, low_open=True)
        check_range("gamma", self.gamma, low=0.0, high=1.0)
        check_range("gae_lambda", self.gae_lambda, low=0.0, high=1.0)
        check_range("heldout_fraction", self.heldout_fraction, low=0.0, high=1.0, high_open=True)
        check_range("temperature", self.temperature, low=0.0, low_open=True)
        if self.kl_beta is not None:
            check_range("kl_beta", self.kl_beta, low=0.0)
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
