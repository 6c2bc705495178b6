"""A reward model saved by molma scores the same under plain transformers (``apply_chat_template`` +
``AutoModelForSequenceClassification``, a ``text-classification`` pipeline) as with ``RewardModel.score``;
checkpoints saved before (no ``scoring`` record, the plain chat template) keep molma's scores exactly, and
an opt-in upgrade makes them plain-compatible without changing molma's scores."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from molma.data.chat import render_dialogue, to_messages
from molma.rewards import RewardModel, RewardTrainConfig, train_reward_model
from molma.rewards.model import (
    SCORING_TEMPLATE_MARK,
    make_checkpoint_plain_compatible,
    make_template_plain_compatible,
    plain_scoring_template,
    render_for_scoring,
    uses_plain_scoring_template,
)
from tests.rewards.toy import save_tiny_base, toy_pairs

PAIRS = toy_pairs(6, seed=5)
PROMPTS = [p.prompt for p in PAIRS] * 2
PROMPTS[0] = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Say some words.\n\nAssistant:"  # multi-turn
RESPONSES = [p.chosen for p in PAIRS] + [p.rejected for p in PAIRS]


def plain_scores(path, prompts=PROMPTS, responses=RESPONSES, route="dict") -> torch.Tensor:
    """What a transformers user writes: the folder's tokenizer and chat template, nothing from molma."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for prompt, response in zip(prompts, responses):
            messages = [*to_messages(prompt), {"role": "assistant", "content": response}]
            if route == "dict":
                inputs = tok.apply_chat_template(messages, return_dict=True, return_tensors="pt")
            else:  # text, then the tokenizer as usual (special tokens on)
                inputs = tok(tok.apply_chat_template(messages, tokenize=False), return_tensors="pt")
            out.append(model(**inputs).logits[0, 0].item())
    return torch.tensor(out)


def molma_scores(path) -> torch.Tensor:
    return RewardModel.from_pretrained(path).score(PROMPTS, RESPONSES)


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    base = save_tiny_base(tmp_path_factory.mktemp("base"), seed=0, num_layers=2)
    out = tmp_path_factory.mktemp("runs") / "rm-toy"
    config = RewardTrainConfig(objective="toy", base=str(base), output_dir=str(out), batch_size=16, epochs=2.0,
                               learning_rate=3e-3, max_length=64, eval_fraction=0.1, logging_steps=8)
    return train_reward_model(config, pairs=toy_pairs(64, seed=0)), base


