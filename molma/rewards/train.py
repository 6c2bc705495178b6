"""Reward-model training (section 3.2): a transformer whose language-modelling head is replaced by a
scalar head, trained on preference pairs with the binary ranking loss of eq. 3.2,
``-log(sigmoid(r(x, y_c) - r(x, y_r)))``.

The loop is TRL's :class:`~trl.RewardTrainer`: its collator puts chosen and rejected responses in one
batch (one forward pass), and its loss is eq. 3.2. We feed it pre-tokenised ids (our rendering and
left-truncation, shared with the scorer), our AdamW with the paper's settings (parameter groups so the
fresh head may use its own learning rate), a NaN guard and compact logs. The result is a plain Hugging
Face sequence-classification checkpoint (num_labels = 1, LoRA merged, tokenizer + chat template,
``pad_token_id`` set) plus ``molma_rm.json`` with the training metadata, ``README.md`` (a model card) and
``molma_rm_train_pairs.json`` (hashes of the training pairs, for ``molma rm eval``'s overlap check). The
saved chat template renders exactly the text the model was trained on
(:func:`molma.rewards.model.make_template_plain_compatible`), so plain transformers
(``apply_chat_template`` + ``AutoModelForSequenceClassification``, or a ``text-classification`` pipeline,
which returns the raw score: ``problem_type`` is ``regression``) scores as molma does.

Defaults follow the paper (section 4.3): AdamW beta1 0.9, beta2 0.95, eps 1e-5, gradient clipping 1.0,
learning rate 1e-5 with cosine decay to 10 %, weight decay 0, batch size 28, one epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from molma.atomic import atomic_folder
from molma.config import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SEED, UNIT, Range, check_ranges, to_dict
from molma.data.records import PreferencePair
from molma.environment import package_versions
from molma.models import DEFAULT_MODEL, LoraSettings
from molma.rewards.data import TRAINING_PAIRS_FILE, load_pairs, training_record, validate_pairs
from molma.rewards.model import (
    METADATA_FILE,
    RewardModel,
    encode_dialogues,
    make_template_plain_compatible,
    scoring_record,
)
from molma.rewards.trunk import cached_trunk

log = logging.getLogger(__name__)


@dataclass
class RewardTrainConfig:
    """Everything ``molma rm train`` needs; YAML keys and ``key=value`` overrides use these names."""

    objective: str = "help"
    """Objective name (help, safe or any other); names the model and resolves ``data: builtin``."""
    data: str = "builtin"
    """Training pairs: a path / ``builtin`` / ``builtin:help`` / ``hub:...``, optional ``[start:stop]``."""
    base: str = DEFAULT_MODEL
    """Backbone: builtin ``smollm2-135m-instruct``, a hub id or a local folder (causal LM or encoder)."""
    output_dir: str | None = None
    """Checkpoint folder; default ``runs/rm-<objective>``."""
    data_format: str = "auto"  # format of data: auto (from the fields), hh, pku, shp or columns
    limit: int | None = None
    """Use at most this many pairs (after slicing)."""
    skip_invalid: bool = False
    """Skip bad pairs (with a warning) instead of stopping at the first one."""
    eval_data: str | None = None
    """Held-out pairs for the final accuracy; when None, ``eval_fraction`` of ``data`` is held out."""
    eval_fraction: float = 0.1  # share of data held out for the final accuracy (when eval_data is None)
    max_length: int = 512
    """Tokens per dialogue; longer ones lose the start of the prompt (the response is kept)."""

    finetune: Literal["full", "lora"] = "full"  # train all weights, or LoRA adapters (see lora)
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters (``finetune: lora``); merged into the weights when saving."""
    num_layers: int | None = None
    """Keep only the bottom N transformer layers of the base (a smaller, faster reward model)."""
    train_top_layers: int | None = None
    """Train only the top N transformer layers (+ final norm and head); embeddings and lower layers are
    frozen. With LoRA, adapters go on those layers only. None = all layers."""

    epochs: float = 1.0  # passes over the training pairs (paper: 1)
    batch_size: int = 28  # pairs per step (paper: 28)
    gradient_accumulation_steps: int = 1  # batches summed per optimizer step
    learning_rate: float = 1e-5  # peak learning rate, cosine decay to min_lr_ratio of it (paper: 1e-5)
    head_learning_rate: float | None = None
    """Learning rate of the freshly initialised scalar head (None = ``learning_rate``)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at this fraction of the learning rate."""
    warmup_ratio: float = 0.0  # linear warm-up (fraction of the steps)
    weight_decay: float = 0.0  # AdamW weight decay (paper: 0)
    adam_beta1: float = 0.9  # AdamW beta1 (paper: 0.9)
    adam_beta2: float = 0.95  # AdamW beta2 (paper: 0.95)
    adam_epsilon: float = 1e-5  # AdamW eps (paper: 1e-5)
    max_grad_norm: float = 1.0  # gradient-norm clipping (paper: 1.0)
    center_rewards_coefficient: float | None = None
    """Optional penalty pushing mean rewards to 0 (TRL; e.g. 0.01). Not in the paper."""
    gradient_checkpointing: bool = False  # recompute activations: less memory, slower
    group_by_length: bool = True
    """Batch pairs of similar length together (random order of batches): much less padding on CPU."""
    seed: int = 0  # data order, held-out split, head initialisation
    device: str = "cpu"  # cpu or cuda
    precision: str = "auto"
    """Mixed precision of training forwards (auto: bf16 where the hardware has it); weights stay float32."""
    logging_steps: int = 10  # steps between log lines (and report_to points)
    report_to: str | list[str] = "none"
    """Where training logs go besides the console: tensorboard (``OUTPUT_DIR/tensorboard/``), wandb (needs
    the wandb package), none, or a list such as ``[tensorboard, wandb]``."""
    push_to_hub: str | None = None
    """Upload the saved reward model to this Hugging Face Hub repository (OWNER/NAME); needs a token."""

    # the valid range of every numeric field; NaN and inf never
    RANGES: ClassVar[dict[str, Range]] = {
        "limit": COUNT, "eval_fraction": FRACTION, "max_length": Range(8), "num_layers": COUNT,
        "train_top_layers": COUNT, "epochs": POSITIVE, "batch_size": COUNT, "gradient_accumulation_steps": COUNT,
        "learning_rate": POSITIVE, "head_learning_rate": POSITIVE, "min_lr_ratio": UNIT, "warmup_ratio": FRACTION,
        "weight_decay": NON_NEGATIVE, "adam_beta1": FRACTION, "adam_beta2": FRACTION, "adam_epsilon": POSITIVE,
        "max_grad_norm": POSITIVE, "center_rewards_coefficient": NON_NEGATIVE, "seed": SEED,
        "logging_steps": COUNT,
    }

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if not self.objective.strip():
            raise ValueError("objective must not be empty")
        check_ranges(self)
        from molma.hub import check_repo_id
        from molma.tracking import normalize_report_to

        normalize_report_to(self.report_to)
        if self.push_to_hub is not None:
            check_repo_id(self.push_to_hub)
        if None not in (self.train_top_layers, self.num_layers) and self.train_top_layers > self.num_layers:
            raise ValueError(f"train_top_layers ({self.train_top_layers}) > num_layers ({self.num_layers})")

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir or f"runs/rm-{self.objective}")


