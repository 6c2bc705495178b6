"""Rollout: sample responses from the policy and compute token log-probabilities.

Sequences are laid out as ``[left-padded prompt | response right-padded after EOS]``: all prompts end at
the same column ``P``, so response token ``t`` sits at column ``P + t`` and its log-probability comes
from the logits at column ``P + t - 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import LogitsProcessorList

from molma.models.prefill import (
    PrefillPlan,
    SharedPrefix,
    common_prefix_length,
    prefill_plan,
    prefilled,
    shares_prefix,
)
from molma.rl.sampling import RowSampler, row_seed

if TYPE_CHECKING:
    from molma.distributed import Layout


@dataclass
class GenerationSettings:
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True
    max_prompt_tokens: int = 256


@dataclass
class Batch:
    """Token layout of B prompt+response sequences."""

    input_ids: Tensor  # [B, P + T]
    attention_mask: Tensor  # [B, P + T]
    prompt_len: int  # P
    response_mask: Tensor  # [B, T] float, 1 on response tokens up to and including EOS

    @property
    def position_ids(self) -> Tensor:
        # Left padding: positions count real tokens only, as generate() does.
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @property
    def response_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_len:]

    def select(self, idx: Tensor) -> Batch:
        return Batch(self.input_ids[idx], self.attention_mask[idx], self.prompt_len, self.response_mask[idx])

    @property
    def prompt_lengths(self) -> list[int]:
        """Real (unpadded) prompt tokens of each row."""
        return self.attention_mask[:, :self.prompt_len].sum(dim=1).tolist()

    def after_prefix(self, n: int) -> Batch:
        """The same sequences without each row's first ``n`` real prompt tokens (a prefix every row shares, whose
        keys and values :class:`molma.models.prefill.SharedPrefix` computes once), cropped to the longest prompt
        left (at least one column). Positions then count from the first token after the prefix."""
        P = self.prompt_len
        lengths = self.attention_mask[:, :P].sum(dim=1)
        mask = self.attention_mask.clone()
        if n:
            first_kept = (P - lengths + n)[:, None]  # each row's first real column after the prefix
            mask[:, :P] *= (torch.arange(P, device=mask.device) >= first_kept).to(mask.dtype)
        width = max(int((lengths - n).max()) if lengths.numel() else 0, 1)
        return Batch(self.input_ids[:, P - width:], mask[:, P - width:], width, self.response_mask)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.prompt_len,
                     self.response_mask.to(device))


def batch_from_ids(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> Batch:
    """The :class:`Batch` layout of token-id lists: prompts left-padded to the longest, responses
    right-padded to the longest (padding masked; the response mask covers every given response token)."""
    P = max((len(p) for p in prompt_ids), default=0)
    T = max((len(r) for r in response_ids), default=0)
    B = len(prompt_ids)
    input_ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + T), dtype=torch.long)
    response_mask = torch.zeros((B, T))
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[i, P - len(p):P + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[i, P - len(p):P + len(r)] = 1
        response_mask[i, :len(r)] = 1.0
    return Batch(input_ids, attention_mask, P, response_mask)


def response_mask_from_ids(response_ids: Tensor, stop_ids: set[int]) -> Tensor:
    """1 on every response token up to and including the first stop token, 0 after it."""
    is_stop = torch.zeros_like(response_ids, dtype=torch.bool)
    for sid in stop_ids:
        is_stop |= response_ids == sid
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    return (stops_before == 0).float()


def tokenize_prompts(tokenizer, texts: list[str], max_prompt_tokens: int) -> dict[str, Tensor]:
    """Left-padded, left-truncated prompt batch (the end of a long dialogue is what matters); the
    tokenizer's own padding and truncation sides are left as they were."""
    from molma.models.loading import tokenizer_sides

    with tokenizer_sides(tokenizer, padding="left", truncation="left"):
        return tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                         max_length=max_prompt_tokens, add_special_tokens=False)