def test_new_checkpoint_scores_the_same_under_plain_transformers(tiny_rm):
    path, _ = tiny_rm
    ours = molma_scores(path)
    assert ours.std() > 1e-3, "scores must differ between dialogues for the comparison to mean anything"
    assert torch.allclose(plain_scores(path), ours, atol=1e-5)
    assert torch.allclose(plain_scores(path, route="text"), ours, atol=1e-5)

    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(path), tokenizer=str(path), device="cpu")
    tok = pipe.tokenizer
    texts = [tok.apply_chat_template([*to_messages(p), {"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(PROMPTS, RESPONSES)]
    results = pipe(texts, batch_size=1)
    assert {r["label"] for r in results} == {"toy"}  # the objective names the label; the raw score, no sigmoid
    assert torch.allclose(torch.tensor([r["score"] for r in results]), ours, atol=1e-5)


def test_new_checkpoint_records_the_convention_and_keeps_the_training_text(tiny_rm):
    from molma.models import load_tokenizer

    path, base = tiny_rm
    meta = json.loads((path / "molma_rm.json").read_text())
    assert meta["scoring"]["plain_transformers"] is True and "last non-padding token" in meta["scoring"]["score_at"]
    config = json.loads((path / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "toy"}
    saved, original = load_tokenizer(str(path)), load_tokenizer(str(base))
    assert uses_plain_scoring_template(saved) and not uses_plain_scoring_template(original)
    # the text molma trains and scores on is the one it always was: the template minus trailing whitespace
    for prompt, response in zip(PROMPTS, RESPONSES):
        old_text = render_dialogue(original, prompt, response).rstrip()
        assert render_for_scoring(saved, prompt, response) == old_text
        messages = [*to_messages(prompt), {"role": "assistant", "content": response}]
        assert saved.apply_chat_template(messages, tokenize=False) == old_text
    # generation prompts are unchanged
    messages = to_messages(PROMPTS[0])
    assert (saved.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == original.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    card = (path / "README.md").read_text()
    assert "# Reward model `toy`" in card and "apply_chat_template" in card
    assert "pipeline_tag: text-classification" in card


def _as_old_checkpoint(path, base, target):
    """The same weights saved as molma did before: the base's chat template, no ``scoring`` record."""
    from molma.models import load_tokenizer

    shutil.copytree(path, target)
    tok = load_tokenizer(str(target))
    tok.chat_template = load_tokenizer(str(base)).chat_template
    tok.save_pretrained(target)
    meta = json.loads((target / "molma_rm.json").read_text())
    del meta["scoring"]
    (target / "molma_rm.json").write_text(json.dumps(meta))
    return target


def test_old_checkpoints_keep_their_scores_and_can_be_upgraded(tiny_rm, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path, base = tiny_rm
    old = _as_old_checkpoint(path, base, tmp_path / "old")
    ours = molma_scores(old)
    # molma's convention for a checkpoint without the record, computed by hand: template text minus
    # trailing whitespace, no special tokens, score at the last non-pad token
    tok = AutoTokenizer.from_pretrained(old)
    model = AutoModelForSequenceClassification.from_pretrained(old).eval()
    with torch.no_grad():
        by_hand = torch.tensor([model(**tok(render_dialogue(tok, p, r).rstrip(), add_special_tokens=False,
                                           return_tensors="pt")).logits[0, 0].item()
                                for p, r in zip(PROMPTS, RESPONSES)])
    assert torch.allclose(ours, by_hand, atol=1e-5)
    assert torch.equal(ours, molma_scores(path)), "same weights, same text: bit-identical to the new checkpoint"
    assert not torch.allclose(plain_scores(old), ours, atol=1e-3), "the old template reads one token later"

    assert make_checkpoint_plain_compatible(old) is True
    assert torch.equal(molma_scores(old), ours), "the upgrade must not change molma's scores"
    assert torch.allclose(plain_scores(old), ours, atol=1e-5)
    assert json.loads((old / "molma_rm.json").read_text())["scoring"]["plain_transformers"] is True
    assert make_checkpoint_plain_compatible(old) is True  # idempotent


def test_unusual_templates_are_left_alone(tokenizer):
    tok = tokenizer  # the session's tokenizer: restored below
    original = tok.chat_template
    try:
        tok.chat_template = "\n" + original  # trim_blocks would eat the leading newline: the check refuses
        assert make_template_plain_compatible(tok) is False and tok.chat_template == "\n" + original
        tok.chat_template = original
        assert make_template_plain_compatible(tok) is True and SCORING_TEMPLATE_MARK in tok.chat_template
        assert tok.chat_template == plain_scoring_template(original)
        assert make_template_plain_compatible(tok) is True  # already wrapped: unchanged
        assert tok.chat_template == plain_scoring_template(original)
    finally:
        tok.chat_template = original


def test_smollm2_reward_model_scores_the_same_under_plain_transformers(tmp_path):
    """The builtin SmolLM2 (cut to 2 layers to stay fast), trained and saved by molma."""
    config = RewardTrainConfig(objective="safe", base="smollm2-135m-instruct", output_dir=str(tmp_path / "rm"),
                               num_layers=2, train_top_layers=1, batch_size=8, epochs=1.0, learning_rate=1e-3,
                               max_length=96, eval_fraction=0.0, logging_steps=1)
    path = train_reward_model(config, pairs=toy_pairs(16, seed=1))
    ours = molma_scores(path)
    assert ours.std() > 1e-4
    assert torch.allclose(plain_scores(path), ours, atol=1e-4)
