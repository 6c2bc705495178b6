"""Prefill by prompt length: the prompt's KV cache built with one forward per group of similar lengths.

A left-padded batch of prompts costs a forward over ``rows x longest prompt`` tokens, most of it padding when
the lengths differ (HH-RLHF red-teaming prompts run from ~15 to 96 tokens; on this CPU the prompt forward is
compute-bound and was ~1 s of a 2.7 s rollout). :func:`prefill_cache` sorts the rows by length, splits them
into the contiguous groups that minimise the padded tokens plus a fixed cost per extra forward
(:func:`length_groups`), runs the decoder on each group at its own width, and assembles the left-padded cache
that ``generate`` continues from. transformers' ``generate`` has no such option (its prefill is one forward
over the padded batch, or fixed-size column chunks), so it lives here.

Positions count real tokens only and padded keys are masked, so each row sees exactly what it would in the
padded batch; only the floating-point rounding of differently shaped matrix products differs.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

# a forward's fixed cost in prompt tokens: a prompt token costs ~1.4 ms in bf16 on one core of this CPU (measured:
# 16 x 46 tokens in ~1.0 s), a forward's per-layer Python and launches an estimated ~15-20 ms for SmolLM2's 30
# layers (not measured apart); a new group must save more padding than this
GROUP_OVERHEAD_TOKENS = 16


def length_groups(lengths: list[int], overhead_tokens: int = GROUP_OVERHEAD_TOKENS,
                  max_groups: int = 4) -> list[list[int]]:
    """Row indices grouped for the prefill: contiguous runs of the rows sorted by length that minimise
    ``sum(rows in group x longest in group) + overhead_tokens x groups`` (exact, by dynamic programming over
    the sorted rows), at most ``max_groups``. Groups come shortest first; rows keep their order within a group."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sorted_len = [lengths[i] for i in order]
    n = len(order)
    if n == 0:
        return []
    inf = float("inf")
    # best[g][j]: least cost of the first j sorted rows in g groups; cut[g][j]: where the last group starts
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[g - 1][i] + (j - i) * sorted_len[j - 1] + overhead_tokens
                if cost < best[g][j]:
                    best[g][j], cut[g][j] = cost, i
    groups_used = min(range(1, max_groups + 1), key=lambda g: (best[g][n], g))
    bounds, j = [], n
    for g in range(groups_used, 0, -1):
        bounds.append((cut[g][j], j))
        j = cut[g][j]
    return [sorted(order[i:j]) for i, j in reversed(bounds)]


def cache_argument(model) -> str:
    """The name under which the installed transformers takes a KV cache (``cache`` since 5.x's rename,
    ``past_key_values`` before)."""
    params = inspect.signature(model.get_decoder().forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def prefilled(model, input_ids: Tensor, attention_mask: Tensor) -> dict:
    """Keyword arguments for ``model.generate`` that hand it the prompt's cache built by :func:`prefill_cache`
    (``{}`` when the padded batch's own prefill is as good); the one call site of the rollout and evaluation."""
    cache = prefill_cache(model, input_ids, attention_mask)
    return {} if cache is None else {cache_argument(model): cache}


@torch.no_grad()
def prefill_cache(model, input_ids: Tensor, attention_mask: Tensor, overhead_tokens: int = GROUP_OVERHEAD_TOKENS,
                  max_groups: int = 4):
    """The KV cache (a ``DynamicCache``) of the first ``P - 1`` columns of a left-padded prompt batch
    ``[B, P]``, built group by group (:func:`length_groups`); ``generate`` given it and the whole batch runs
    the last column and decodes on. None when one group is best (the padded batch's own prefill is the same
    work) or the model is not a plain decoder-only transformers model."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not hasattr(model, "get_decoder"):
        return None
    B, P = input_ids.shape
    lengths = [max(int(n) - 1, 0) for n in attention_mask.sum(dim=1).tolist()]  # real tokens before the last
    groups = length_groups(lengths, overhead_tokens, max_groups)
    if len(groups) <= 1 or P < 2:
        return None
    decoder = model.get_decoder()
    name = cache_argument(model)
    parts: list[tuple[Tensor, int, DynamicCache]] = []  # (row indices, width, the group's cache)
    for rows in groups:
        width = max(lengths[r] for r in rows)
        if width == 0:
            continue  # one-token prompts: nothing before the last column
        idx = torch.tensor(rows, device=input_ids.device)
        ids = input_ids[idx, P - 1 - width:P - 1]
        mask = attention_mask[idx, P - 1 - width:P - 1]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        group_cache = DynamicCache(config=config)
        decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{name: group_cache})
        parts.append((idx, width, group_cache))
    # a layer that keeps fewer columns (a sliding window shorter than the prompt) or no key tensor (a recurrent
    # layer of a hybrid model) cannot be assembled this way: the padded prefill then
    if any(not isinstance(getattr(layer, "keys", None), torch.Tensor) or layer.keys.shape[-2] != width
           for _, width, group_cache in parts for layer in group_cache.layers):
        return None
    full = DynamicCache(config=config)
    for layer in range(len(parts[-1][2].layers)):
        keys = values = None
        for idx, width, group_cache in parts:
            k, v = group_cache.layers[layer].keys, group_cache.layers[layer].values
            if keys is None:
                keys = k.new_zeros((B, k.shape[1], P - 1, k.shape[3]))
                values = v.new_zeros((B, v.shape[1], P - 1, v.shape[3]))
            keys[idx, :, P - 1 - width:] = k
            values[idx, :, P - 1 - width:] = v
        full.update(keys, values, layer)
    return full