@torch.no_grad()
def generate(model, tokenizer, texts: list[str], settings: GenerationSettings, seed: int,
             rows: list[int] | None = None, synced: bool = False, by_length: bool = True) -> tuple[Batch, Tensor]:
    """Sample one response per prompt text (already chat-templated). Returns the batch layout and the
    sampling policy's log-probabilities [B, T] of the sampled tokens, from the raw logits of each decoding step
    (kept by the sampler; no second forward pass).

    Sampling is batch-invariant (:mod:`molma.rl.sampling`): text ``i`` uses the generator of row
    ``rows[i]`` (default ``i``), so a process holding rows 32..63 of the experience draws exactly what a
    single process holding all 64 rows draws for them.

    ``synced``: every process of a sharded (FSDP) model must take part in every forward pass, so the
    processes keep decoding until all of them are done (transformers' ``synced_gpus``).

    ``by_length``: the prompt's cache built after the shared prefix and by groups of similar length
    (:mod:`molma.models.prefill`; off for a sharded model, whose blocks run only inside its root's forward)."""
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in tokenize_prompts(tokenizer, texts, settings.max_prompt_tokens).items()}
    rows = list(range(len(texts))) if rows is None else rows
    if len(rows) != len(texts):
        raise ValueError(f"{len(rows)} row indices for {len(texts)} prompts")
    was_training = model.training
    model.eval()
    stop_ids = _stop_ids(tokenizer, model)
    sampler = RowSampler([row_seed(seed, r) for r in rows], settings.temperature, settings.top_k,
                         settings.top_p) if settings.do_sample else None
    out = model.generate(
        **enc,
        # the prompt's cache after the shared prefix, by groups of similar length (molma.models.prefill); a sharded
        # model keeps the padded prefill
        **(prefilled(model, enc["input_ids"], enc["attention_mask"]) if by_length and not synced else {}),
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,  # greedy over the sampler's one surviving token = sampling (see molma.rl.sampling)
        logits_processor=LogitsProcessorList([sampler] if sampler is not None else []),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(stop_ids),
        return_dict_in_generate=True,
        output_logits=sampler is None,  # greedy: the log-probs come from the logits below
        synced_gpus=synced,
    )
    model.train(was_training)
    P = enc["input_ids"].shape[1]
    seq = out.sequences
    response_ids = seq[:, P:]
    T = response_ids.shape[1]
    if sampler is not None:
        logp = sampler.logprobs[:, :T].to(device)
    else:  # one step at a time: a [B, T, V] stack and its log-softmax would be two fresh copies of every step's
        # logits (75 MB each at batch 16, 24 tokens, SmolLM2's vocabulary)
        logp = torch.stack([torch.log_softmax(step.float(), dim=-1).gather(-1, response_ids[:, t, None]).squeeze(-1)
                            for t, step in enumerate(out.logits[:T])], dim=1)
    resp_mask = response_mask_from_ids(response_ids, stop_ids)
    attn = torch.cat([enc["attention_mask"], resp_mask.long()], dim=1)
    return Batch(seq, attn, P, resp_mask), logp * resp_mask


def finished_responses(batch: Batch, tokenizer, model) -> Tensor:
    """[B] bool: the response ended with a stop token (False: cut at ``max_new_tokens``)."""
    ids = batch.response_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for sid in _stop_ids(tokenizer, model):
        done |= (ids == sid).any(dim=1)
    return done


def seen_prompt(tokenizer, prompt: str, n_rendered: int, max_prompt_tokens: int) -> str:
    """The part of ``prompt`` the policy saw when its chat-templated form (``n_rendered`` tokens) was
    left-truncated to ``max_prompt_tokens``: the prompt's last tokens, as many as fit after the template's
    own tokens (the prompt itself when nothing was cut)."""
    if n_rendered <= max_prompt_tokens:
        return prompt
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    keep = max(0, len(ids) - (n_rendered - max_prompt_tokens))
    return tokenizer.decode(ids[len(ids) - keep:]) if keep else ""


def _stop_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(eos)
    return {i for i in ids if i is not None}


def sequence_logprobs(model, batch: Batch, return_hidden: bool = False, by_length: bool = True
                      ) -> tuple[Tensor, Tensor | None]:
    """log pi(a_t | s_t) of the response tokens [B, T] (grad flows if enabled), and optionally the last
    hidden states at the positions that predict them [B, T, H] (used by a frozen-backbone critic).

    ``by_length``: the prompt tokens every row shares computed once and one forward per group of rows with similar
    prompt lengths, each cropped to its own longest prompt (:func:`by_prompt_length`), instead of one over the
    batch padded to the longest; the rows' results are the same up to rounding. Off for sharded (FSDP) models,
    whose processes must run the same forwards."""
    return by_prompt_length(batch, lambda part, prefix: _sequence_logprobs(model, part, return_hidden, prefix),
                            by_length, model=model)


def by_prompt_length(batch: Batch, forward: Callable[[Batch, SharedPrefix | None], Any], enabled: bool = True,
                     batch_dim: int = 0, model=None):
    """``forward(part, prefix)`` run once per group of rows with similar prompt lengths, each group cropped to its
    own longest prompt, and the results put back in row order along ``batch_dim``; the plan (groups, shared
    prefix) is :func:`molma.models.prefill.prefill_plan`'s. ``model``: the model ``forward`` runs; given it, the
    prompt tokens every row shares (a chat template's system prompt) are computed once
    (:class:`molma.models.prefill.SharedPrefix`, where :func:`molma.models.prefill.shares_prefix` allows it) and
    each group's ``part`` holds only what follows them, ``prefix`` their keys and values (else None).
    ``forward`` returns a tensor or a tuple of tensors (or None); per-row results must not depend on the prompt's
    padding (true of a forward that masks it and counts positions from the first real token). ``enabled=False``,
    or nothing to gain: one call on the whole batch."""
    plan = prompt_plan(batch, model) if enabled else None
    if plan is None:
        return forward(batch, None)
    prefix = None
    if plan.prefix:
        first = batch.prompt_len - batch.prompt_lengths[0]
        prefix = SharedPrefix(model, batch.input_ids[0, first:first + plan.prefix])
    outputs = []
    for rows in plan.groups:
        outputs.append(forward(batch.select(torch.tensor(rows, device=batch.input_ids.device))
                               .after_prefix(plan.prefix), prefix))
    inverse = torch.argsort(torch.tensor([r for rows in plan.groups for r in rows]))

    def join(parts: list[Tensor | None]) -> Tensor | None:
        if parts[0] is None:
            return None
        return torch.cat(parts, dim=batch_dim).index_select(batch_dim, inverse.to(parts[0].device))

    if isinstance(outputs[0], tuple):
        return tuple(join([out[i] for out in outputs]) for i in range(len(outputs[0])))
    return join(outputs)


