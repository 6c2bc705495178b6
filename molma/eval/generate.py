"""Generation and scoring for the model-based evaluation (paper section 4.3): every model answers the
same test prompts with the same sampling seed, then every objective scores every response.

Also: the teacher-forced log-probabilities of response texts used to estimate KL(policy || reference).
Models to evaluate are loaded by :func:`molma.models.load_policy` (``load_for_eval`` here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from molma.data.chat import render_prompt
from molma.data.records import Prompt
from molma.models.loading import load_policy as load_for_eval  # noqa: F401 - the one policy loader
from molma.models.loading import tokenizer_sides

log = logging.getLogger(__name__)

ModelLoader = Callable[[str], tuple]


def _texts(prompts: Sequence[str | Prompt]) -> list[str]:
    return [p.text if isinstance(p, Prompt) else str(p) for p in prompts]


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless model
        return torch.device("cpu")


def check_generation(max_new_tokens: int, batch_size: int, do_sample: bool, temperature: float,
                     top_p: float) -> None:
    """Refuse generation settings :func:`generate_responses` cannot use (``ValueError``); the one check
    behind it and :class:`molma.eval.EvalConfig`."""
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: Sequence[str | Prompt], max_new_tokens: int = 48,
                       seed: int = 0, batch_size: int = 16, do_sample: bool = True,
                       temperature: float = 1.0, top_p: float = 1.0, progress: bool | str = True,
                       system: str | None = None, precision: str = "fp32") -> list[str]:
    """Generate one response per prompt (chat-templated, left-padded batches), in prompt order.

    Reproducible: batch *i* is sampled right after ``torch.manual_seed(seed + i)`` inside a forked RNG
    (the caller's global RNG state is untouched), so the same model, prompts, seed and batch size give
    the same responses, and every model under evaluation gets the same seeds. Responses are the decoded
    new tokens without special tokens, stripped. The defaults (temperature 1, top-p 1, no top-k) sample
    from the policy itself, as the RL rollouts do, so KL estimates from these samples are unbiased.
    ``progress`` shows a tqdm bar (a string sets its label). ``precision``: the forwards' mixed precision
    (:mod:`molma.models.precision`; bf16 / fp16 sample slightly different tokens than fp32).
    """
    from molma.models.precision import autocast
    from molma.models.prefill import prefilled

    check_generation(max_new_tokens, batch_size, do_sample, temperature, top_p)
    texts = _texts(prompts)
    rendered = [render_prompt(tokenizer, t, system=system) for t in texts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample \
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    was_training = model.training
    model.eval()
    device = _device(model)
    out: list[str] = []
    label = progress if isinstance(progress, str) else "generate"
    bar = tqdm(total=len(texts), desc=label, unit="prompt", disable=not progress, leave=False)
    try:
        for b, start in enumerate(range(0, len(rendered), batch_size)):
            chunk = rendered[start:start + batch_size]
            with tokenizer_sides(tokenizer, padding="left"):
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed + b)
                with autocast(model, precision, sampling=True):
                    seqs = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                          **prefilled(model, enc["input_ids"], enc["attention_mask"]),  # by length
                                          **sampling)
            new = seqs[:, enc["input_ids"].shape[1]:]
            out.extend(s.strip() for s in tokenizer.batch_decode(new, skip_special_tokens=True))
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return out


def score_responses(objective, prompts: Sequence[str | Prompt], responses: Sequence[str],
                    batch_size: int = 16, progress: bool | str = True) -> list[float]:
    """Score ``responses`` with one objective (``objective.score(prompts, responses) -> Tensor[B]``),
    batch by batch; raises with the prompt index if the objective returns a non-finite score."""
    texts = _texts(prompts)
    if len(texts) != len(responses):
        raise ValueError(f"{len(texts)} prompts but {len(responses)} responses")
    name = getattr(objective, "name", type(objective).__name__)
    label = progress if isinstance(progress, str) else f"score {name}"
    scores: list[float] = []
    bar = tqdm(total=len(texts), desc=label, unit="resp", disable=not progress, leave=False)
    try:
        for start in range(0, len(texts), batch_size):
            p, r = texts[start:start + batch_size], list(responses[start:start + batch_size])
            with torch.no_grad():
                values = objective.score(p, r)
            values = torch.as_tensor(values, dtype=torch.float64).reshape(-1).tolist()
            if len(values) != len(p):
                raise ValueError(f"objective {name!r} returned {len(values)} scores for {len(p)} responses")
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    raise ValueError(f"objective {name!r} gave a non-finite score ({v}) to prompt "
                                     f"#{start + i}: {texts[start + i][:80]!r}")
            scores.extend(values)
            bar.update(len(p))
    finally:
        bar.close()
    return scores


@torch.no_grad()
def response_logprobs(model, tokenizer, prompts: Sequence[str | Prompt], responses: Sequence[str],
                      batch_size: int = 16, system: str | None = None,
                      progress: bool | str = False, per_token: bool = False) -> list[float] | list[list[float]]:
    """Sum of token log-probabilities of each response *text* given its chat-templated prompt (teacher
    forcing); with ``per_token=True`` the list of the response's token log-probabilities instead of
    their sum. The forward is the RL rollout's (:func:`molma.rl.rollout.sequence_logprobs` on token ids).

    Used for the Monte-Carlo estimate of KL(pi || ref) from sampled responses (the evaluation uses the
    per-token values and the non-negative k3 estimator, :func:`molma.eval.stats.k3_kl`). The response is
    re-tokenised from text (close to, but not always identical with, the sampled token ids) and the
    end-of-turn token is not counted.
    """
    from molma.rl.rollout import batch_from_ids, sequence_logprobs

    texts = _texts(prompts)
    if len(texts) != len(responses):
        raise ValueError(f"{len(texts)} prompts but {len(responses)} responses")
    device = _device(model)
    was_training = model.training
    model.eval()
    out: list = []
    label = progress if isinstance(progress, str) else "log-probs"
    bar = tqdm(total=len(texts), desc=label, unit="resp", disable=not progress, leave=False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        for start in range(0, len(texts), batch_size):
            chunk = list(zip(texts[start:start + batch_size], responses[start:start + batch_size]))
            p_ids = [tokenizer(render_prompt(tokenizer, p, system=system), add_special_tokens=False)["input_ids"]
                     for p, _ in chunk]
            r_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for _, r in chunk]
            # [B, T]: each response's token log-probs, zero after it
            tok_logp, _ = sequence_logprobs(model, batch_from_ids(p_ids, r_ids, pad_id).to(device))
            if per_token:
                out.extend(row[:len(r)].tolist() for row, r in zip(tok_logp.cpu(), r_ids))
            else:
                out.extend(tok_logp.sum(dim=1).tolist())
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return out


