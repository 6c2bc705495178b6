"""Prefill by prompt length and shared prefix (molma.models.prefill): the grouping is the cheapest, the plan the
cheaper of grouping with and without the shared prefix, and generation from the assembled cache samples what the
padded batch's own prefill samples."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from molma.eval.generate import generate_responses
from molma.models import LoraSettings, prefill, tiny_llama
from molma.models.prefill import (
    PrefillPlan,
    common_prefix_length,
    length_groups,
    prefill_cache,
    prefill_plan,
    shared_prefix_length,
)
from molma.rl.rollout import GenerationSettings, generate, prompt_plan, tokenize_prompts


def _cost(lengths: list[int], groups: list[list[int]], overhead: int) -> int:
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


def test_equal_lengths_make_one_group():
    assert length_groups([7, 7, 7, 7], overhead_tokens=16) == [[0, 1, 2, 3]]


def test_short_and_long_prompts_split_by_hand():
    # one group: 8 rows x 50 + 16 = 416 tokens; two: 4 x 2 + 16 + 4 x 50 + 16 = 240
    lengths = [50, 2, 50, 2, 2, 50, 2, 50]
    assert length_groups(lengths, overhead_tokens=16) == [[1, 3, 4, 6], [0, 2, 5, 7]]
    # a forward that costs more than the padding it saves is not worth it: 2 x 10 + 40 < 1 x 2 + 40 + 1 x 10 + 40
    assert length_groups([10, 2], overhead_tokens=40) == [[0, 1]]


def test_groups_are_capped():
    groups = length_groups([1, 20, 40, 60, 80, 100], overhead_tokens=0, max_groups=2)
    assert len(groups) == 2 and sorted(sum(groups, [])) == list(range(6))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=7), st.integers(0, 30), st.integers(1, 3))
def test_grouping_is_the_cheapest_contiguous_split(lengths, overhead, max_groups):
    """Exact: no split of the length-sorted rows into at most max_groups runs costs less (brute force)."""
    groups = length_groups(lengths, overhead_tokens=overhead, max_groups=max_groups)
    assert sorted(sum(groups, [])) == list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    best = None
    for k in range(1, min(max_groups, len(lengths)) + 1):
        for cuts in itertools.combinations(range(1, len(lengths)), k - 1):
            bounds = [0, *cuts, len(lengths)]
            split = [order[a:b] for a, b in zip(bounds, bounds[1:])]
            cost = _cost(lengths, split, overhead)
            best = cost if best is None else min(best, cost)
    assert _cost(lengths, groups, overhead) == best


def test_common_prefix_of_a_left_padded_batch():
    pad = 0
    ids = torch.tensor([[pad, pad, 5, 6, 7, 8],
                        [5, 6, 7, 9, 9, 9],
                        [pad, 5, 6, 7, 8, 1]])
    mask = (ids != pad).long()
    assert common_prefix_length(ids, mask) == 3  # 5 6 7, then 8 / 9 / 8
    assert common_prefix_length(ids[1:2], mask[1:2]) == 6  # one row: all of it
    assert common_prefix_length(torch.tensor([[1, 2], [3, 2]]), torch.ones(2, 2, dtype=torch.long)) == 0
    assert shared_prefix_length([[1, 2, 3], [1, 2], [1, 2, 4]]) == 2 and shared_prefix_length([]) == 0


def test_plan_shares_the_prefix_only_when_cheaper():
    # padded: 4 x 30 + 16 = 136 tokens; groups: the same (equal lengths); the prefix of 20 once, then 4 x 10:
    # 20 + 16 + 4 x 10 + 16 = 92
    assert prefill_plan([30, 30, 30, 30], prefix=20, overhead_tokens=16) == PrefillPlan(20, [[0, 1, 2, 3]])
    assert prefill_plan([30, 30, 30, 30], prefix=0, overhead_tokens=16) is None  # nothing beats the padded batch
    # a short prefix does not pay for its forward: 2 + 16 + 4 x 28 + 16 = 146 > 136
    assert prefill_plan([30, 30, 30, 30], prefix=2, overhead_tokens=16) is None
    # the prefix is capped by the shortest row; grouping what follows it: 10 + 16 + (2 x 0 + 16) + (2 x 40 + 16)
    # = 138 against groups without it (2 x 10 + 16 + 2 x 50 + 16 = 152) and the padded batch (4 x 50 + 16 = 216)
    assert prefill_plan([10, 50, 10, 50], prefix=12, overhead_tokens=16) == PrefillPlan(10, [[0, 2], [1, 3]])
    assert prefill_plan([], prefix=0) is None and prefill_plan([0, 0], prefix=0) is None


PROMPTS = ["Hi", "Tell me a long story about a dragon who guards a library of ancient maps and secret books",
           "What is 2 + 2?", "Explain, step by step and with care, how a bicycle's gears let a rider climb hills",
           "Name a colour", "Why?"]


# what a chat template does: every prompt opens with the same system text
SHARED = ["You are a careful assistant who answers briefly. " + p for p in PROMPTS]


@pytest.fixture(autouse=True)
def split_small_batches(monkeypatch):
    """The tiny batches here save a few tokens of padding per group: charge nothing per forward, so every test
    takes the grouped path (the default charge is sized to SmolLM2 on a CPU)."""
    monkeypatch.setattr(prefill, "GROUP_OVERHEAD_TOKENS", 0)


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_llama(seed=3)
    return model, tok


@pytest.mark.parametrize("prompts", [PROMPTS, SHARED], ids=["lengths", "shared-prefix"])
def test_grouped_cache_matches_the_padded_prefill(tiny, prompts):
    """The assembled cache holds the same keys and values as the padded batch's own forward on real tokens, built
    by length groups alone or from the shared prefix computed once."""
    model, tok = tiny
    enc = tokenize_prompts(tok, prompts, 256)
    P = enc["input_ids"].shape[1]
    shared = common_prefix_length(enc["input_ids"][:, :P - 1], enc["attention_mask"][:, :P - 1])
    lengths = [int(n) - 1 for n in enc["attention_mask"].sum(dim=1)]
    assert (prefill_plan(lengths, shared, overhead_tokens=0).prefix > 0) == (prompts is SHARED)
    cache = prefill_cache(model, enc["input_ids"], enc["attention_mask"], overhead_tokens=0)
    assert cache is not None
    ids, mask = enc["input_ids"][:, :P - 1], enc["attention_mask"][:, :P - 1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    plain = out.past_key_values if hasattr(out, "past_key_values") else out.cache
    real = mask.bool()[:, None, :, None]
    for layer in range(model.config.num_hidden_layers):
        for a, b in ((cache.layers[layer].keys, plain.layers[layer].keys),
                     (cache.layers[layer].values, plain.layers[layer].values)):
            assert a.shape == b.shape
            torch.testing.assert_close(a * real, b * real, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompts", [PROMPTS, SHARED], ids=["lengths", "shared-prefix"])
@pytest.mark.parametrize("lora", [False, True])
def test_rollout_samples_what_the_padded_prefill_samples(tiny, monkeypatch, lora, prompts):
    """Seeded rollout (molma.rl.rollout.generate): same tokens and log-probs with and without the grouped
    prefill (by length, or the shared prefix first), on the plain model and under LoRA (peft, adapters moved off
    their zero start)."""
    from molma.models.loading import apply_lora

    model, tok = tiny
    if lora:
        model = apply_lora(tiny_llama(seed=3)[0], LoraSettings(r=4, alpha=8))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
    real, calls = prefill_cache, []

    def grouped_prefill(*args, **kwargs):
        cache = real(*args, overhead_tokens=0)
        calls.append(cache is not None)
        return cache

    gen = GenerationSettings(max_new_tokens=8)
    monkeypatch.setattr(prefill, "prefill_cache", grouped_prefill)
    grouped, logp_grouped = generate(model, tok, prompts, gen, seed=11)
    monkeypatch.setattr(prefill, "prefill_cache", lambda *a, **k: None)
    padded, logp_padded = generate(model, tok, prompts, gen, seed=11)
    assert calls == [True]
    assert torch.equal(grouped.input_ids, padded.input_ids)
    torch.testing.assert_close(logp_grouped, logp_padded, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompts", [PROMPTS, SHARED], ids=["lengths", "shared-prefix"])
def test_evaluation_generation_is_unchanged_by_grouping(tiny, monkeypatch, prompts):
    model, tok = tiny
    real, calls = prefill_cache, []
    monkeypatch.setattr(prefill, "prefill_cache", lambda *a, **k: None)
    padded = generate_responses(model, tok, prompts, max_new_tokens=8, seed=5, batch_size=6, progress=False)

    def grouped_prefill(*args, **kwargs):
        cache = real(*args, overhead_tokens=0)
        calls.append(cache is not None)
        return cache

    monkeypatch.setattr(prefill, "prefill_cache", grouped_prefill)
    grouped = generate_responses(model, tok, prompts, max_new_tokens=8, seed=5, batch_size=6, progress=False)
    assert calls == [True] and grouped == padded


@pytest.mark.parametrize("prompts", [PROMPTS, SHARED], ids=["lengths", "shared-prefix"])
def test_training_forward_by_length_matches_the_padded_forward(tiny, prompts):
    """sequence_logprobs by prompt-length groups (after the shared prefix, computed once, when the prompts have
    one): the same log-probs, hidden states and gradients as the one forward over the padded batch (rows come
    back in their order)."""
    from molma.rl.rollout import batch_from_ids, sequence_logprobs

    model, tok = tiny
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    response_ids = [[11, 12, 13], [14, 15], [16, 17, 18, 19], [20], [21, 22], [23, 24, 25]]
    batch = batch_from_ids(prompt_ids, response_ids, tok.pad_token_id)
    results = {}
    for by_length in (False, True):
        model.zero_grad()
        logp, hidden = sequence_logprobs(model, batch, return_hidden=True, by_length=by_length)
        logp.sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results[by_length] = (logp.detach(), hidden.detach(), grads)
    model.zero_grad()
    plan = prompt_plan(batch, model)  # the path under test ran
    assert plan is not None and len(plan.groups) > 1 and (plan.prefix > 0) == (prompts is SHARED)
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[True][2], results[False][2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("prompts", [PROMPTS, SHARED], ids=["lengths", "shared-prefix"])
def test_trainable_critic_by_length_matches_the_padded_forward(tiny, prompts):
    """A trainable-backbone critic's values [K, B, T] and their gradients, by prompt-length groups (after the
    shared prefix when there is one) and padded."""
    from molma.rl.critic import Critic
    from molma.rl.rollout import batch_from_ids

    model, tok = tiny
    critic = Critic.from_reference(model, num_objectives=2, backbone="trainable")
    with torch.no_grad():
        critic.heads.linear.weight.normal_(0, 1.0)  # zero-initialised heads would make every value 0
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    batch = batch_from_ids(prompt_ids, [[11, 12], [13], [14, 15, 16], [17], [18, 19], [20]], tok.pad_token_id)
    plan = prompt_plan(batch, critic.backbone)
    assert plan is not None and (plan.prefix > 0) == (prompts is SHARED)
    results = {}
    for by_length in (False, True):
        critic.zero_grad()
        values = critic(batch, by_length=by_length)
        values.sum().backward()
        results[by_length] = (values.detach(), [p.grad.clone() for p in critic.parameters() if p.grad is not None])
    assert results[True][0].shape == (2, 6, 3) and results[True][0].abs().sum() > 0
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_active_dropout_keeps_each_rows_own_prefix(tiny):
    """A shared prefix would share its dropout noise across rows: not while a dropout is active."""
    from molma.models.loading import apply_lora
    from molma.models.prefill import shares_prefix

    model, _ = tiny
    assert shares_prefix(model.train()) and shares_prefix(model.eval())
    dropped = apply_lora(tiny_llama(seed=3)[0], LoraSettings(r=4, alpha=8, dropout=0.1))
    assert not shares_prefix(dropped.train()) and shares_prefix(dropped.eval())


def test_an_encoder_never_shares_a_prefix():
    """A bidirectional encoder's prefix tokens attend to what follows them: computing them once would be wrong."""
    from transformers import BertConfig, BertForSequenceClassification

    from molma.models.prefill import shares_prefix

    bert = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=32)).eval()
    assert not shares_prefix(bert)


def test_after_prefix_keeps_what_follows_the_shared_tokens():
    from molma.rl.rollout import batch_from_ids

    batch = batch_from_ids([[1, 2, 3, 4], [1, 2, 5]], [[9], [8, 7]], pad_id=0)
    part = batch.after_prefix(2)
    # row 0 keeps 3 4; row 1 keeps 5, its masked column holding part of the prefix
    assert part.prompt_len == 2 and part.input_ids.tolist() == [[3, 4, 9, 0], [2, 5, 8, 7]]
    assert part.attention_mask.tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert part.position_ids[:, :3].tolist() == [[0, 1, 2], [0, 0, 1]]