def prompt_plan(batch: Batch, model=None) -> PrefillPlan | None:
    """How :func:`by_prompt_length` splits ``batch`` (:func:`molma.models.prefill.prefill_plan` of its prompt
    lengths): the prompt tokens every row shares once when ``model`` is given and may share them
    (:func:`molma.models.prefill.shares_prefix`), then groups of similar length; None: one forward is as cheap."""
    P, lengths = batch.prompt_len, batch.prompt_lengths
    shared = 0
    if model is not None and lengths and shares_prefix(model):
        # every row keeps at least its last prompt token: its position predicts the response's first
        shared = max(min(common_prefix_length(batch.input_ids[:, :P], batch.attention_mask[:, :P]),
                         min(lengths) - 1), 0)
    return prefill_plan(lengths, shared)


def model_inputs(batch: Batch, prefix: SharedPrefix | None = None) -> dict:
    """The model arguments of ``batch`` (ids, mask, positions counted from each row's first real token), after
    ``prefix``'s tokens when given."""
    if prefix is None:
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                "position_ids": batch.position_ids}
    return prefix.inputs(batch.input_ids, batch.attention_mask, batch.position_ids)


def _sequence_logprobs(model, batch: Batch, return_hidden: bool, prefix: SharedPrefix | None = None
                       ) -> tuple[Tensor, Tensor | None]:
    T = batch.response_mask.shape[1]
    out = model(
        **model_inputs(batch, prefix),
        output_hidden_states=return_hidden,
        logits_to_keep=T + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # predicts response tokens 0..T-1
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    hidden = out.hidden_states[-1][:, batch.prompt_len - 1:-1] if return_hidden else None
    return logp * batch.response_mask, hidden


def pad_batch(batch: Batch, prompt_len: int, response_len: int, pad_id: int) -> Batch:
    """The same sequences with the prompt left-padded to ``prompt_len`` and the response right-padded
    to ``response_len`` (padding is masked, positions count real tokens, so the model sees the same)."""
    left = prompt_len - batch.prompt_len
    right = response_len - batch.response_mask.shape[1]
    if left == 0 and right == 0:
        return batch
    ids = F.pad(batch.input_ids, (left, right), value=pad_id)
    attn = F.pad(batch.attention_mask, (left, right), value=0)
    return Batch(ids, attn, prompt_len, F.pad(batch.response_mask, (0, right), value=0.0))


def pad_tokens(x: Tensor | None, response_len: int, dim: int = -1) -> Tensor | None:
    """Right-pad a per-response-token tensor with zeros along ``dim`` to ``response_len``."""
    if x is None:
        return None
    dim = dim % x.dim()
    right = response_len - x.shape[dim]
    if right == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, right]
    return F.pad(x, pad, value=0.0)


def gather_rollout(layout: Layout, pad_id: int, batch: Batch, logp_old: Tensor, logp_ref: Tensor,
                   ref_hidden: Tensor | None, values_old: Tensor | None, scores: Tensor, responses: list[str]) -> tuple:
    """Every process's rollout rows (``layout.rows``), padded to common lengths and concatenated in
    rank order, so that every process holds the whole experience (one process: unchanged).
    ``values_old`` is None without a critic (grpo / rloo) and stays None."""
    P = layout.all_max(batch.prompt_len)
    T = layout.all_max(batch.response_mask.shape[1])
    mine = pad_batch(batch, P, T, pad_id)
    full = Batch(layout.gather(mine.input_ids), layout.gather(mine.attention_mask), P,
                 layout.gather(mine.response_mask))
    hidden = None if ref_hidden is None else layout.gather(pad_tokens(ref_hidden, T, dim=1))
    return (full, layout.gather(pad_tokens(logp_old, T)), layout.gather(pad_tokens(logp_ref, T)), hidden,
            None if values_old is None else layout.gather(pad_tokens(values_old, T), dim=1),
            layout.gather(scores, dim=1),
            layout.gather_objects(responses))
