"""Configuration of the multi-objective RL trainer (defaults: MOLMA paper section 4.3)."""

from __future__ import annotations

import warnings
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
from molma.hub import check_repo_id
from molma.models import LoraSettings
from molma.tracking import normalize_report_to

SINGLE_OBJECTIVE_ALGOS = ("so-help", "so-safe", "so-weighted", "so-piecewise")
#: TRL's scalarised multi-reward GRPO (trl 1.16 ``GRPOConfig.multi_objective_aggregation``), always loss grpo
TRL_ALGOS = {"trl-grpo-sum": "sum_then_normalize", "trl-grpo-norm": "normalize_then_sum"}
#: Safe RLHF's PPO-Lagrangian (Dai et al. 2023): reward subject to an expected cost <= cost_limit
LAGRANGIAN_ALGOS = ("safe-rlhf",)
#: the policy losses; grpo and rloo need no critic
LOSSES = ("apa", "ppo", "grpo", "rloo")
CRITIC_FREE_LOSSES = ("grpo", "rloo")
#: named loss presets (any ``<algo>-<loss>`` works, e.g. ``mgda-rloo``; these are the ones the docs name)
LOSS_PRESETS = ("molma-grpo", "molma-rloo", "gapo-grpo", "pgapo-grpo", "so-weighted-grpo", "so-help-grpo",
                "so-safe-grpo", "safe-rlhf-grpo")
PRESET_ALGOS = ("molma", "gapo", "pgapo", *SINGLE_OBJECTIVE_ALGOS, *TRL_ALGOS, *LAGRANGIAN_ALGOS, *LOSS_PRESETS)


def split_algo(algo: str) -> tuple[str, str | None]:
    """``"molma-grpo"`` -> ``("molma", "grpo")``: an algorithm name may end in ``-<loss>`` (apa, ppo, grpo,
    rloo), which fixes the policy loss; ``("molma", None)`` for a plain name. ``trl-grpo-*`` are names of
    their own (their loss is grpo)."""
    if algo in TRL_ALGOS:
        return algo, "grpo"
    base, _, suffix = algo.rpartition("-")
    if base and suffix in LOSSES:
        return base, suffix
    return algo, None


def resolve_loss(algo: str, loss: str = "auto") -> str:
    """The policy loss a run of ``algo`` with config ``loss`` uses: an ``-<loss>`` suffix of the name or
    the ``loss`` key; ``auto``: ppo for gapo / pgapo (GAPO paper) and safe-rlhf (Dai et al. 2023's
    PPO-Lagrangian), grpo for trl-grpo-*, apa otherwise (MOLMA)."""
    base, fixed = split_algo(algo)
    if fixed is not None:
        return fixed
    if loss != "auto":
        return loss
    return "ppo" if base in ("gapo", "pgapo", *LAGRANGIAN_ALGOS) else "apa"


def default_beta(loss: str) -> float:
    """kl_beta when the config leaves it None: 0.01 with APA (MOLMA paper), 0.05 with PPO (GAPO Table 2),
    0.04 with GRPO / RLOO (Shao et al. 2024, DeepSeekMath section 4.2)."""
    return {"apa": 0.01, "ppo": 0.05}.get(loss, 0.04)


