"""Generation and scoring for the model-based evaluation (paper section 4.3): every model answers the
same test prompts with the same sampling seed, then every objective scores every response.

Also: loading a model to evaluate (builtin name, plain folder, or a peft adapter folder) and the
teacher-forced sequence log-probabilities used to estimate KL(policy || reference).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from molma.data.chat import render_prompt
from molma.data.records import Prompt

log = logging.getLogger(__name__)

ModelLoader = Callable[[str], tuple]


def _texts(prompts: Sequence[str | Prompt]) -> list[str]:
    return [p.text if isinstance(p, Prompt) else str(p) for p in prompts]


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless model
        return torch.device("cpu")


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

    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    texts = _texts(prompts)
    rendered = [render_prompt(tokenizer, t, system=system) for t in texts]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
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
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed + b)
                with autocast(model, precision):
                    seqs = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                          **sampling)
            new = seqs[:, enc["input_ids"].shape[1]:]
            out.extend(s.strip() for s in tokenizer.batch_decode(new, skip_special_tokens=True))
            bar.update(len(chunk))
    finally:
        bar.close()
        tokenizer.padding_side = old_side
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
def sequence_logprobs(model, tokenizer, prompts: Sequence[str | Prompt], responses: Sequence[str],
                      batch_size: int = 16, system: str | None = None,
                      progress: bool | str = False, per_token: bool = False) -> list[float] | list[list[float]]:
    """Sum of token log-probabilities of each response given its chat-templated prompt (teacher forcing);
    with ``per_token=True`` the list of the response's token log-probabilities instead of their sum.

    Used for the Monte-Carlo estimate of KL(pi || ref) from sampled responses (the evaluation uses the
    per-token values and the non-negative k3 estimator, :func:`molma.eval.stats.k3_kl`). The response is
    re-tokenised from text (close to, but not always identical with, the sampled token ids) and the
    end-of-turn token is not counted.
    """
    texts = _texts(prompts)
    if len(texts) != len(responses):
        raise ValueError(f"{len(texts)} prompts but {len(responses)} responses")
    device = _device(model)
    was_training = model.training
    model.eval()
    out: list[float] = []
    label = progress if isinstance(progress, str) else "log-probs"
    bar = tqdm(total=len(texts), desc=label, unit="resp", disable=not progress, leave=False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        for start in range(0, len(texts), batch_size):
            ids, masks = [], []
            for prompt, response in zip(texts[start:start + batch_size], responses[start:start + batch_size]):
                p_ids = tokenizer(render_prompt(tokenizer, prompt, system=system),
                                  add_special_tokens=False)["input_ids"]
                r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
                ids.append(p_ids + r_ids)
                masks.append([0] * len(p_ids) + [1] * len(r_ids))
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
            attn = torch.zeros((len(ids), width), dtype=torch.long)
            resp = torch.zeros((len(ids), width), dtype=torch.bool)
            for i, (x, m) in enumerate(zip(ids, masks)):
                input_ids[i, :len(x)] = torch.tensor(x)
                attn[i, :len(x)] = 1
                resp[i, :len(x)] = torch.tensor(m, dtype=torch.bool)
            logits = model(input_ids=input_ids.to(device), attention_mask=attn.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tok_logp = logp.gather(-1, input_ids[:, 1:, None].to(device)).squeeze(-1)
            mask = resp[:, 1:].to(device)
            if per_token:
                out.extend(row[m].tolist() for row, m in zip(tok_logp.cpu(), mask.cpu()))
            else:
                out.extend((tok_logp * mask).sum(dim=1).tolist())
            bar.update(len(ids))
    finally:
        bar.close()
        model.train(was_training)
    return out


def load_for_eval(spec: str, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` for a model to evaluate, in eval mode, on ``device``.

    ``spec`` is a builtin name (``smollm2-135m-instruct``), hub id or plain model folder (via
    :func:`molma.models.load_model`), or a peft adapter folder (it has ``adapter_config.json``): its base
    model (``molma.json`` ``base_model``, else the adapter's ``base_model_name_or_path``) is loaded with
    ``load_model`` and the adapter merged in for faster generation. The tokenizer
    comes from the adapter folder when it holds one, else from the base model.
    """
    from molma.models import load_model, load_tokenizer

    folder = Path(spec)
    adapter_cfg = folder / "adapter_config.json"
    if folder.is_dir() and adapter_cfg.exists():
        from peft import PeftModel

        meta = folder / "molma.json"  # written by the RL trainer: the base model as it was named
        base_name = json.loads(meta.read_text(encoding="utf-8")).get("base_model") if meta.exists() else None
        base_name = base_name or json.loads(adapter_cfg.read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
        if not base_name:
            raise ValueError(f"{adapter_cfg}: field 'base_model_name_or_path' is missing")
        base, tok = load_model(base_name, device=device)
        model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload().to(device)
        if (folder / "tokenizer_config.json").exists():
            tok = load_tokenizer(str(folder))
    else:
        if folder.exists() and not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: neither a model folder (config.json) nor a peft adapter "
                                    "folder (adapter_config.json)")
        model, tok = load_model(spec, device=device)
    model.eval()
    return model, tok
