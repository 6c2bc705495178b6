"""Encoders (no chat template) train and score too: a tiny random BERT with a WordPiece vocabulary."""

from __future__ import annotations

import json

import torch

from molma.rewards import RewardModel, RewardTrainConfig, evaluate_reward_model, train_reward_model
from tests.rewards.toy import FILLER, toy_pairs


def save_tiny_bert(folder):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    folder.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, "blue", "red", "say", "some", "words",
             "number", "human", "assistant", ":", ".", ",", *map(str, range(10))]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_tiny_bert_reward_model_learns_and_keeps_cls_sep_when_truncating(tmp_path):
    base = save_tiny_bert(tmp_path / "bert")
    config = RewardTrainConfig(objective="toy", base=str(base), output_dir=str(tmp_path / "rm"),
                               batch_size=16, epochs=3.0, learning_rate=3e-3, max_length=64,
                               eval_fraction=0.0, train_top_layers=2)
    path = train_reward_model(config, pairs=toy_pairs(96, seed=0))
    architectures = json.loads((path / "config.json").read_text())["architectures"]
    assert architectures == ["BertForSequenceClassification"]
    rm = RewardModel.from_pretrained(path, max_length=12)
    assert rm.tokenizer.chat_template is None
    assert "[UNK]" not in rm.tokenizer.tokenize("apple river blue")
    from molma.rewards import encode_dialogues

    ids, n = encode_dialogues(rm.tokenizer, ["say some words"], ["apple river stone cloud paper blue"], 12)
    assert n == 1 and len(ids[0]) == 12
    assert ids[0][0] == rm.tokenizer.cls_token_id and ids[0][-1] == rm.tokenizer.sep_token_id
    rm.max_length = 64
    assert evaluate_reward_model(rm, toy_pairs(48, seed=99))["accuracy"] > 0.9
