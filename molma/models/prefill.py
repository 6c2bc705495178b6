"""Prefill by prompt length and shared prefix: the prompt's KV cache built with one forward per group of similar
lengths, after the tokens every prompt shares.

A left-padded batch of prompts costs a forward over ``rows x longest prompt`` tokens, most of it padding when
the lengths differ (HH-RLHF red-teaming prompts run from ~15 to 96 tokens; on this CPU the prompt forward is
compute-bound and was ~1 s of a 2.7 s rollout), and much of the rest is the same tokens in every row: a chat
template's system prompt and role header (24 of the 39-46 tokens of SmolLM2's templated builtin prompts).
:func:`prefill_cache` computes that shared prefix once (:func:`common_prefix_length`), sorts the rows by the
length of what follows it, splits them into the contiguous groups that minimise the padded tokens plus a fixed
cost per extra forward (:func:`length_groups`, :func:`prefill_plan`: the prefix is shared only when that is
cheaper), runs the decoder on each group at its own width with the prefix's keys and values as its past, and
assembles the left-padded cache that ``generate`` continues from. transformers' ``generate`` has neither option
(its prefill is one forward over the padded batch, or fixed-size column chunks; prefix caching lives in serving
engines such as vLLM and SGLang), so it lives here.

Positions count real tokens only and padded keys are masked, so each row sees exactly what it would in the
padded batch; only the floating-point rounding of differently shaped matrix products differs.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

# a forward's fixed cost in tokens, what a new group must save in padding: fitted as seconds = fixed + per row x
# rows over 2-16 rows of SmolLM2 + LoRA rollouts in bf16 on one core of this CPU (`benchmarks/trainer.py --parts
# overhead`, session 14: 114 tokens for a no-grad forward, 40 for a forward + backward, idle,
# benchmarks/results/trainer_prefix_builtin_s14_amd.json; 95-113 / 38-75 beside an RL run); small groups also run
# the matrix products less efficiently. Between 16 and 96 the forward times of real-prompt batches differed by
# <= 4 % (160 was slower); 16, session 13's unmeasured estimate, split uniform prompts into groups that saved less
# than they cost
GROUP_OVERHEAD_TOKENS = 64


def length_groups(lengths: list[int], overhead_tokens: int | None = None, max_groups: int = 4) -> list[list[int]]:
    """Row indices grouped for the prefill: contiguous runs of the rows sorted by length that minimise
    ``sum(rows in group x longest in group) + overhead_tokens x groups`` (exact, by dynamic programming over
    the sorted rows), at most ``max_groups`` (``overhead_tokens`` default: :data:`GROUP_OVERHEAD_TOKENS`). Groups
    come shortest first; rows keep their order within a group."""
    overhead_tokens = GROUP_OVERHEAD_TOKENS if overhead_tokens is None else overhead_tokens
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


def new_cache(config):
    """An empty ``DynamicCache`` for ``config`` that keeps keys in their attention's dtype (:func:`keys_to_attend`):
    every cache molma builds for a prompt or hands to ``generate``."""
    return _attention_dtype_cache_class()(config=config)


def keys_to_attend(keys: Tensor, values: Tensor) -> Tensor:
    """``keys`` as the attention will read them: under autocast to the values' half-precision dtype, the rotary
    embedding's float32 cos / sin promote bf16 keys to float32, which sdpa and eager attention cast back to bf16
    at every call. Cached as float32, decoding would append to twice the bytes and cast the whole cache again at
    every step (tested: the same attention output bit for bit either way). Forwards that backpropagate keep them
    as they are: the gradients of keys shared by several rows or query heads (the shared prefix, grouped-query
    attention) are summed where the keys live, which must stay float32 (measured: bf16 keys moved a MOLMA step's
    gradient norms by ~0.06 %)."""
    device = keys.device.type
    if (keys.dtype != values.dtype and not (keys.requires_grad and torch.is_grad_enabled())
            and torch.is_autocast_enabled(device)
            and torch.get_autocast_dtype(device) == values.dtype):
        return keys.to(values.dtype)
    return keys


@functools.cache
def _attention_dtype_cache_class():
    from transformers import DynamicCache

    class AttentionDtypeCache(DynamicCache):
        """A ``DynamicCache`` storing :func:`keys_to_attend` of the keys it is given."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return super().update(keys_to_attend(key_states, value_states), value_states, layer_idx, *args,
                                  **kwargs)

    return AttentionDtypeCache


