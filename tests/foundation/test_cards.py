"""Portable policy folders and model cards: ``export_policy`` makes a LoRA ``final/`` folder load with
``peft.AutoPeftModelForCausalLM`` after it is moved elsewhere, records the builtin model's public hub id,
and writes model cards for policies and reward models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from molma.config import to_dict
from molma.models import LoraSettings, apply_lora, cache_dir
from molma.models.cards import (
    BUILTIN_HUB_IDS,
    export_policy,
    policy_card,
    public_model_id,
    reward_model_card,
    write_reward_model_card,
)
from tests.rewards.toy import save_tiny_base

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _train_config(model: str, **kw):
    from molma.rl import TrainConfig

    return TrainConfig(algo="molma", model=model, lora=LoraSettings(r=4, alpha=8), iterations=3,
                       experience_size=8, minibatch_size=4,
                       objectives={"help": "rule:length", "safe": "rule:banned_words"}, **kw)


def _fake_run(run, base_ref: str, model_name: str):
    """A run folder as the trainer leaves it: config.yaml, metrics.jsonl, final/ with a LoRA adapter whose
    adapter_config.json points at ``base_ref`` (as peft records the path the base was loaded from)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_model = AutoModelForCausalLM.from_pretrained(base_ref)
    policy = apply_lora(base_model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # a trained-looking adapter: B != 0, so it changes the outputs
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    final = run / "final"
    final.mkdir(parents=True)
    policy.save_pretrained(final, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_ref).save_pretrained(final)
    (final / "molma.json").write_text(json.dumps({"base_model": model_name, "lora": True}))
    cfg = _train_config(model_name)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg) | {"processes": 1}, sort_keys=False))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"iteration": i, "reward/raw/help": 0.1 * i,
                                                          "reward/raw/help/help": 0.2, "reward/raw/safe": -0.5,
                                                          "kl": 0.01 * i}) + "\n" for i in (1, 2, 3)))
    ids = torch.tensor([[1, 42, 7, 99, 5]])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits
    return final, ids, logits


def test_moved_adapter_loads_with_auto_peft_model(tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    work = tmp_path / "work"
    work.mkdir()
    save_tiny_base(work / "base", seed=0, num_layers=2)
    monkeypatch.chdir(work)  # the base is loaded by a relative path, as a run started in this folder would
    final, ids, logits = _fake_run(work / "runs" / "molma", "base", "base")
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"

    card = export_policy(final)
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((work / "base").resolve())
    assert card == final / "README.md"

    moved = tmp_path / "elsewhere" / "policy"
    shutil.move(str(final), moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    model = AutoPeftModelForCausalLM.from_pretrained(str(moved)).eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, logits, atol=1e-6)


def test_builtin_base_is_recorded_as_its_hub_id(tmp_path):
    builtin_folder = cache_dir() / "models" / "smollm2-135m-instruct" / "float32"
    assert public_model_id("smollm2-135m-instruct") == SMOLLM2_HUB_ID == BUILTIN_HUB_IDS["smollm2-135m-instruct"]
    assert public_model_id(builtin_folder) == SMOLLM2_HUB_ID
    assert public_model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert public_model_id(tmp_path) == str(tmp_path.resolve())

    base = save_tiny_base(tmp_path / "base", seed=0, num_layers=2)
    final, _, _ = _fake_run(tmp_path / "run", str(base), "smollm2-135m-instruct")
    adapter = json.loads((final / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = str(builtin_folder)  # what a builtin run records today
    (final / "adapter_config.json").write_text(json.dumps(adapter))
    export_policy(final)
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == SMOLLM2_HUB_ID
    assert json.loads((final / "molma.json").read_text())["base_model"] == "smollm2-135m-instruct"  # molma's own

    card = (final / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == SMOLLM2_HUB_ID and front["library_name"] == "peft"
    assert "molma" in front["tags"] and "lora" in front["tags"]
    for part in ("## Model", "Q4_1 GGUF", "## Algorithm", "Aligned-MTL", "## Objectives", "`rule:length`",
                 "## Data", "builtin:help", "## Key settings", "`iterations` | 3", "## Measured rewards",
                 "last logged iteration (3)", "| help | 0.3 |", "AutoPeftModelForCausalLM"):
        assert part in card, part


def test_policy_card_from_a_config_and_given_rewards():
    card = policy_card(_train_config("smollm2-135m-instruct", importance=[0.7, 0.3]),
                       rewards={"molma": {"help": 0.41, "safe": -0.2}, "reference": {"help": 0.1, "safe": -0.5}},
                       rewards_note="Held-out prompts (64).")
    assert "Held-out prompts (64)." in card and "| molma | 0.41 | -0.2 |" in card
    assert "importance / preference weights: [0.7, 0.3]" in card


def test_reward_model_card_from_metadata(tmp_path):
    meta = {"objective": "safe", "base": "smollm2-135m-instruct", "data": "hh.jsonl.gz[:1500]",
            "eval_data": "0.1 of data",
            "counts": {"train_pairs": 1350, "eval_pairs": 150, "invalid_skipped": 4, "truncated_dialogues": 2},
            "eval": {"accuracy": 0.66, "n": 150, "ties": 0, "margin": {"mean": 0.5, "std": 1.2}},
            "config": {"finetune": "full", "num_layers": 8, "train_top_layers": 2, "epochs": 1.0,
                       "learning_rate": 1e-4, "max_length": 512},
            "scoring": {"plain_transformers": True}}
    card = reward_model_card(meta)
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == SMOLLM2_HUB_ID and front["pipeline_tag"] == "text-classification"
    for part in ("# Reward model `safe`", "hh.jsonl.gz[:1500]", "1350 training pairs", "66.0 % on 150 pairs",
                 "bottom 8 transformer layers", "apply_chat_template", "AutoModelForSequenceClassification"):
        assert part in card, part
    (tmp_path / "molma_rm.json").write_text(json.dumps(meta))
    assert write_reward_model_card(tmp_path).read_text() == card
    with pytest.raises(FileNotFoundError):
        write_reward_model_card(tmp_path / "nothing")
