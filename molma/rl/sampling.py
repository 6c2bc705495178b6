"""Batch-invariant sampling: every sequence draws its own random numbers from its own seed.

``model.generate(do_sample=True)`` draws from one global RNG for the whole batch, so a prompt's
response depends on which other prompts share its batch. Data-parallel training splits the experience
batch across processes and must reproduce the 1-process run, so each row samples by inversion of its own
distribution: the new token of row ``i`` at step ``t`` is the first whose cumulative probability under
``softmax(warp(logits))`` exceeds ``u``, where ``u`` is the ``t``-th uniform draw of a generator seeded by
``(seed, i)``. transformers has no per-row RNG, hence this small processor; it runs last in generate()'s
processor list, returns a row that only the drawn token survives, and generate() itself decodes greedily.

Why inversion (one uniform per row and token) and not the Gumbel-max trick (one per row and vocabulary
entry, used until 2026-12): drawing and transforming 49,152 float64 uniforms per row took 9.6 ms of each
84 ms SmolLM2 decoding step at batch 16 (measured); inversion needs a softmax and a cumulative sum.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import LogitsProcessor


def warp_logits(scores: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering; removed tokens get ``-inf``.

    Same conventions as transformers' warpers: top-p keeps the smallest set of most likely tokens whose
    probability mass reaches ``top_p`` (always at least one token); ``top_k = 0`` and ``top_p = 1``
    are off.
    """
    if temperature != 1.0:  # dividing by 1 changes nothing; skipping it saves a [B, V] pass per new token
        scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = torch.softmax(sorted_scores, dim=-1)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p  # mass before this token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def pick_by_inversion(probs: Tensor, uniforms: Tensor) -> Tensor:
    """[B] int64: for each row of ``probs`` [B, V] (a softmax; 0 for removed tokens), the first token whose
    cumulative probability exceeds that row's uniform draw ``uniforms`` [B] in [0, 1) times the row's total:
    a draw from the row's distribution. The cumulative sum is float64 (a float32 sum over a 49,152-token
    vocabulary drifts by up to ~1e-3); a token of probability 0 is never picked."""
    cdf = probs.double().cumsum_(dim=-1)
    total = cdf[:, -1:]
    # u * total < total, so the search always lands on a token of positive probability (rounding could give
    # total itself for u just below 1: the largest double under it is taken instead)
    target = torch.minimum(uniforms.double().to(cdf.device)[:, None] * total,
                           torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


def row_seed(seed: int, row: int) -> int:
    """Seed of the generator of global row ``row`` (stable across processes and batch layouts)."""
    return (seed * 1_000_003 + row * 7_919 + 17) % (2**63 - 1)


class RowSampler(LogitsProcessor):
    """Turns generate()'s greedy decoding into sampling with one generator per row (see module doc).

    It also keeps, per step, the log-probability of each drawn token under the *raw* logits it was given (before
    temperature, top-k and top-p: the policy's own distribution), so the rollout needs no second pass over the
    logits: ``logprobs`` [B, steps]."""

    def __init__(self, row_seeds: list[int], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        self.generators = [torch.Generator().manual_seed(s) for s in row_seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self._logprobs: list[Tensor] = []

    @property
    def logprobs(self) -> Tensor:
        return torch.stack(self._logprobs, dim=1) if self._logprobs else torch.zeros(len(self.generators), 0)

    def draw(self, scores: Tensor) -> Tensor:
        """[B] the tokens drawn for a step's ``scores`` [B, V] (each row's generator advances by one draw)."""
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"RowSampler has {len(self.generators)} row seeds for a batch of {scores.shape[0]}")
        raw = scores.float()
        warped = warp_logits(raw, self.temperature, self.top_k, self.top_p)
        probs = torch.softmax(warped, dim=-1)
        uniforms = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        picks = pick_by_inversion(probs, uniforms)
        if warped is raw:  # nothing warped: the sampling distribution is the policy's, its probability at hand
            logp = probs.gather(-1, picks[:, None]).squeeze(-1).log()
        else:
            logp = raw.gather(-1, picks[:, None]).squeeze(-1) - torch.logsumexp(raw, dim=-1)
        self._logprobs.append(logp)
        return picks

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        picks = self.draw(scores)
        # greedy decoding over this picks the drawn token: it alone is finite
        return torch.full_like(scores, float("-inf")).scatter_(-1, picks[:, None], 0.0)