def _plain_decoder(model) -> bool:
    """A decoder-only transformers model (whose cache :func:`prefill_cache` can build)."""
    config = getattr(model, "config", None)
    return config is not None and not getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_decoder")


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading tokens all ``sequences`` share."""
    if not sequences:
        return 0
    n = min(len(seq) for seq in sequences)
    first = sequences[0]
    for seq in sequences[1:]:
        n = next((i for i in range(n) if seq[i] != first[i]), n)
    return n


def common_prefix_length(input_ids: Tensor, attention_mask: Tensor) -> int:
    """How many leading real tokens every row of a left-padded batch shares: a chat template's system prompt and
    role header (24 of the 39-46 tokens of SmolLM2's templated builtin prompts)."""
    lengths = attention_mask.sum(dim=1).tolist()
    P = input_ids.shape[1]
    return shared_prefix_length([row[P - n:] for row, n in zip(input_ids.tolist(), lengths)])


@dataclass(frozen=True)
class PrefillPlan:
    """How :func:`prefill_cache` builds a batch's cache: the first ``prefix`` real tokens of every row once (they
    are the same tokens), then each group of rows (:func:`length_groups` of what follows the prefix) with one
    forward at its own width."""

    prefix: int
    groups: list[list[int]]


def _padded_cost(lengths: list[int], groups: list[list[int]], overhead_tokens: int) -> int:
    return sum(len(g) * max(lengths[i] for i in g) + overhead_tokens for g in groups)


def prefill_plan(lengths: list[int], prefix: int = 0, overhead_tokens: int | None = None,
                 max_groups: int = 4) -> PrefillPlan | None:
    """The cheaper of two ways to build the cache of rows with ``lengths`` tokens (the columns before the last):
    groups of similar length (:func:`length_groups`), or the ``prefix`` tokens every row shares computed once
    (one row; ``prefix`` tokens plus one forward's overhead) and then groups of what follows it. Costs count
    padded tokens plus ``overhead_tokens`` per forward; None when neither beats one forward over the padded batch
    (what ``generate`` does itself). ``overhead_tokens`` default: :data:`GROUP_OVERHEAD_TOKENS`."""
    if not lengths or max(lengths) == 0:
        return None
    overhead_tokens = GROUP_OVERHEAD_TOKENS if overhead_tokens is None else overhead_tokens
    padded = len(lengths) * max(lengths) + overhead_tokens
    groups = length_groups(lengths, overhead_tokens, max_groups)
    best_cost, best = _padded_cost(lengths, groups, overhead_tokens), PrefillPlan(0, groups)
    prefix = min(prefix, min(lengths))
    if prefix > 0:
        rest = [n - prefix for n in lengths]
        rest_groups = length_groups(rest, overhead_tokens, max_groups)
        cost = prefix + overhead_tokens + _padded_cost(rest, rest_groups, overhead_tokens)
        if cost < best_cost:
            best_cost, best = cost, PrefillPlan(prefix, rest_groups)
    return best if best_cost < padded else None


def shares_prefix(model) -> bool:
    """Whether computing a shared prefix once gives every row what its own forward would: only in a causal
    decoder (an encoder's prefix tokens attend to what follows them, e.g. a BERT reward model), and not while a
    dropout is active (each row draws its own noise; a shared prefix would share it)."""
    causal = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    if not causal or not all(causal):
        return False
    if not model.training:
        return True
    config = getattr(model, "config", None)
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return False
    return not any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in model.modules())