@dataclass
class TrainConfig:
    """One RL fine-tuning run.

    ``algo``: ``molma`` (APA + Aligned-MTL), ``gapo`` / ``pgapo`` (PPO + GAPO / P-GAPO weighting),
    ``so-help`` / ``so-safe`` / ``so-weighted`` / ``so-piecewise`` (single-objective baselines on the
    same loop), the name of any gradient method of :mod:`molma.gradients` (MO with that method),
    ``trl-grpo-sum`` / ``trl-grpo-norm`` (TRL's scalarised multi-reward GRPO) or ``safe-rlhf``
    (PPO-Lagrangian). Any of them may end in ``-apa`` / ``-ppo`` / ``-grpo`` / ``-rloo`` to fix the loss
    (``molma-grpo``: K GRPO losses combined by Aligned-MTL).
    """

    # molma | gapo | pgapo | so-help | so-safe | so-weighted | so-piecewise | mgda | ... | trl-grpo-sum |
    # trl-grpo-norm | safe-rlhf, optionally with a loss suffix: molma-grpo, gapo-grpo, so-weighted-grpo, ...
    algo: str = "molma"
    model: str = "smollm2-135m-instruct"  # policy: the builtin SmolLM2, a hub id or a local folder
    # objective name -> reward-model folder or rule ("rule:length", ...), in order
    objectives: dict[str, str] = field(default_factory=lambda: {"help": "runs/rm-help", "safe": "runs/rm-safe"})
    # task importance w (molma / any method), preference lambda (pgapo), weights (so-weighted); None = equal
    importance: list[float] | None = None
    help_objective: str = "help"  # the objective so-help optimises (and so-piecewise weighs; safe-rlhf's reward)
    # the objective so-safe optimises (so-piecewise: the safety term; safe-rlhf: cost = - its score)
    safe_objective: str = "safe"
    piecewise_delta: float = 0.15  # so-piecewise (eq. 4.2): below this safety probability, safety is the reward
    # --- safe-rlhf (Dai et al. 2023): maximise help_objective subject to E[cost] <= cost_limit
    # the objective whose score is the cost (higher = less safe); None: cost = - the score of safe_objective
    cost_objective: str | None = None
    cost_limit: float = 0.0  # the threshold d on the mean cost of an iteration's responses (safe-rlhf: 0)
    lambda_init: float = 1.0  # initial Lagrange multiplier (safe-rlhf's lambda_init)
    lambda_lr: float = 0.1  # dual-ascent learning rate of log(lambda) (safe-rlhf's lambda_lr)
    lambda_max: float | None = None  # upper bound on lambda (None: 1e6)
    # prompt pools: tag -> source ("builtin:help", a file, a hub dataset), and their mixing proportions
    prompts: dict[str, str] = field(default_factory=lambda: {"help": "builtin:help", "safe": "builtin:safe"})
    prompt_mix: dict[str, float] = field(default_factory=lambda: {"help": 0.6, "safe": 0.4})  # shares, sum 1
    # dialogue prompts (HH-RLHF): keep only the first Human turn (the red-teaming request) and drop repeated
    # ones, so no held-out prompt is also a training prompt; true: every pool, or a list of pool names
    # (plain prompts are unchanged either way); false: the whole context up to the judged Assistant turn
    first_turn: bool | list[str] = False
    heldout_fraction: float = 0.2  # of each pool, never trained on (evaluation prompts)
    iterations: int = 100  # rollout + update rounds
    experience_size: int = 64  # rollouts per iteration (global, over all processes)
    minibatch_size: int = 8  # rollouts per gradient step (global)
    epochs_per_iteration: int = 1  # passes over each iteration's experience
    # --- generation
    max_new_tokens: int = 48  # response length cap (tokens)
    max_prompt_tokens: int = 256  # longer prompts lose their start (counted as prompts/truncated)
    temperature: float = 1.0  # sampling temperature of rollouts
    top_p: float = 1.0  # nucleus sampling (1: off)
    top_k: int = 0  # top-k sampling (0: off)
    # --- losses
    # apa | ppo (a critic, GAE) | grpo | rloo (no critic: group baselines); auto: ppo for gapo / pgapo (GAPO
    # paper) and safe-rlhf, grpo for trl-grpo-*, apa otherwise; an algo name ending in -<loss> fixes it
    loss: Literal["auto", "apa", "ppo", "grpo", "rloo"] = "auto"
    # None: 0.01 with APA (MOLMA paper), 0.05 with PPO (GAPO Table 2), 0.04 with GRPO / RLOO (DeepSeekMath)
    kl_beta: float | None = None
    # where the KL to the reference enters: reward (beta * (log pi_old - log pi_ref) subtracted from the reward:
    # per token for apa / ppo, eq. 3.3, the only choice there; summed per sequence for grpo / rloo, as TRL's
    # RLOO does) or loss (beta * the k3 estimator added to every objective's token loss, GRPO eq. 3, TRL's
    # GRPO; grpo / rloo only); auto: loss for grpo (Shao et al. 2024), reward for the others (Ahmadian et al.)
    kl_penalty: Literal["auto", "loss", "reward"] = "auto"
    # responses sampled per prompt, next to each other in the experience (experience_size must be a multiple);
    # grpo / rloo compare each response with the others of its group; None: 4 for grpo / rloo, 1 otherwise
    group_size: int | None = None
    group_clip: float = 0.2  # clip range of the grpo / rloo surrogate (TRL's epsilon, 0.2)
    apa_lambda: float = 0.95  # APA's lambda (eq. 3.5)
    ppo_clip: float = 0.1  # PPO clip range (loss: ppo)
    gamma: float = 1.0  # discount of GAE
    gae_lambda: float = 0.95  # lambda of GAE
    # normalise the GAE advantages (apa / ppo) per objective within each iteration; grpo / rloo advantages are
    # group-normalised already and left as they are
    whiten_advantages: bool = False
    value_coef: float = 1.0  # weight of the critic's value loss
    logit_eps: float = 1e-6  # LOGIT shaping clamps probabilities to [eps, 1 - eps]
    # --- gradient combination
    # exact: K full gradients; fast: Gramian at the per-token log-probs, one backward; subset: Gramian
    # from the last transformer block's trainable parameters only (GAPO's memory saver), one backward
    gradient_mode: Literal["exact", "fast", "subset"] = "exact"
    # exact mode's K vector-Jacobian products: loop (K autograd.grad calls through the one graph) or batched
    # (one call, vmapped over the K cotangents; falls back to the loop with a warning where an op has no
    # batching rule); the gradients are the same
    gradient_vjp: Literal["loop", "batched"] = "loop"
    gapo_p: int = 2  # GAPO's gradient rescaling power (1 or 2)
    modulate_critic: bool = False  # True: L_k = APA_k + value_k is modulated (Algorithm 1 verbatim)
    # --- optimisation (paper: AdamW 0.9/0.95, eps 1e-5, wd 0.1, clip 1.0, lr 1e-6 constant)
    lr: float = 1e-6  # policy learning rate (constant)
    critic_lr: float | None = None  # critic learning rate (None: lr)
    weight_decay: float = 0.1  # AdamW weight decay
    adam_betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    adam_eps: float = 1e-5  # AdamW eps
    clip_norm: float | None = 1.0  # gradient-norm clip of policy and critic apart (None: off)
    lora: LoraSettings | None = None  # LoRA adapters (e.g. {r: 8, alpha: 16}); None: full fine-tuning
    critic_backbone: Literal["trainable", "frozen"] = "trainable"  # critic: own decoder, or heads on the reference
    # --- run
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
    seed: int = 0  # sampling, prompt batches and the held-out split
    out: str = "runs/molma"  # run folder (metrics.jsonl, config.yaml, checkpoints/, final/)
    save_every: int = 10  # checkpoint every N iterations and at the last (0: no checkpoints)
    max_bad_updates: int = 5  # skipped (non-finite) updates in a row that stop the run
    # subtracted from every objective's raw score of a response cut at max_new_tokens without a stop token
    # (0: none; the share of such responses is logged as responses/unfinished either way)
    unfinished_penalty: float = 0.0
    # where metrics go besides metrics.jsonl: tensorboard (OUT/tensorboard/), wandb (needs the wandb
    # package; project $WANDB_PROJECT, default molma), none, or a list such as [tensorboard, wandb]
    report_to: str | list[str] = "tensorboard"
    tensorboard: bool | None = None  # deprecated: report_to; false drops tensorboard from report_to
    # upload final/ to this Hugging Face Hub repository (OWNER/NAME) when training ends; needs a token
    push_to_hub: str | None = None
    progress: bool = True  # progress bar

    # the valid range of every numeric field (of each element for lists and dicts); NaN/inf never
    RANGES: ClassVar[dict[str, Range]] = {
        "importance": NON_NEGATIVE, "piecewise_delta": UNIT, "prompt_mix": UNIT, "heldout_fraction": FRACTION,
        "iterations": COUNT, "experience_size": COUNT, "minibatch_size": COUNT, "epochs_per_iteration": COUNT,
        "max_new_tokens": COUNT, "max_prompt_tokens": COUNT, "temperature": POSITIVE, "top_p": OPEN_UNIT,
        "top_k": Range(0), "kl_beta": NON_NEGATIVE, "group_size": COUNT, "group_clip": POSITIVE,
        "cost_limit": Range(-1e6, 1e6), "lambda_init": POSITIVE, "lambda_lr": POSITIVE, "lambda_max": POSITIVE,
        "apa_lambda": POSITIVE, "ppo_clip": POSITIVE,
        "gamma": UNIT, "gae_lambda": UNIT, "value_coef": NON_NEGATIVE,
        "logit_eps": Range(0.0, 0.5, low_open=True, high_open=True), "gapo_p": Range(1, 2),
        "lr": POSITIVE, "critic_lr": POSITIVE, "weight_decay": NON_NEGATIVE, "adam_betas": FRACTION,
        "adam_eps": POSITIVE, "clip_norm": POSITIVE, "seed": SEED, "save_every": Range(0),
        "max_bad_updates": COUNT, "unfinished_penalty": NON_NEGATIVE,
    }

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.tensorboard is not None:  # the deprecated switch, folded into report_to
            warnings.warn("TrainConfig: 'tensorboard' is deprecated, use report_to (tensorboard | wandb | none "
                          "or a list)", FutureWarning, stacklevel=3)
            backends = normalize_report_to(self.report_to)
            if self.tensorboard and "tensorboard" not in backends:
                backends.append("tensorboard")
            elif not self.tensorboard:
                backends = [b for b in backends if b != "tensorboard"]
            self.report_to = backends or "none"
        normalize_report_to(self.report_to)
        if self.push_to_hub is not None:
            check_repo_id(self.push_to_hub)
        if isinstance(self.first_turn, list) and set(self.first_turn) - set(self.prompts):
            raise ValueError(f"first_turn names pools {sorted(set(self.first_turn) - set(self.prompts))} not in "
                             f"prompts {sorted(self.prompts)}")
        if self.minibatch_size > self.experience_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) > experience_size "
                             f"({self.experience_size})")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.gapo_p not in (1, 2):
            raise ValueError(f"gapo_p must be 1 or 2, got {self.gapo_p}")
        if len(self.objectives) < 1:
            raise ValueError("at least one objective is needed")
        self._check_algo()
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
        self._check_loss()

    def _check_algo(self) -> None:
        base, fixed = split_algo(self.algo)
        if fixed is not None and self.loss not in ("auto", fixed):
            raise ValueError(f"algo {self.algo!r} fixes the loss to {fixed}, but loss is {self.loss!r} (drop one)")
        if base in LAGRANGIAN_ALGOS:
            cost = self.cost_objective or self.safe_objective
            for key, name in (("help_objective", self.help_objective),
                              ("cost_objective" if self.cost_objective else "safe_objective", cost)):
                if name not in self.objectives:
                    raise ValueError(f"algo {self.algo!r}: {key} {name!r} is not among the objectives "
                                     f"{sorted(self.objectives)}")
            if cost == self.help_objective:
                raise ValueError(f"algo {self.algo!r}: the reward ({self.help_objective!r}) and the cost objective "
                                 "must differ")
            if self.lambda_max is not None and self.lambda_max < self.lambda_init:
                raise ValueError(f"lambda_max ({self.lambda_max}) < lambda_init ({self.lambda_init})")
        elif self.multi_objective and len(self.objectives) < 2:
            raise ValueError(f"algo {self.algo!r} is multi-objective and needs >= 2 objectives")
        if self.cost_objective is not None and self.cost_objective not in self.objectives:
            raise ValueError(f"cost_objective {self.cost_objective!r} is not among the objectives "
                             f"{sorted(self.objectives)}")

    def _check_loss(self) -> None:
        loss = self.policy_loss
        if loss in CRITIC_FREE_LOSSES:
            if self.group_samples < 2:
                raise ValueError(f"loss {loss} compares each response with the others of its prompt's group: "
                                 f"group_size must be >= 2, got {self.group_samples}")
            if self.modulate_critic:
                raise ValueError(f"loss {loss} has no critic: set modulate_critic=false")
        elif self.kl_penalty == "loss":
            raise ValueError(f"kl_penalty=loss (k3 in the loss) needs loss grpo or rloo; loss {loss} takes the KL "
                             "in the reward (kl_penalty: reward or auto)")
        if self.base_algo in TRL_ALGOS and self.kl_placement != "loss":
            raise ValueError(f"algo {self.algo!r}: TRL's GRPO adds the KL to the loss; kl_penalty must be loss or auto")
        if self.experience_size % self.group_samples:
            raise ValueError(f"experience_size ({self.experience_size}) must be a multiple of group_size "
                             f"({self.group_samples}): each prompt's group of responses stays whole")

    # --- derived settings -------------------------------------------------------------------
    @property
    def base_algo(self) -> str:
        """The algorithm without its loss suffix (``molma-grpo`` -> ``molma``)."""
        return split_algo(self.algo)[0]

    @property
    def multi_objective(self) -> bool:
        """K losses combined by a gradient method (False: one loss from a scalarised reward)."""
        return self.base_algo not in (*SINGLE_OBJECTIVE_ALGOS, *TRL_ALGOS, *LAGRANGIAN_ALGOS)

    @property
    def policy_loss(self) -> str:
        return resolve_loss(self.algo, self.loss)

    @property
    def needs_critic(self) -> bool:
        """apa / ppo learn values (GAE); grpo / rloo take baselines from the group and build no critic."""
        return self.policy_loss not in CRITIC_FREE_LOSSES

    @property
    def group_samples(self) -> int:
        """Responses per prompt (``group_size``; None: 4 for grpo / rloo, 1 for apa / ppo)."""
        if self.group_size is not None:
            return self.group_size
        return 4 if self.policy_loss in CRITIC_FREE_LOSSES else 1

    @property
    def kl_placement(self) -> str:
        """``loss`` (k3 penalty in the policy loss) or ``reward`` (subtracted from the rewards)."""
        if self.kl_penalty != "auto":
            return self.kl_penalty
        return "loss" if self.policy_loss == "grpo" else "reward"

    @property
    def beta(self) -> float:
        if self.kl_beta is not None:
            return self.kl_beta
        return default_beta(self.policy_loss)

    @property
    def gradient_method(self) -> str | None:
        """Name of the weighting in molma.gradients (None for single-objective baselines)."""
        if not self.multi_objective:
            return None
        return {"molma": "aligned-mtl"}.get(self.base_algo, self.base_algo)

    @property
    def scalarization(self) -> str | None:
        base = self.base_algo
        if base in TRL_ALGOS:
            return f"trl:{TRL_ALGOS[base]}"
        if base in LAGRANGIAN_ALGOS:
            return "lagrangian"
        return {
            "so-help": f"single:{self.help_objective}",
            "so-safe": f"single:{self.safe_objective}",
            "so-weighted": "weighted",
            "so-piecewise": "piecewise",
        }.get(base)


#: Keys of a run's ``config.yaml`` besides the TrainConfig fields: ``threads`` (torch CPU threads) and
#: ``processes`` (the process count the trainer records; torchrun / accelerate launch set the real one).
RUN_CONFIG_EXTRA_KEYS = ("threads", "processes")


def load_run_config(path) -> TrainConfig:
    """A training run's saved ``config.yaml`` as a :class:`TrainConfig` (the keys of
    :data:`RUN_CONFIG_EXTRA_KEYS` left out): the one reader for ``heldout:RUN`` prompts and the experiment's
    cost summary. ``molma train --config`` reads the same file with the same extra keys, acting on them."""
    from molma.config import load_config

    with warnings.catch_warnings():  # a run written before report_to still names 'tensorboard'
        warnings.simplefilter("ignore", FutureWarning)
        return load_config(TrainConfig, path, extra_keys=RUN_CONFIG_EXTRA_KEYS)
