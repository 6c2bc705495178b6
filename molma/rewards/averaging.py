"""Weight-averaged reward models (WARM: Ramé et al. 2024, "WARM: On the Benefits of Weight Averaged Reward
Models"): reward models fine-tuned from the same base with different seeds (data order, head initialisation)
are averaged weight by weight into one model, which scores like an ensemble of them at the cost of one and
loads like any of them (a plain ``AutoModelForSequenceClassification`` folder).

Written here because neither transformers nor peft averages full checkpoints (peft's ``add_weighted_adapter``
mixes LoRA adapters only; :mod:`molma.models.soup` does that for policies), and the averaging is a few lines
over safetensors files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from molma.atomic import atomic_folder
from molma.rewards.model import METADATA_FILE

WEIGHTS_FILE = "model.safetensors"
# what differs between members without making them different models
_RUN_KEYS = ("_name_or_path", "name_or_path", "transformers_version")


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model folder (one ``model.safetensors`` or its shards)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights (a reward model folder saved by molma or "
                                "transformers' save_pretrained)")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(str(file)))
    return weights


def average_weights(members: Sequence[dict[str, torch.Tensor]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The uniform average of ``members`` (same keys, shapes and dtypes; floating tensors averaged in float64,
    stored in their dtype; other tensors, e.g. integer buffers, must be equal). ``names`` label the members in
    errors."""
    if len(members) < 2:
        raise ValueError(f"averaging needs at least two reward models, got {len(members)}")
    first = members[0]
    for member, name in zip(members[1:], names[1:]):
        if member.keys() != first.keys():
            diff = sorted(set(member) ^ set(first))[:5]
            raise ValueError(f"{name}: its tensors differ from {names[0]}'s (e.g. {diff}): not the same architecture")
        for key, tensor in member.items():
            if tensor.shape != first[key].shape or tensor.dtype != first[key].dtype:
                raise ValueError(f"{name}: tensor {key!r} is {tuple(tensor.shape)} {tensor.dtype}, "
                                 f"{names[0]}'s {tuple(first[key].shape)} {first[key].dtype}")
    averaged = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            total = torch.zeros(tensor.shape, dtype=torch.float64)
            for member in members:
                total += member[key].double()
            averaged[key] = (total / len(members)).to(tensor.dtype).contiguous()
        else:
            for member, name in zip(members[1:], names[1:]):
                if not torch.equal(member[key], tensor):
                    raise ValueError(f"{name}: non-floating tensor {key!r} differs from {names[0]}'s")
            averaged[key] = tensor.contiguous()
    return averaged


def _architecture(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return {k: v for k, v in config.items() if k not in _RUN_KEYS}


def average_reward_models(folders: Sequence[str | Path], out: str | Path,
                          record: dict[str, Any] | None = None) -> Path:
    """Write the weight average of the reward models in ``folders`` to ``out`` (atomically): their averaged
    weights, the first member's config, tokenizer and scoring settings, and a ``molma_rm.json`` that names the
    members (with ``record`` added under ``"weight_average"``). Members must share base, architecture and
    scoring (template, context length)."""
    folders = [Path(f) for f in folders]
    names = [str(f) for f in folders]
    arch = _architecture(folders[0])
    metas = [json.loads((f / METADATA_FILE).read_text(encoding="utf-8")) if (f / METADATA_FILE).is_file() else {}
             for f in folders]
    for folder, meta in zip(folders[1:], metas[1:]):
        if _architecture(folder) != arch:
            raise ValueError(f"{folder}/config.json: another architecture than {folders[0]}/config.json")
        for key in ("base", "objective", "scoring"):
            if meta.get(key) != metas[0].get(key):
                raise ValueError(f"{folder}/{METADATA_FILE}: {key!r} is {meta.get(key)!r}, "
                                 f"{folders[0]}'s {metas[0].get(key)!r}")
        if (meta.get("config") or {}).get("max_length") != (metas[0].get("config") or {}).get("max_length"):
            raise ValueError(f"{folder}/{METADATA_FILE}: another max_length than {folders[0]}")
    averaged = average_weights([read_weights(f) for f in folders], names)
    metadata = dict(metas[0])
    metadata["weight_average"] = {
        "method": "uniform average of the members' weights (WARM, Rame et al. 2024)",
        "members": names,
        "member_seeds": [(m.get("config") or {}).get("seed") for m in metas],
        "member_accuracy": [m.get("accuracy") for m in metas],
        "member_train_seconds": [m.get("train_seconds") for m in metas],
        **(record or {}),
    }
    metadata["train_seconds"] = round(sum(m.get("train_seconds") or 0.0 for m in metas), 1)
    with atomic_folder(out) as tmp:
        for item in folders[0].iterdir():  # tokenizer, config, template; not the weights, logs or the card
            if item.is_file() and item.suffix != ".safetensors" and item.name not in (
                    METADATA_FILE, "README.md", "model.safetensors.index.json"):
                shutil.copy2(item, tmp / item.name)
        save_file(averaged, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        from molma.models.cards import write_reward_model_card

        write_reward_model_card(tmp, metadata)
    return Path(out)