class SharedPrefix:
    """The keys and values of the prompt tokens every row of a batch shares (:func:`common_prefix_length`),
    computed once by ``model``'s decoder on one row; :meth:`inputs` gives the model arguments of rows that continue
    after it. Gradients flow into the prefix's forward when enabled (its keys and values serve every row)."""

    def __init__(self, model, prefix_ids: Tensor):
        self.length = prefix_ids.shape[-1]
        self.config = model.config
        self.argument = cache_argument(model)
        self.cache = new_cache(self.config)
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        decoder(input_ids=prefix_ids.view(1, -1), attention_mask=torch.ones_like(prefix_ids.view(1, -1)),
                position_ids=torch.arange(self.length, device=prefix_ids.device)[None], use_cache=True,
                **{self.argument: self.cache})

    def expanded(self, rows: int):
        """A fresh cache holding the prefix for ``rows`` rows (views until a forward appends to it)."""
        cache = new_cache(self.config)
        for layer, cached in enumerate(self.cache.layers):
            cache.update(cached.keys.expand(rows, -1, -1, -1), cached.values.expand(rows, -1, -1, -1), layer)
        return cache

    def inputs(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> dict:
        """Model arguments for rows whose tokens ``input_ids`` (mask, positions counted from 0) follow the prefix:
        the prefix's columns prepended to the mask, positions after it, and its keys and values as the past."""
        rows = input_ids.shape[0]
        return {"input_ids": input_ids,
                "attention_mask": torch.cat([attention_mask.new_ones((rows, self.length)), attention_mask], dim=1),
                "position_ids": position_ids + self.length, self.argument: self.expanded(rows)}


def prefilled(model, input_ids: Tensor, attention_mask: Tensor) -> dict:
    """Keyword arguments for ``model.generate`` that hand it the prompt's cache built by :func:`prefill_cache`
    (when the padded batch's own prefill is as good, an empty :func:`new_cache` that ``generate`` fills, for models
    whose default cache is a ``DynamicCache``); the one call site of the rollout and evaluation. ``{}`` for other
    models (``generate`` then builds the cache they need)."""
    if not _plain_decoder(model):
        return {}
    cache = prefill_cache(model, input_ids, attention_mask)
    if cache is None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        dynamic = getattr(type(base), "_supports_default_dynamic_cache", None)
        if not (callable(dynamic) and dynamic()):
            return {}
        cache = new_cache(model.config)
    return {cache_argument(model): cache}


@torch.no_grad()
def prefill_cache(model, input_ids: Tensor, attention_mask: Tensor, overhead_tokens: int | None = None,
                  max_groups: int = 4, share_prefix: bool = True):
    """The KV cache (a ``DynamicCache``) of the first ``P - 1`` columns of a left-padded prompt batch
    ``[B, P]``, built as :func:`prefill_plan` says (the shared prefix once when ``share_prefix``, then one forward
    per group of similar length); ``generate`` given it and the whole batch runs the last column and decodes on.
    None when the padded batch's own prefill is as cheap or the model is not a plain decoder-only transformers
    model."""
    if not _plain_decoder(model):
        return None
    config = model.config
    B, P = input_ids.shape
    if P < 2:
        return None
    lengths = [max(int(n) - 1, 0) for n in attention_mask.sum(dim=1).tolist()]  # real tokens before the last
    shared = (common_prefix_length(input_ids[:, :P - 1], attention_mask[:, :P - 1])
              if share_prefix and shares_prefix(model) else 0)
    plan = prefill_plan(lengths, shared, overhead_tokens, max_groups)
    if plan is None:
        return None
    C, device = plan.prefix, input_ids.device
    name = cache_argument(model)
    prefix = None
    if C:  # the shared tokens, once: row 0's first C real tokens
        first = P - 1 - lengths[0]
        prefix = SharedPrefix(model, input_ids[0, first:first + C])
    prefix_cache = None if prefix is None else prefix.cache
    decoder = model.get_decoder()
    parts: list[tuple[Tensor, int, object]] = []  # (row indices, width after the prefix, the group's cache)
    for rows in plan.groups:
        rest = torch.tensor([lengths[r] - C for r in rows], device=device)
        width = int(rest.max())
        if width == 0:
            continue  # nothing after the prefix (or one-token prompts): the prefix, written below, is all
        idx = torch.tensor(rows, device=device)
        # the group's own columns: each row's tokens after the prefix, right-aligned (a row's earlier columns,
        # padding or its part of the prefix, are masked)
        mask = (torch.arange(width, device=device) >= width - rest[:, None]).to(attention_mask.dtype)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        ids = input_ids[idx, P - 1 - width:P - 1]
        if prefix is not None:  # every row of the group attends to the shared prefix
            inputs = prefix.inputs(ids, mask, positions)
        else:
            inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                      name: new_cache(config)}
        decoder(**inputs, use_cache=True)
        parts.append((idx, width, inputs[name]))
    # a layer that keeps fewer columns (a sliding window shorter than the prompt) or no key tensor (a recurrent
    # layer of a hybrid model) cannot be assembled this way: the padded prefill then
    caches = [(C + width, group_cache) for _, width, group_cache in parts]
    if prefix_cache is not None:
        caches.append((C, prefix_cache))
    if not caches or any(not isinstance(getattr(layer, "keys", None), torch.Tensor) or layer.keys.shape[-2] != n
                         for n, cache in caches for layer in cache.layers):
        return None
    # each row's columns end at P - 1: [padding | prefix | its own tokens]
    starts = torch.tensor([P - 1 - n for n in lengths], device=device)
    prefix_columns = starts[:, None] + torch.arange(C, device=device)  # [B, C]
    full = new_cache(config)
    for layer in range(len(caches[0][1].layers)):
        assembled = []
        for tensors in ("keys", "values"):
            t0 = getattr(caches[0][1].layers[layer], tensors)
            out = t0.new_zeros((B, t0.shape[1], P - 1, t0.shape[3]))
            for idx, width, group_cache in parts:  # the groups' blocks (their masked columns land on padding or
                out[idx, :, P - 1 - width:] = getattr(group_cache.layers[layer], tensors)[:, :, C:]  # the prefix)
            if prefix_cache is not None:
                shared_block = getattr(prefix_cache.layers[layer], tensors)  # [1, heads, C, head dim]
                index = prefix_columns[:, None, :, None].expand(B, out.shape[1], C, out.shape[3])
                out.scatter_(2, index, shared_block.expand(B, -1, -1, -1))
            assembled.append(out)
        full.update(*assembled, layer)
    return full
