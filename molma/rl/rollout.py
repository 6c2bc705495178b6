"""Rollout: sample responses from the policy and compute token log-probabilities.

Sequences are laid out as ``[left-padded prompt | response right-padded after EOS]``: all prompts end at
the same column ``P``, so response token ``t`` sits at column ``P + t`` and its log-probability comes
from the logits at column ``P + t - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import LogitsProcessorList

from molma.rl.sampling import GumbelSampler, row_seed


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


def response_mask_from_ids(response_ids: Tensor, stop_ids: set[int]) -> Tensor:
    """1 on every response token up to and including the first stop token, 0 after it."""
    is_stop = torch.zeros_like(response_ids, dtype=torch.bool)
    for sid in stop_ids:
        is_stop |= response_ids == sid
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    return (stops_before == 0).float()


def tokenize_prompts(tokenizer, texts: list[str], max_prompt_tokens: int) -> dict[str, Tensor]:
    """Left-padded, left-truncated prompt batch (the end of a long dialogue is what matters)."""
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                     max_length=max_prompt_tokens, add_special_tokens=False)


@torch.no_grad()
def generate(model, tokenizer, texts: list[str], settings: GenerationSettings, seed: int,
             rows: list[int] | None = None, synced: bool = False) -> tuple[Batch, Tensor]:
    """Sample one response per prompt text (already chat-templated). Returns the batch layout and the
    sampling policy's log-probabilities [B, T] of the sampled tokens, computed from the raw logits that
    generate() returns (no second forward pass).

    Sampling is batch-invariant (:mod:`molma.rl.sampling`): text ``i`` uses the generator of row
    ``rows[i]`` (default ``i``), so a process holding rows 32..63 of the experience draws exactly what a
    single process holding all 64 rows draws for them.

    ``synced``: every process of a sharded (FSDP) model must take part in every forward pass, so the
    processes keep decoding until all of them are done (transformers' ``synced_gpus``)."""
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in tokenize_prompts(tokenizer, texts, settings.max_prompt_tokens).items()}
    rows = list(range(len(texts))) if rows is None else rows
    if len(rows) != len(texts):
        raise ValueError(f"{len(rows)} row indices for {len(texts)} prompts")
    was_training = model.training
    model.eval()
    stop_ids = _stop_ids(tokenizer, model)
    processors = []
    if settings.do_sample:
        processors.append(GumbelSampler([row_seed(seed, r) for r in rows], settings.temperature,
                                        settings.top_k, settings.top_p))
    out = model.generate(
        **enc,
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,  # greedy over Gumbel-perturbed scores = sampling (see molma.rl.sampling)
        logits_processor=LogitsProcessorList(processors),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(stop_ids),
        return_dict_in_generate=True,
        output_logits=True,
        synced_gpus=synced,
    )
    model.train(was_training)
    P = enc["input_ids"].shape[1]
    seq = out.sequences
    response_ids = seq[:, P:]
    T = response_ids.shape[1]
    logits = torch.stack(out.logits[:T], dim=1).float()  # [B, T, V], raw (before temperature/top-p)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
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


def sequence_logprobs(model, batch: Batch, return_hidden: bool = False) -> tuple[Tensor, Tensor | None]:
    """log pi(a_t | s_t) of the response tokens [B, T] (grad flows if enabled), and optionally the last
    hidden states at the positions that predict them [B, T, H] (used by a frozen-backbone critic)."""
    T = batch.response_mask.shape[1]
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        output_hidden_states=return_hidden,
        logits_to_keep=T + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # predicts response tokens 0..T-1
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    hidden = out.hidden_states[-1][:, batch.prompt_len - 1:-1] if return_hidden else None
    return logp * batch.response_mask, hidden
