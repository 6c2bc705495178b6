"""The RewardModel scorer: plain-transformers equivalence, batching, left truncation, NaN guard."""

from __future__ import annotations

import pytest
import torch

from molma.data.chat import render_dialogue
from molma.rewards import NonFiniteRewardError, Objective, RewardModel, encode_dialogues, load_objective

PROMPTS = ["What is the capital of France?",
           "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: tell me a joke\n\nAssistant:",
           "Short?", "Explain photosynthesis in detail please."]
RESPONSES = ["Paris.", "Why did the chicken cross the road? To get to the other side.", "Yes.",
             "Plants turn light, water and carbon dioxide into sugar and oxygen."]


@pytest.fixture(scope="module")
def seqcls_dir(tmp_path_factory, tokenizer):
    """A tiny random LlamaForSequenceClassification (num_labels=1) saved with the SmolLM2 tokenizer."""
    from transformers import LlamaForSequenceClassification

    from molma.models import tiny_llama_config

    torch.manual_seed(0)
    config = tiny_llama_config(len(tokenizer), num_labels=1, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # spread the scores so comparisons are meaningful
    folder = tmp_path_factory.mktemp("seqcls")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def plain_scores(folder, prompts, responses):
    """Scores with plain transformers only: one dialogue at a time, no molma code but the chat text."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for p, r in zip(prompts, responses):
            text = render_dialogue(tok, p, r).rstrip()  # scored text ends at the end of the reply
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            out.append(model(**ids).logits[0, 0].item())
    return torch.tensor(out)


def test_batched_scores_equal_plain_transformers_one_by_one(seqcls_dir):
    rm = RewardModel.from_pretrained(seqcls_dir, name="help", batch_size=3)
    assert isinstance(rm, Objective) and rm.name == "help"
    scores = rm.score(PROMPTS, RESPONSES)
    assert scores.dtype == torch.float32 and scores.shape == (4,) and not scores.requires_grad
    assert torch.allclose(scores, plain_scores(seqcls_dir, PROMPTS, RESPONSES), atol=1e-5)
    assert scores.std() > 1e-3  # not a constant


def test_one_batch_of_mixed_lengths_is_scored_by_length_groups(seqcls_dir):
    """A batch of short and long dialogues runs as the chat template's shared system prompt once, then several
    forwards (molma.models.prefill.prefill_plan), each padded to its own longest; the scores are plain
    transformers' one by one."""
    from molma.models.prefill import prefill_plan, shared_prefix_length

    rm = RewardModel.from_pretrained(seqcls_dir, name="help", batch_size=16)
    prompts = PROMPTS + ["Hi" + " and more" * 40, "Ok"]
    responses = RESPONSES + ["A long answer" * 20, "No."]
    ids, _ = encode_dialogues(rm.tokenizer, prompts, responses, rm.max_length)
    plan = prefill_plan([len(x) for x in ids], shared_prefix_length(ids))
    assert plan is not None and plan.prefix > 0 and len(plan.groups) > 1  # the path under test
    torch.testing.assert_close(rm.score(prompts, responses), plain_scores(seqcls_dir, prompts, responses),
                               atol=1e-5, rtol=1e-5)


def test_scores_do_not_depend_on_batch_composition(seqcls_dir):
    rm = RewardModel.from_pretrained(seqcls_dir, batch_size=4)
    together = rm.score(PROMPTS, RESPONSES)
    alone = torch.cat([rm.score([p], [r]) for p, r in zip(PROMPTS, RESPONSES)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert rm.score([], []).shape == (0,)


def test_long_prompts_are_cut_from_the_left_keeping_the_response(seqcls_dir, tokenizer):
    long_prompt = " ".join(f"word{i}" for i in range(300)) + " What do you think?"
    response = "I think it is a fine list of words."
    full, n = encode_dialogues(tokenizer, [long_prompt], [response], 10_000)
    cut, n_cut = encode_dialogues(tokenizer, [long_prompt], [response], 64)
    assert n == 0 and n_cut == 1 and len(full[0]) > 64 and len(cut[0]) == 64
    assert cut[0] == full[0][-64:]
    tail = tokenizer.decode(cut[0])
    assert response in tail and "word0 " not in tail
    rm = RewardModel.from_pretrained(seqcls_dir, max_length=64)
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(seqcls_dir).eval()
    with torch.no_grad():
        expected = plain(input_ids=torch.tensor([full[0][-64:]])).logits[0, 0]
    assert rm.score([long_prompt], [response]).item() == pytest.approx(expected.item(), abs=1e-5)


def test_plain_text_rendering_keeps_special_tokens_when_truncating(tokenizer):
    from transformers import AutoTokenizer

    from molma.rewards import render_for_scoring

    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = None
    text = render_for_scoring(tok, "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: why?\n\nAssistant:", "because")
    assert text == "Human: hi\n\nAssistant: yo\n\nHuman: why?\n\nAssistant: because"


def test_nan_scores_raise_naming_objective_and_index(seqcls_dir):
    rm = RewardModel.from_pretrained(seqcls_dir, name="safe")
    with torch.no_grad():
        rm.model.score.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteRewardError, match=r"'safe'.*response index 0"):
        rm.score(PROMPTS[:2], RESPONSES[:2])


def test_load_objective_loads_checkpoints(seqcls_dir):
    obj = load_objective(str(seqcls_dir), "helpfulness", batch_size=2)
    assert isinstance(obj, RewardModel) and obj.name == "helpfulness" and obj.batch_size == 2
    assert obj.score(PROMPTS[:1], RESPONSES[:1]).shape == (1,)


def test_rejects_multi_label_models(tokenizer):
    from transformers import LlamaForSequenceClassification

    from molma.models import tiny_llama_config

    model = LlamaForSequenceClassification(tiny_llama_config(len(tokenizer), num_labels=2))
    with pytest.raises(ValueError, match="num_labels=2"):
        RewardModel(model, tokenizer, name="x")
