"""Reward-model training on tiny models: learning a separable toy preference, the saved checkpoint
(plain Hugging Face, same scores as molma's scorer), LoRA / frozen layers, the NaN guard, the config."""

from __future__ import annotations

import json

import pytest
import torch

from molma.config import ConfigError, load_config
from molma.rewards import (
    RewardModel,
    RewardTrainConfig,
    build_reward_model,
    evaluate_reward_model,
    preference_loss,
    train_reward_model,
)
from tests.rewards.toy import save_tiny_base, toy_pairs


def tiny_config(base, out, **kw) -> RewardTrainConfig:
    settings = dict(objective="toy", base=str(base), output_dir=str(out), batch_size=16, epochs=3.0,
                    learning_rate=3e-3, max_length=64, eval_fraction=0.1, logging_steps=8)
    settings.update(kw)
    return RewardTrainConfig(**settings)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"), seed=0, num_layers=3)


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    """Train once on 128 toy pairs; returns (checkpoint folder, accuracy of the untrained model)."""
    out = tmp_path_factory.mktemp("runs") / "rm-toy"
    config = tiny_config(base_dir, out)
    model, tok = build_reward_model(config)
    before = evaluate_reward_model(RewardModel(model, tok, "toy"), toy_pairs(64, seed=99))["accuracy"]
    return train_reward_model(config, pairs=toy_pairs(128, seed=0)), before


def test_toy_preference_is_learned(trained):
    path, before = trained
    after = evaluate_reward_model(RewardModel.from_pretrained(path), toy_pairs(64, seed=99))
    assert 0.2 <= before <= 0.8, "an untrained head should be near chance on the toy set"
    assert after["accuracy"] > 0.9
    assert after["margin"]["mean"] > 0.5


def test_checkpoint_is_a_plain_hugging_face_reward_model(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path, _ = trained
    files = {p.name for p in path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary folders left behind"
    config = json.loads((path / "config.json").read_text())
    assert config["num_labels"] == 1 if "num_labels" in config else len(config["id2label"]) == 1
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id is not None
    assert tok.chat_template and "<|im_start|>" in tok.chat_template

    pairs = toy_pairs(6, seed=5)
    texts = [tok.apply_chat_template([{"role": "user", "content": p.prompt},
                                      {"role": "assistant", "content": p.chosen}], tokenize=False).rstrip()
             for p in pairs]
    with torch.no_grad():
        plain = torch.tensor([model(**tok(t, return_tensors="pt", add_special_tokens=False)).logits[0, 0]
                              for t in texts])
    ours = RewardModel.from_pretrained(path).score([p.prompt for p in pairs], [p.chosen for p in pairs])
    assert torch.allclose(plain, ours, atol=1e-5)


def test_metadata_records_config_data_counts_and_accuracy(trained):
    path, _ = trained
    meta = json.loads((path / "molma_rm.json").read_text())
    assert meta["objective"] == "toy" and meta["data"] == "<pairs>"
    assert meta["counts"]["pairs_read"] == 128
    assert meta["counts"]["train_pairs"] + meta["counts"]["eval_pairs"] == 128
    assert meta["counts"]["eval_pairs"] == 13
    assert meta["eval"]["n"] == 13 and meta["accuracy"] == meta["eval"]["accuracy"]
    assert meta["config"]["learning_rate"] == 3e-3 and meta["config"]["adam_beta2"] == 0.95
    assert 0 <= meta["last_epoch_train_accuracy"] <= 1 and meta["steps"] == 3 * 8  # ceil(115 / 16) per epoch
    assert RewardModel.from_pretrained(path).name == "toy"


def test_trainer_loss_is_eq_3_2_on_one_batched_forward(base_dir, tmp_path):
    """The TRL loop scores chosen and rejected in one forward pass; its loss equals eq. 3.2 computed
    from separate forwards of the same sequences."""
    from datasets import Dataset
    from trl import RewardConfig

    from molma.rewards.model import encode_dialogues
    from molma.rewards.train import _trainer_classes

    config = tiny_config(base_dir, tmp_path / "x")
    model, tok = build_reward_model(config)
    pairs = toy_pairs(4, seed=1)
    prompts = [p.prompt for p in pairs]
    chosen, _ = encode_dialogues(tok, prompts, [p.chosen for p in pairs], 64)
    rejected, _ = encode_dialogues(tok, prompts, [p.rejected for p in pairs], 64)
    trainer_cls, _ = _trainer_classes()
    args = RewardConfig(output_dir=str(tmp_path / "t"), per_device_train_batch_size=4, use_cpu=True,
                        bf16=False, report_to="none", max_length=None, activation_checkpointing=False)
    trainer = trainer_cls(model=model, args=args, processing_class=tok,
                          train_dataset=Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected}))
    trainer.epoch_correct = {}
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 8  # 4 chosen then 4 rejected, one forward
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        half = batch["input_ids"].shape[0] // 2
        singles = [model(input_ids=torch.tensor([ids])).logits[0, 0] for ids in _rows(batch, 0, 2 * half)]
    expected = preference_loss(torch.stack(singles[:half]), torch.stack(singles[half:]))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def _rows(batch, start, stop):
    for i in range(start, stop):
        n = int(batch["attention_mask"][i].sum())
        yield batch["input_ids"][i, :n].tolist()