# ----------------------------------------------------------------------------------------- the model


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report (the new head and dropped layers are reported by us)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def transformer_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The (name, ModuleList) of the transformer blocks (:func:`molma.models.named_transformer_blocks`)."""
    from molma.models.blocks import named_transformer_blocks

    found = named_transformer_blocks(model)
    if found is None:
        raise ValueError(f"cannot find the transformer layers of {type(model).__name__}")
    return found


def head_modules(model: torch.nn.Module) -> list[str]:
    """Names of the top-level modules outside the backbone that hold parameters (``score``,
    ``classifier``, ``pooler``): the freshly initialised reward head."""
    prefix = getattr(model, "base_model_prefix", "model")
    return [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]


def build_reward_model(config: RewardTrainConfig) -> tuple[Any, Any]:
    """Load ``config.base`` as a sequence-classification model with one output (the LM head is dropped,
    a new scalar head is initialised from ``config.seed``), optionally cut to ``num_layers`` layers, with
    ``train_top_layers`` / LoRA applied. Returns ``(model, tokenizer)``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from molma.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(config.base)
    tokenizer = load_tokenizer(config.base)
    hf_config = AutoConfig.from_pretrained(path)
    hf_config.num_labels = 1
    text_config = hf_config.get_text_config()
    total = getattr(text_config, "num_hidden_layers", None)
    if config.num_layers is not None:
        if total is None:
            raise ValueError(f"num_layers: {config.base} has no num_hidden_layers in its config")
        if config.num_layers > total:
            raise ValueError(f"num_layers={config.num_layers} but {config.base} has only {total} layers")
        text_config.num_hidden_layers = config.num_layers
        if isinstance(getattr(text_config, "layer_types", None), list):
            text_config.layer_types = text_config.layer_types[:config.num_layers]
    text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(config.seed)
    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(path, config=hf_config,
                                                                   dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    layers_name, layers = transformer_layers(model)
    n_layers = len(layers)
    heads = head_modules(model)
    log.info("reward model: %s as %s with %d layer(s)%s, new scalar head %s", config.base,
             type(model).__name__, n_layers, f" (of {total})" if config.num_layers else "", heads)
    top = config.train_top_layers
    if top is not None and top > n_layers:
        raise ValueError(f"train_top_layers={top} but the model has {n_layers} layers")
    first_trained = n_layers - top if top is not None else 0

    if config.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        targets: str | list[str] = lora.target_modules
        if top is not None:  # adapters on the top layers only: name their linear modules one by one
            wanted = None if targets == "all-linear" else targets
            if isinstance(wanted, str):
                raise ValueError("train_top_layers with LoRA needs lora.target_modules 'all-linear' or a "
                                 f"list of module names, got the pattern {wanted!r}")
            targets = [f"{layers_name}.{i}.{name}" for i in range(first_trained, n_layers)
                       for name, mod in layers[i].named_modules()
                       if isinstance(mod, torch.nn.Linear)
                       and (wanted is None or name.split(".")[-1] in wanted)]
            if not targets:
                raise ValueError(f"lora.target_modules {lora.target_modules!r} match nothing in the top "
                                 "layers")
        peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=targets, task_type="SEQ_CLS", modules_to_save=heads)
        model = get_peft_model(model, peft_config)
    elif top is not None:
        frozen_prefixes = tuple(f"{layers_name}.{i}." for i in range(first_trained))
        for name, param in model.named_parameters():
            in_frozen_layer = name.startswith(frozen_prefixes)
            is_embedding = any(k in name for k in ("embed", ".wte.", ".wpe."))
            param.requires_grad_(not (in_frozen_layer or is_embedding))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %s of %s (%.1f %%)%s", f"{n_train:,}", f"{n_all:,}",
             100 * n_train / n_all,
             f"; layers {first_trained}..{n_layers - 1} train" if top is not None else "")
    return model, tokenizer


