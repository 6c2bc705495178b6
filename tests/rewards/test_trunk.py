"""Frozen-trunk features (molma.rewards.trunk): the top layers see the same inputs as behind the real trunk,
training with stored features gives the model that training without them gives, shards merge, and features
that do not fit the model or the data are refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from molma.rewards import RewardTrainConfig, build_reward_model, train_reward_model
from molma.rewards.model import encode_dialogues, pad_right
from molma.rewards.train import write_trunk_features
from molma.rewards.trunk import TrunkFeatures, cached_trunk, compute_trunk_features, frozen_trunk_depth
from tests.rewards.toy import save_tiny_base, toy_pairs


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"), seed=0, num_layers=3)


def config(base, out, **kw) -> RewardTrainConfig:
    settings = dict(objective="toy", base=str(base), output_dir=str(out), batch_size=8, epochs=2.0,
                    learning_rate=3e-3, max_length=64, eval_fraction=0.0, logging_steps=8, train_top_layers=1,
                    precision="fp32", seed=3)
    settings.update(kw)
    return RewardTrainConfig(**settings)


def sequences(tokenizer, pairs):
    prompts = [p.prompt for p in pairs]
    return (encode_dialogues(tokenizer, prompts, [p.chosen for p in pairs], 64)[0]
            + encode_dialogues(tokenizer, prompts, [p.rejected for p in pairs], 64)[0])


def test_depth_counts_the_frozen_leading_blocks_only_for_plain_models(base_dir, tmp_path):
    model, _ = build_reward_model(config(base_dir, tmp_path))
    assert frozen_trunk_depth(model) == 2
    everything, _ = build_reward_model(config(base_dir, tmp_path, train_top_layers=None))
    assert frozen_trunk_depth(everything) is None  # nothing frozen: nothing to store
    lora, _ = build_reward_model(config(base_dir, tmp_path, finetune="lora", lora={"r": 2, "alpha": 4}))
    assert frozen_trunk_depth(lora) is None
    model.config.attention_dropout = 0.1  # a trunk with dropout gives other values at every call
    assert frozen_trunk_depth(model) is None


def test_top_layers_get_the_same_scores_and_gradients_as_behind_the_real_trunk(base_dir, tmp_path):
    model, tok = build_reward_model(config(base_dir, tmp_path))
    seqs = sequences(tok, toy_pairs(6, seed=1))
    seqs[0] = seqs[0][:9]  # lengths differ: padding inside the batch
    features = compute_trunk_features(model, seqs, depth=2, pad_id=tok.pad_token_id, batch_size=4, progress=False)
    assert len(features) == len(set(map(tuple, seqs)))
    ids, mask = pad_right(seqs, tok.pad_token_id)
    top = [p for p in model.parameters() if p.requires_grad]

    def scores_and_grads():
        model.zero_grad()
        scores = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.squeeze(-1)
        scores.sum().backward()
        return scores.detach(), [p.grad.clone() for p in top]

    plain, plain_grads = scores_and_grads()
    n_blocks = len(model.model.layers)
    with cached_trunk(model, features):
        assert len(model.model.layers) == 1
        cached, cached_grads = scores_and_grads()
    assert len(model.model.layers) == n_blocks and isinstance(model.model.embed_tokens, torch.nn.Embedding)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(cached_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with cached_trunk(model, features), pytest.raises(ValueError, match="right-padded"):
        model(input_ids=ids.flip(1), attention_mask=mask.flip(1), use_cache=False)


def test_training_from_stored_shards_gives_the_model_training_without_them_gives(base_dir, tmp_path):
    pairs = toy_pairs(24, seed=4)
    cfg = config(base_dir, tmp_path / "plain")
    shards = [write_trunk_features(cfg, pairs, tmp_path / f"trunk{i}.safetensors", shard=i, shards=2)
              for i in range(2)]
    merged = TrunkFeatures.merge([TrunkFeatures.load(s) for s in shards])
    assert len(merged) == len({tuple(s) for s in sequences(build_reward_model(cfg)[1], pairs)})
    plain = train_reward_model(cfg, pairs=pairs)
    cached = train_reward_model(config(base_dir, tmp_path / "cached"), pairs=pairs, trunk_features=shards)
    a, b = load_file(plain / "model.safetensors"), load_file(cached / "model.safetensors")
    assert a.keys() == b.keys()
    changed = [k for k in a if "layers.2." in k or "score" in k]
    assert changed and all(not torch.equal(a[k], load_file(base_dir / "model.safetensors").get(k, a[k] * 0))
                           for k in changed if "layers.2." in k)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4, msg=key)
    import json

    meta = json.loads((cached / "molma_rm.json").read_text())
    assert meta["trunk_features"] == {"depth": 2, "sequences": len(merged)}


def test_features_for_other_data_or_settings_are_refused(base_dir, tmp_path):
    pairs = toy_pairs(8, seed=5)
    cfg = config(base_dir, tmp_path / "rm")
    path = write_trunk_features(cfg, pairs, tmp_path / "trunk.safetensors")
    with pytest.raises(ValueError, match="miss 16 of the 16"):
        train_reward_model(cfg, pairs=toy_pairs(8, seed=6), trunk_features=path)
    with pytest.raises(ValueError, match="other settings"):  # the trunk ends one layer lower
        train_reward_model(config(base_dir, tmp_path / "rm", train_top_layers=2), pairs=pairs, trunk_features=path)
    with pytest.raises(ValueError, match="other settings"):
        train_reward_model(config(base_dir, tmp_path / "rm", precision="bf16"), pairs=pairs, trunk_features=path)
    with pytest.raises(ValueError, match="lower layers"):
        train_reward_model(config(base_dir, tmp_path / "rm", train_top_layers=None), pairs=pairs,
                           trunk_features=path)
    with pytest.raises(ValueError, match="full fine-tuning"):
        write_trunk_features(config(base_dir, tmp_path / "rm", train_top_layers=None), pairs, tmp_path / "x")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error for a damaged header
        TrunkFeatures.load(tmp_path / "junk.safetensors")
    assert not (tmp_path / "rm").exists(), "refused before any training"
