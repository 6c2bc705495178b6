"""Batch-invariant sampling: every sequence draws its own random numbers from its own seed.

``model.generate(do_sample=True)`` draws from one global RNG for the whole batch, so a prompt's
response depends on which other prompts share its batch. Data-parallel training splits the experience
batch across processes and must reproduce the 1-process run, so we sample with the Gumbel-max trick
instead: ``argmax(warp(logits) + Gumbel noise)`` is a draw from ``softmax(warp(logits))``, and the noise
of row ``i`` at step ``t`` is the ``t``-th draw of a generator seeded by ``(seed, i)``. transformers has
no per-row RNG, hence this small processor; it runs last in generate()'s processor list and generate()
itself decodes greedily.
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


def gumbel_noise(generator: torch.Generator, n: int) -> Tensor:
    """``n`` independent standard Gumbel draws, ``-log(-log(U))``, with U kept away from 0 and 1."""
    return gumbel_rows([generator], n)[0]


def gumbel_rows(generators: list[torch.Generator], n: int) -> Tensor:
    """[len(generators), n] float32: row ``i`` is :func:`gumbel_noise` of ``generators[i]`` (the same numbers),
    drawn into one buffer and transformed in place (one pass over the batch instead of five new tensors per row
    and new token)."""
    u = torch.empty(len(generators), n, dtype=torch.float64)
    for row, generator in zip(u, generators):
        torch.rand(n, generator=generator, dtype=torch.float64, out=row)
    return u.clamp_(1e-12, 1.0 - 1e-12).log_().neg_().log_().neg_().float()


def row_seed(seed: int, row: int) -> int:
    """Seed of the generator of global row ``row`` (stable across processes and batch layouts)."""
    return (seed * 1_000_003 + row * 7_919 + 17) % (2**63 - 1)


class GumbelSampler(LogitsProcessor):
    """Turns generate()'s greedy decoding into sampling with one generator per row (see module doc)."""

    def __init__(self, row_seeds: list[int], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        self.generators = [torch.Generator().manual_seed(s) for s in row_seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"GumbelSampler has {len(self.generators)} row seeds for a batch of {scores.shape[0]}")
        warped = warp_logits(scores.float(), self.temperature, self.top_k, self.top_p)
        noise = gumbel_rows(self.generators, scores.shape[-1]).to(scores.device)
        return warped + noise  # -inf stays -inf: filtered tokens are never chosen
