"""Batch-invariant sampling (molma.rl.sampling) and the padding data parallelism relies on."""

from __future__ import annotations

import math

import torch

from molma.data.chat import render_prompt
from molma.distributed import shard_rows as shard
from molma.rl.rollout import GenerationSettings, generate, pad_batch, pad_tokens, sequence_logprobs
from molma.rl.sampling import RowSampler, pick_by_inversion, row_seed, warp_logits

NEG = float("-inf")


def test_warp_logits_top_k_and_top_p_by_hand():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(warp_logits(scores, top_k=2)[0, 2:]).all()
    assert torch.isfinite(warp_logits(scores, top_k=2)[0, :2]).all()
    # top-p 0.7: 0.5 alone is < 0.7, 0.5 + 0.3 reaches it -> keep the first two
    kept = torch.isfinite(warp_logits(scores, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]
    # top-p 0.5: the first token's mass reaches it -> keep exactly one
    assert torch.isfinite(warp_logits(scores, top_p=0.5))[0].tolist() == [True, False, False, False]
    # temperature divides
    assert torch.allclose(warp_logits(torch.tensor([[2.0, 4.0]]), temperature=2.0), torch.tensor([[1.0, 2.0]]))


def test_inversion_picks_by_hand():
    # cumulative probabilities 0.6, 0.9, 1.0: u below 0.6 -> token 0, [0.6, 0.9) -> 1, [0.9, 1) -> 2;
    # the rows need not be normalised (6, 3, 1 is the same distribution)
    u = torch.tensor([0.0, 0.59, 0.61, 0.899, 0.91, 1.0 - 2.0**-53], dtype=torch.float64)
    for probs in ([0.6, 0.3, 0.1], [6.0, 3.0, 1.0]):
        assert pick_by_inversion(torch.tensor(probs).expand(6, 3), u).tolist() == [0, 0, 1, 1, 2, 2]
    # a token of probability 0 (removed) is skipped, even at the first position and at u's extremes
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).expand(3, 5)
    picks = pick_by_inversion(probs, torch.tensor([0.0, 0.5, 1.0 - 2.0**-53], dtype=torch.float64))
    assert picks.tolist() == [1, 3, 3]


def test_row_sampler_keeps_the_raw_log_probs_of_its_draws():
    """The log-probs a rollout returns: of the policy's own (raw) logits, also when the sampler warps them."""
    scores = torch.randn(3, 7)
    for kwargs in ({}, {"temperature": 0.5, "top_k": 3}):
        sampler = RowSampler([1, 2, 3], **kwargs)
        picks = [sampler.draw(scores) for _ in range(4)]
        expected = torch.stack([torch.log_softmax(scores, -1).gather(-1, p[:, None]).squeeze(-1) for p in picks], 1)
        torch.testing.assert_close(sampler.logprobs, expected)


def test_row_sampler_draws_from_the_softmax():
    probs = torch.tensor([0.6, 0.3, 0.1])
    scores = torch.log(probs).expand(4000, 3).contiguous()
    sampler = RowSampler([row_seed(0, i) for i in range(4000)])
    out = sampler(None, scores)
    picks = out.argmax(-1)
    assert torch.isfinite(out).sum(-1).eq(1).all()  # greedy decoding can only take the drawn token
    freq = torch.bincount(picks, minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03), freq  # 4 sigma ~ 0.03 at n = 4000


def test_row_sampler_never_picks_filtered_tokens():
    scores = torch.tensor([[1.0, 0.5, 0.0, NEG]]).expand(400, 4).contiguous()
    picks = RowSampler(list(range(400)), top_k=2)(None, scores).argmax(-1)
    assert set(picks.tolist()) == {0, 1}  # top-2 drops 0.0; -inf is never chosen


def test_row_sampler_rows_follow_their_own_generators():
    """A row's draws depend on its seed only, not on the other rows of the batch."""
    scores = torch.randn(5, 50)
    alone = RowSampler([row_seed(3, 4)])
    batch = RowSampler([row_seed(3, i) for i in range(5)])
    for _ in range(4):
        assert batch.draw(scores)[4] == alone.draw(scores[4:])[0]


def test_generation_is_the_same_whatever_the_batch(tiny_model):
    """Rows 2-3 sampled alone equal rows 2-3 of a 4-row batch: what lets R processes reproduce one."""
    model, tok = tiny_model
    texts = [render_prompt(tok, p) for p in ["Hi", "Tell me a long story about rivers", "Why?", "Name a fruit"]]
    settings = GenerationSettings(max_new_tokens=10)
    full, logp_full = generate(model, tok, texts, settings, seed=5)
    part, logp_part = generate(model, tok, texts[2:], settings, seed=5, rows=[2, 3])
    T = part.response_mask.shape[1]
    assert torch.equal(full.response_ids[2:, :T] * full.response_mask[2:, :T].long(),
                       part.response_ids * part.response_mask.long())
    assert torch.allclose(logp_full[2:, :T], logp_part, atol=1e-5)
    again, _ = generate(model, tok, texts, settings, seed=6)
    assert not torch.equal(again.response_ids, full.response_ids)  # the seed matters


def test_padding_a_batch_leaves_log_probs_unchanged(tiny_model):
    model, tok = tiny_model
    texts = [render_prompt(tok, p) for p in ["Hi", "Why is the sky blue?"]]
    batch, _ = generate(model, tok, texts, GenerationSettings(max_new_tokens=6), seed=1)
    T = batch.response_mask.shape[1]
    padded = pad_batch(batch, batch.prompt_len + 3, T + 2, tok.pad_token_id)
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, batch)
        lp_padded, _ = sequence_logprobs(model, padded)
    assert padded.input_ids.shape == (2, batch.input_ids.shape[1] + 5)
    assert torch.allclose(lp_padded[:, :T], lp, atol=1e-5) and torch.all(lp_padded[:, T:] == 0)
    assert pad_tokens(torch.ones(3, 2, T), T + 2).shape == (3, 2, T + 2)
    assert pad_tokens(torch.ones(2, T, 4), T + 1, dim=1).shape == (2, T + 1, 4)


def test_shard_splits_evenly_or_says_why():
    assert [list(shard(8, 2, r)) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    try:
        shard(6, 4, 0)
    except ValueError as err:
        assert "6" in str(err) and "4" in str(err)
    else:
        raise AssertionError("uneven split accepted")
    assert math.isclose(len(shard(64, 1, 0)), 64)


def test_tokenize_prompts_leaves_the_tokenizers_sides_alone():
    from molma.models import tiny_llama
    from molma.rl.rollout import tokenize_prompts

    _, tok = tiny_llama()
    tok.padding_side, tok.truncation_side = "right", "right"
    enc = tokenize_prompts(tok, ["a b c d e f", "a"], max_prompt_tokens=3)
    assert enc["attention_mask"][1, 0] == 0  # padded on the left for the rollout
    assert (tok.padding_side, tok.truncation_side) == ("right", "right")