def make_optimizer(model: torch.nn.Module, config: RewardTrainConfig) -> torch.optim.Optimizer:
    """AdamW (betas, eps from the config) over trainable parameters; the scalar head may get
    ``head_learning_rate``; weight decay only on matrices (not biases or norms)."""
    heads = tuple(head_modules(model.base_model.model if hasattr(model, "peft_config") else model))
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        parts = name.split(".")
        is_head = any(h in parts for h in heads) and "lora_A" not in parts and "lora_B" not in parts
        groups.setdefault((is_head, param.ndim >= 2), []).append(param)
    head_lr = config.head_learning_rate or config.learning_rate
    param_groups = [
        {"params": params, "lr": head_lr if is_head else config.learning_rate,
         "weight_decay": config.weight_decay if decay else 0.0}
        for (is_head, decay), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=config.learning_rate,
                             betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
                             weight_decay=config.weight_decay)


# ------------------------------------------------------------------------------------------- the loop


def _trainer_classes():
    """Our small RewardTrainer subclass and log callback (built lazily: importing trl takes seconds)."""
    from transformers.trainer_callback import ProgressCallback
    from trl import RewardTrainer

    class GuardedRewardTrainer(RewardTrainer):
        """TRL's RewardTrainer (eq. 3.2 on a chosen+rejected batch) that stops on a non-finite loss and
        tracks per-epoch training accuracy."""

        objective_name = "reward"

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if not torch.isfinite(loss).all():
                raise FloatingPointError(
                    f"reward model {self.objective_name!r}: non-finite loss {loss.item()} at step "
                    f"{self.state.global_step} (epoch {self.state.epoch or 0:.2f}); lower learning_rate "
                    "or check the data")
            if model.training:
                chosen, rejected = torch.chunk(outputs.logits.detach().squeeze(-1), 2)
                epoch = int(self.state.epoch or 0)
                stats = self.epoch_correct.setdefault(epoch, [0, 0])
                stats[0] += int((chosen > rejected).sum())
                stats[1] += int(chosen.numel())
            return (loss, outputs) if return_outputs else loss

    class LogLine(ProgressCallback):
        """Progress bar plus one readable line per logging step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or self.training_bar is None or not logs:
                return
            for key in ("loss", "grad_norm"):
                value = logs.get(key)
                if value is not None and not math.isfinite(value):
                    raise FloatingPointError(f"non-finite {key} {value} at step {state.global_step}")
            if "loss" not in logs:
                return
            parts = [f"step {state.global_step}/{state.max_steps}", f"epoch {logs.get('epoch', 0):.2f}",
                     f"loss {logs['loss']:.4f}"]
            for key, fmt in (("accuracy", "acc {:.3f}"), ("margin", "margin {:+.3f}"),
                             ("grad_norm", "|g| {:.3g}"), ("learning_rate", "lr {:.2e}")):
                if key in logs:
                    parts.append(fmt.format(logs[key]))
            self.training_bar.write("  ".join(parts))

    return GuardedRewardTrainer, LogLine


def _split(pairs: list[PreferencePair], fraction: float,
           seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Random held-out split: at least one pair on each side when ``fraction`` > 0."""
    n_eval = int(round(len(pairs) * fraction))
    n_eval = max(1, min(n_eval, len(pairs) - 1)) if fraction > 0 and len(pairs) >= 2 else 0
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def _checkpointing_arg(args_cls: type, enabled: bool) -> dict[str, bool]:
    """Activation checkpointing flag under its current name (transformers renamed it; TRL defaults it on)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(args_cls)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: enabled}


def _sampling_arg(args_cls: type, by_length: bool) -> dict[str, Any]:
    """Length-grouped sampling (uses the dataset's ``length`` column) under its current argument name."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(args_cls)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length" if by_length else "random"}
    return {"group_by_length": by_length}


def _encode_pairs(tokenizer: Any, pairs: Sequence[PreferencePair],
                  max_length: int) -> tuple[list[list[int]], list[list[int]], int, int]:
    """Token ids of the chosen and rejected dialogues as the trainer sees them, and how many of each were
    truncated."""
    prompts = [p.prompt for p in pairs]
    chosen_ids, n_trunc_c = encode_dialogues(tokenizer, prompts, [p.chosen for p in pairs], max_length)
    rejected_ids, n_trunc_r = encode_dialogues(tokenizer, prompts, [p.rejected for p in pairs], max_length)
    return chosen_ids, rejected_ids, n_trunc_c, n_trunc_r


def _trunk_meta(model: torch.nn.Module, config: RewardTrainConfig, precision: str, depth: int) -> dict[str, Any]:
    """What trunk features depend on: the base model, a hash of the frozen trunk's weights, depth, precision."""
    import hashlib

    from molma.models.blocks import named_transformer_blocks

    digest = hashlib.sha256()
    blocks = named_transformer_blocks(model)[1]  # type: ignore[index]
    for module in (model.get_input_embeddings(), *blocks[:depth]):
        for name, param in module.named_parameters():
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return {"base": config.base, "trunk_sha256": digest.hexdigest(), "depth": depth, "precision": precision}


def write_trunk_features(config: RewardTrainConfig, pairs: Sequence[PreferencePair], path: str | Path,
                         shard: int = 0, shards: int = 1) -> Path:
    """Compute the frozen trunk's features (:mod:`molma.rewards.trunk`) of the dialogues of ``pairs`` as
    ``config`` encodes them (shard ``shard`` of ``shards`` of the distinct sequences, for processes that split
    the work) and save them to ``path``. Every seed of ``config`` shares them."""
    from molma.models.precision import resolve_precision
    from molma.rewards.trunk import compute_trunk_features, frozen_trunk_depth

    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0..{shards - 1}, got {shard}")
    pairs, _ = validate_pairs(list(pairs), skip_invalid=config.skip_invalid, where="trunk features")
    if config.limit is not None:
        pairs = pairs[:config.limit]
    # every pair, not the seed's training split: one file serves members whose eval_fraction splits differ
    model, tokenizer = build_reward_model(config)
    depth = frozen_trunk_depth(model)
    if depth is None:
        raise ValueError("trunk features need full fine-tuning of the top layers (train_top_layers below the "
                         "model's depth, finetune: full) and no dropout in the frozen layers")
    precision = resolve_precision(config.precision, "cpu" if str(config.device) == "cpu" else "cuda")
    chosen_ids, rejected_ids, _, _ = _encode_pairs(tokenizer, pairs, config.max_length)
    unique = sorted(set(map(tuple, chosen_ids + rejected_ids)))
    mine = unique[shard::shards]
    features = compute_trunk_features(model, mine, depth, tokenizer.pad_token_id, precision,
                                      batch_size=config.batch_size,
                                      meta=_trunk_meta(model, config, precision, depth))
    log.info("trunk features: %d sequences, %d tokens, depth %d -> %s", len(features), features.hidden.shape[0],
             depth, path)
    return features.save(path)


def _checked_trunk(trunk_features: Any, model: torch.nn.Module, config: RewardTrainConfig, precision: str,
                   sequences: list[list[int]]) -> Any:
    """``trunk_features`` (a :class:`~molma.rewards.trunk.TrunkFeatures` or files of them) checked against the
    model and data about to train: same base, trunk weights, depth and precision, every sequence present."""
    if trunk_features is None:
        return None
    from molma.rewards.trunk import TrunkFeatures, frozen_trunk_depth

    if not isinstance(trunk_features, TrunkFeatures):
        files = [Path(trunk_features)] if isinstance(trunk_features, (str, Path)) else list(map(Path, trunk_features))
        trunk_features = TrunkFeatures.merge([TrunkFeatures.load(f) for f in files])
    depth = frozen_trunk_depth(model)
    if depth is None:
        raise ValueError("trunk features given, but the model trains its lower layers too (train_top_layers, "
                         "finetune: full)")
    if trunk_features.depth != depth:
        raise ValueError(f"trunk features computed for other settings: a trunk of {trunk_features.depth} layers, "
                         f"this model freezes {depth}")
    wanted = _trunk_meta(model, config, precision, depth)
    if {k: trunk_features.meta.get(k) for k in wanted} != wanted:
        raise ValueError(f"trunk features computed for other settings: {trunk_features.meta} (this model: {wanted})")
    missing = trunk_features.missing(sequences)
    if missing:
        raise ValueError(f"trunk features miss {missing} of the {len(sequences)} training sequences")
    log.info("trunk features: the first %d layers' forward read from %d stored sequences", trunk_features.depth,
             len(trunk_features))
    return trunk_features


def train_reward_model(config: RewardTrainConfig, pairs: Sequence[PreferencePair] | None = None,
                       trunk_features: Any = None) -> Path:
    """Train the reward model described by ``config`` and save it; returns the output folder.

    ``pairs`` (if given) replaces ``config.data``. A held-out part (``eval_data`` or ``eval_fraction``)
    gives the final accuracy recorded in ``molma_rm.json`` beside the checkpoint. ``trunk_features`` (files
    written by :func:`write_trunk_features` for the same settings and pairs, or a
    :class:`~molma.rewards.trunk.TrunkFeatures`): the frozen layers' forward is read from them instead of run.
    """
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig

    from molma.data import DataFormatError
    from molma.logs import ensure_progress_logging
    from molma.rewards.evaluate import evaluate_reward_model
    from molma.tracking import Tracker, check_available

    ensure_progress_logging()
    t_start = time.perf_counter()
    check_available(config.report_to)  # before any data or model loads
    if config.push_to_hub:
        from molma.hub import check_token

        check_token(config.push_to_hub)
    set_seed(config.seed)
    source = "<pairs>" if pairs is not None else config.data
    try:
        if pairs is None:
            pairs = load_pairs(config.data, objective=config.objective, format=config.data_format,
                               skip_invalid=config.skip_invalid)
        n_read = len(pairs)
        pairs, n_invalid = validate_pairs(pairs, skip_invalid=config.skip_invalid, where=source)
        if config.limit is not None:
            pairs = pairs[:config.limit]
        if config.eval_data is not None:
            train_pairs = list(pairs)
            eval_pairs = validate_pairs(load_pairs(config.eval_data, objective=config.objective,
                                                   skip_invalid=config.skip_invalid),
                                        skip_invalid=config.skip_invalid, where=config.eval_data)[0]
    except DataFormatError as err:
        if config.skip_invalid:
            raise
        raise DataFormatError(f"{err.reason}; set skip_invalid=true to skip invalid pairs ('molma data inspect "
                              "FILE' lists them all)", err.path, err.line, err.field) from None
    if config.eval_data is None:
        train_pairs, eval_pairs = _split(list(pairs), config.eval_fraction, config.seed)
    log.info("objective %r: %d training pair(s), %d held out, from %s", config.objective, len(train_pairs),
             len(eval_pairs), source)

    model, tokenizer = build_reward_model(config)
    chosen_ids, rejected_ids, n_trunc_c, n_trunc_r = _encode_pairs(tokenizer, train_pairs, config.max_length)
    lengths = [len(x) for x in chosen_ids + rejected_ids]
    log.info("tokens per dialogue: mean %.0f, max %d; %d of %d truncated from the left to %d", sum(lengths) /
             len(lengths), max(lengths), n_trunc_c + n_trunc_r, len(lengths), config.max_length)
    dataset = Dataset.from_dict({"chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
                                 "length": [max(len(c), len(r)) for c, r in zip(chosen_ids, rejected_ids)]})

    out = config.output_path
    work = Path(tempfile.mkdtemp(prefix=".rm-trainer-"))
    use_cpu = str(config.device) == "cpu"
    from molma.models.precision import resolve_precision

    precision = resolve_precision(config.precision, "cpu" if use_cpu else "cuda")
    log.info("precision: %s (config: %s)", precision, config.precision)
    trunk = _checked_trunk(trunk_features, model, config, precision, chosen_ids + rejected_ids)
    args = RewardConfig(
        output_dir=str(work), num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=config.learning_rate,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
        warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay, adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2, adam_epsilon=config.adam_epsilon, max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps, save_strategy="no", eval_strategy="no", report_to="none",
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=use_cpu, max_length=None, seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        center_rewards_coefficient=config.center_rewards_coefficient, disable_tqdm=False,
        logging_nan_inf_filter=False, remove_unused_columns=False,  # the collator ignores "length"
        **_checkpointing_arg(RewardConfig, config.gradient_checkpointing),
        **_sampling_arg(RewardConfig, config.group_by_length),
    )
    Trainer, LogLine = _trainer_classes()
    from transformers.trainer_callback import ProgressCallback, TrainerCallback

    logs_dir = Path(tempfile.mkdtemp(prefix=".rm-logs-"))  # copied into the saved folder (report_to)
    tracker = Tracker(config.report_to, logs_dir / "tensorboard", run_name=f"rm-{config.objective}",
                      config=to_dict(config))

    class Track(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                tracker.log({f"train/{k}": v for k, v in logs.items()}, state.global_step)

    try:
        trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          optimizers=(make_optimizer(model, config), None))
        trainer.objective_name = config.objective
        trainer.epoch_correct = {}
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LogLine)
        if tracker:
            trainer.add_callback(Track)
        t_train = time.perf_counter()
        with cached_trunk(model, trunk) if trunk is not None else contextlib.nullcontext():
            result = trainer.train()
        train_seconds = time.perf_counter() - t_train
    except BaseException:
        tracker.close()
        shutil.rmtree(logs_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    last_epoch = max(trainer.epoch_correct) if trainer.epoch_correct else None
    train_acc = (trainer.epoch_correct[last_epoch][0] / trainer.epoch_correct[last_epoch][1]
                 if last_epoch is not None else None)
    scorer = RewardModel(model, tokenizer, name=config.objective, batch_size=max(config.batch_size, 16),
                         max_length=config.max_length, device=next(model.parameters()).device)
    eval_result = evaluate_reward_model(scorer, eval_pairs) if eval_pairs else None
    if eval_result is not None:
        log.info("held-out accuracy %.1f %% on %d pairs (ties %d), margin %+.3f +- %.3f",
                 100 * eval_result["accuracy"], eval_result["n"], eval_result["ties"],
                 eval_result["margin"]["mean"], eval_result["margin"]["std"])
        tracker.log({"eval/accuracy": eval_result["accuracy"], "eval/margin": eval_result["margin"]["mean"]},
                    trainer.state.global_step)
    tracker.close()

    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    # plain transformers gets the text molma trained on (same text for molma: its scores do not change)
    if not make_template_plain_compatible(tokenizer) and tokenizer.chat_template:
        log.warning("the chat template could not be made to render the scoring text: plain transformers needs "
                    "apply_chat_template(..., tokenize=False).rstrip() to score like molma")
    model.config.problem_type = "regression"  # a text-classification pipeline returns the raw score
    model.config.id2label = {0: config.objective}
    model.config.label2id = {config.objective: 0}
    metadata = {
        "objective": config.objective,
        "base": config.base,
        "data": source,
        "eval_data": config.eval_data or (f"{config.eval_fraction:g} of data" if eval_pairs else None),
        "counts": {"pairs_read": n_read, "invalid_skipped": n_invalid, "train_pairs": len(train_pairs),
                   "eval_pairs": len(eval_pairs), "truncated_dialogues": n_trunc_c + n_trunc_r},
        "final_train_loss": result.training_loss,
        "last_epoch_train_accuracy": train_acc,
        "eval": eval_result,
        "accuracy": eval_result["accuracy"] if eval_result else train_acc,
        "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 1),
        "trunk_features": ({"depth": trunk.depth, "sequences": len(trunk)} if trunk is not None else None),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "config": to_dict(config),
        "versions": package_versions(("molma", "torch", "transformers", "trl")),
        "loss": "eq. 3.2: -log(sigmoid(r(x, y_chosen) - r(x, y_rejected)))",
        "scoring": scoring_record(tokenizer),
    }

    def write(folder: Path) -> None:
        from molma.models.cards import write_reward_model_card

        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        (folder / TRAINING_PAIRS_FILE).write_text(json.dumps(training_record(train_pairs)) + "\n",
                                                  encoding="utf-8")
        write_reward_model_card(folder, metadata)
        for name in ("tensorboard", "wandb"):  # report_to's local files
            if (logs_dir / name).is_dir():
                shutil.copytree(logs_dir / name, folder / name)

    try:
        with atomic_folder(out) as tmp:  # an older folder is replaced only at the end
            write(tmp)
    finally:
        shutil.rmtree(logs_dir, ignore_errors=True)
    log.info("saved reward model %r to %s (%.0f s in all)", config.objective, out, metadata["total_seconds"])
    if config.push_to_hub:
        from molma.hub import push_folder

        push_folder(out, config.push_to_hub, commit_message=f"molma: reward model {config.objective!r}")
    return out