def test_frozen_bottom_layers_and_truncated_depth(base_dir, tmp_path):
    from safetensors.torch import load_file

    config = tiny_config(base_dir, tmp_path / "rm", num_layers=2, train_top_layers=1, epochs=1.0,
                         batch_size=8, eval_fraction=0.0)
    out = train_reward_model(config, pairs=toy_pairs(16, seed=2))
    saved, base = load_file(out / "model.safetensors"), load_file(base_dir / "model.safetensors")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert not any(k.startswith("model.layers.2.") for k in saved)
    for key in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"):
        assert torch.equal(saved[key], base[key]), f"{key} should be frozen"
    key = "model.layers.1.mlp.up_proj.weight"
    assert not torch.equal(saved[key], base[key]), "the top layer should train"
    assert json.loads((out / "molma_rm.json").read_text())["eval"] is None


def test_lora_on_top_layers_is_merged_into_a_plain_checkpoint(base_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    out = train_reward_model(tiny_config(base_dir, tmp_path / "rm", finetune="lora", train_top_layers=1,
                                         epochs=1.0, batch_size=8, eval_fraction=0.25,
                                         lora={"r": 4, "alpha": 8}), pairs=toy_pairs(16, seed=3))
    saved, base = load_file(out / "model.safetensors"), load_file(base_dir / "model.safetensors")
    assert not any("lora" in k or "modules_to_save" in k for k in saved)
    bottom, top = "model.layers.0.self_attn.q_proj.weight", "model.layers.2.self_attn.q_proj.weight"
    assert torch.equal(saved[bottom], base[bottom]) and not torch.equal(saved[top], base[top])
    AutoModelForSequenceClassification.from_pretrained(out)  # loads with no peft involved


def test_non_finite_loss_stops_training_with_a_clear_error(base_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    save_tiny_base(broken, seed=0, num_layers=3)
    weights = load_file(broken / "model.safetensors")
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], float("nan"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FloatingPointError, match=r"reward model 'toy': non-finite loss nan at step 0"):
        train_reward_model(tiny_config(broken, tmp_path / "rm", epochs=1.0, eval_fraction=0.0),
                           pairs=toy_pairs(16, seed=4))
    assert not (tmp_path / "rm").exists()


def test_config_defaults_follow_the_paper_and_overrides_work(tmp_path):
    c = RewardTrainConfig()
    assert (c.adam_beta1, c.adam_beta2, c.adam_epsilon, c.max_grad_norm) == (0.9, 0.95, 1e-5, 1.0)
    assert (c.learning_rate, c.min_lr_ratio, c.weight_decay) == (1e-5, 0.1, 0.0)
    assert (c.epochs, c.batch_size, c.finetune) == (1.0, 28, "full")
    assert c.output_path.as_posix() == "runs/rm-help"
    yaml_file = tmp_path / "rm.yaml"
    yaml_file.write_text("objective: safe\nlearning_rate: 1.0e-4\nlora:\n  r: 4\n")
    c = load_config(RewardTrainConfig, yaml_file, ["epochs=2", "lora.alpha=8", "finetune=lora"])
    assert (c.objective, c.learning_rate, c.epochs, c.finetune, c.lora.r, c.lora.alpha) == (
        "safe", 1e-4, 2.0, "lora", 4, 8)
    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        load_config(RewardTrainConfig, None, ["learning_rate=0"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(RewardTrainConfig, None, ["lr=1"])
    with pytest.raises(ConfigError, match="train_top_layers"):
        load_config(RewardTrainConfig, None, ["num_layers=2", "train_top_layers=3"])
