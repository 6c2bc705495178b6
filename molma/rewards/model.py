"""The reward-model scorer: r_theta(x, y) of eq. 3.2, a sequence-classification transformer with one
output, applied to the chat-rendered dialogue (prompt x + response y).

Rendering and tokenisation live here and are shared by training and scoring, so a reward model sees the
same text format as the RL policy (:func:`molma.data.chat.render_dialogue`). Too-long inputs are cut from
the LEFT (the start of the prompt goes first, the response and the final tokens, where the score is read,
are kept).

Newly saved checkpoints (``molma_rm.json`` records ``scoring``) carry a chat template that renders exactly this text
(:func:`plain_scoring_template`), so plain transformers (``apply_chat_template`` +
``AutoModelForSequenceClassification``, a ``pipeline``, TRL) gives the same scores as
:meth:`RewardModel.score`; older checkpoints score as they always did (and can be upgraded with
:func:`make_checkpoint_plain_compatible`, which leaves molma's own scores unchanged).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from molma.data.chat import render_dialogue, to_messages
from molma.rewards.objective import _check_batch, check_finite

log = logging.getLogger(__name__)

METADATA_FILE = "molma_rm.json"
"""Training metadata written beside a reward-model checkpoint (objective, data, counts, accuracy)."""


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_for_scoring(tokenizer: Any, prompt: str, response: str) -> str:
    """Dialogue text the reward model scores: the chat template when the tokenizer has one
    (:func:`render_dialogue`), else (encoders) an HH-style ``Human: ... Assistant: ...`` transcript.

    Trailing whitespace after the assistant's end-of-turn token is dropped, so the text ends where the
    response ends and the score (read at the last non-pad token) sits at the end of the reply: the
    end-of-turn token, or the reply's last token when end-of-turn doubles as the pad token (SmolLM2).
    On HH harmless, frozen SmolLM2 features read there predicted preferences ~4 points better than at the
    newline the template adds after the turn.
    """
    if has_chat_template(tokenizer):
        return render_dialogue(tokenizer, prompt, response).rstrip()
    turns = [*to_messages(prompt), {"role": "assistant", "content": response.strip()}]
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in turns)


# ---------------------------------------------------- the same text under plain transformers (new checkpoints)

SCORING_TEMPLATE_MARK = "molma_scoring_text"
"""Jinja variable naming the captured text in a chat template made by :func:`plain_scoring_template`
(its presence marks a checkpoint whose template renders exactly molma's scoring text)."""

_TEMPLATE_CHECKS: tuple[tuple[list[dict[str, str]], bool], ...] = (
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], False),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello."}], False),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
      {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine."}], False),
    ([{"role": "user", "content": "Hi"}], True),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
      {"role": "user", "content": "How are you?"}], True),
)


def plain_scoring_template(template: str) -> str:
    """``template`` wrapped so that, rendered without a generation prompt, it drops trailing whitespace:
    ``apply_chat_template(dialogue)`` then gives exactly the text molma scores (:func:`render_for_scoring`:
    the dialogue ends at the reply's end-of-turn token, not at the newline the template adds after it).
    With ``add_generation_prompt=True`` the text is the template's own, unchanged."""
    mark = SCORING_TEMPLATE_MARK
    return ("{%- set " + mark + " %}" + template + "{% endset -%}"
            "{{ " + mark + " if add_generation_prompt else " + mark + ".rstrip() }}")


def uses_plain_scoring_template(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders molma's scoring text (see :func:`plain_scoring_template`)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and SCORING_TEMPLATE_MARK in template


def make_template_plain_compatible(tokenizer: Any) -> bool:
    """Give ``tokenizer`` the chat template of :func:`plain_scoring_template` (in place) so that plain
    transformers (``apply_chat_template`` + ``AutoModelForSequenceClassification``, a ``pipeline``, TRL)
    feeds a reward model the very text molma trained and scores it on.

    The wrapped template is checked on sample dialogues: without a generation prompt it must render the
    old text minus trailing whitespace, with one the old text unchanged; if not (an unusual template), the
    tokenizer is left as it was. Molma's own scoring text is the same either way. Returns True when the
    tokenizer's template now renders the scoring text (also when it already did), False otherwise (no chat
    template, several named templates, or the check failed).
    """
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return False
    if SCORING_TEMPLATE_MARK in template:
        return True
    wrapped = plain_scoring_template(template)
    checked = 0
    for messages, generation in _TEMPLATE_CHECKS:
        try:
            tokenizer.chat_template = template
            old = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        except Exception:  # noqa: BLE001 - a template may refuse e.g. system messages: not a case to check
            continue
        try:
            tokenizer.chat_template = wrapped
            new = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        except Exception as err:  # noqa: BLE001
            log.warning("chat template left unchanged: the wrapped template fails (%s)", err)
            tokenizer.chat_template = template
            return False
        if new != (old if generation else old.rstrip()):
            log.warning("chat template left unchanged: the wrapped template renders differently")
            tokenizer.chat_template = template
            return False
        checked += 1
    tokenizer.chat_template = wrapped if checked else template
    return bool(checked)


def make_checkpoint_plain_compatible(path: str | Path) -> bool:
    """Opt-in upgrade of a reward-model folder saved without that template (no ``scoring`` record in
    ``molma_rm.json``): rewrite its tokenizer's chat template with :func:`make_template_plain_compatible` so
    that plain transformers scores like molma. molma's own scores do not change (the text it scores is the
    same). Returns whether the folder now renders the scoring text under plain transformers."""
    from transformers import AutoTokenizer

    folder = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if uses_plain_scoring_template(tokenizer):
        return True
    if not make_template_plain_compatible(tokenizer):
        return False
    tokenizer.save_pretrained(folder)
    meta_file = folder / METADATA_FILE
    if meta_file.exists():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        meta["scoring"] = scoring_record(tokenizer)
        from molma.atomic import write_text_atomic

        write_text_atomic(meta_file, json.dumps(meta, indent=2) + "\n")
    return True


def scoring_record(tokenizer: Any) -> dict[str, Any]:
    """How a reward model's input is built and where its score is read (written to ``molma_rm.json``)."""
    if not has_chat_template(tokenizer):
        return {"text": "Human: ... / Assistant: ... transcript (no chat template), the tokenizer's special "
                        "tokens added", "score_at": "last non-padding token", "plain_transformers": False}
    plain = uses_plain_scoring_template(tokenizer)
    return {
        "text": "the dialogue through the chat template, without a generation prompt, trailing whitespace "
                "dropped (it ends at the reply's end-of-turn token); no special tokens added",
        "score_at": "last non-padding token (pad_token_id " f"{tokenizer.pad_token_id})",
        "plain_transformers": plain,
        "how": ("tokenizer.apply_chat_template(messages, return_dict=True, return_tensors='pt') -> "
                "AutoModelForSequenceClassification(...).logits[:, 0]" if plain else
                "apply_chat_template(messages, tokenize=False).rstrip(), then the tokenizer with "
                "add_special_tokens=False"),
    }


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer adds around a text (e.g. ``[CLS]`` ... ``[SEP]``), as (prefix, suffix)."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return list(full[:k]), list(full[k + len(plain):])
    return [], []


def encode_dialogues(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
                     max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of the rendered dialogues, each at most ``max_length`` long, and how many were truncated.

    Chat-templated text already holds its special tokens, so none are added; plain-text rendering (no
    chat template) gets the tokenizer's own (``[CLS]``/``[SEP]``), kept when truncating. Truncation drops
    tokens from the left: the prompt's start goes first, the response survives whole unless it alone is
    longer than ``max_length``.
    """
    _check_batch(prompts, responses, "encode")
    texts = [render_for_scoring(tokenizer, p, r) for p, r in zip(prompts, responses)]
    if has_chat_template(tokenizer):
        prefix: list[int] = []
        suffix: list[int] = []
    else:
        prefix, suffix = _special_affixes(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget <= 0:
        raise ValueError(f"max_length={max_length} leaves no room for text after the special tokens")
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out, truncated = [], 0
    for ids in encoded:
        if len(ids) > budget:
            ids = ids[-budget:]
            truncated += 1
        out.append(prefix + list(ids) + suffix)
    return out, truncated


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (right padding keeps every real token's position,
    so a padded batch scores exactly like one sequence at a time)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, :len(seq)] = 1
    return ids, mask


class RewardModel:
    """A trained reward model as an :class:`~molma.rewards.Objective`: ``score(prompts, responses)``.

    Batched (longest first, right padding), no grad, float32 ``[B]`` on the CPU. ``.model`` is the
    ``AutoModelForSequenceClassification`` (num_labels = 1), ``.tokenizer`` its tokenizer.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str = "reward", batch_size: int = 16,
                 max_length: int = 512, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        from molma.models.precision import resolve_precision

        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if max_length <= 0:
            raise ValueError(f"max_length must be > 0, got {max_length}")
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"reward model {name!r} has num_labels={model.config.num_labels}; expected 1")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device)
        # forwards under autocast with the score head in float32 (molma.models.precision)
        self.precision = resolve_precision(precision, self.device)
        self.show_progress = False
        self.model.to(self.device)
        self.model.eval()

    def __repr__(self) -> str:
        return (f"RewardModel(name={self.name!r}, model={type(self.model).__name__}, "
                f"max_length={self.max_length}, batch_size={self.batch_size})")

    @classmethod
    def from_pretrained(cls, path: str | Path, name: str | None = None, batch_size: int = 16,
                        max_length: int = 512, device: str = "cpu", precision: str = "fp32") -> RewardModel:
        """Load a saved reward model (any sequence-classification checkpoint with one label).

        ``name`` defaults to the objective recorded in the checkpoint's ``molma_rm.json``, else the
        folder name.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from molma.models import resolve_model_path

        src = resolve_model_path(str(path))
        looks_local = src.startswith(("/", ".", "~")) or src.count("/") > 1 or isinstance(path, Path)
        if looks_local and not Path(src).expanduser().exists():
            raise FileNotFoundError(f"reward model {src}: no such folder")
        meta_file = Path(src) / METADATA_FILE
        if name is None:
            if meta_file.exists():
                name = json.loads(meta_file.read_text(encoding="utf-8")).get("objective")
            name = name or Path(str(path)).name
        if Path(src).exists() and not (Path(src) / "config.json").exists():
            raise FileNotFoundError(f"{src}: not a model checkpoint folder (no config.json)")
        tokenizer = AutoTokenizer.from_pretrained(src)
        model = AutoModelForSequenceClassification.from_pretrained(src, dtype=torch.float32)
        return cls(model, tokenizer, name=name, batch_size=batch_size, max_length=max_length, device=device,
                   precision=precision)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """r(x, y) for each pair, float32 ``[B]`` on the CPU; raises if any score is not finite."""
        _check_batch(prompts, responses, self.name)
        if not prompts:
            return torch.zeros(0, dtype=torch.float32)
        ids, n_trunc = encode_dialogues(self.tokenizer, prompts, responses, self.max_length)
        if n_trunc:
            log.debug("%s: %d of %d inputs truncated from the left to %d tokens", self.name, n_trunc,
                      len(ids), self.max_length)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        scores = torch.empty(len(ids), dtype=torch.float32)
        batches = range(0, len(order), self.batch_size)
        if self.show_progress and len(batches) > 1:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"scoring ({self.name})", unit="batch", leave=False)
        from molma.models.precision import autocast
        from molma.models.prefill import PrefillPlan, SharedPrefix, prefill_plan, shared_prefix_length, shares_prefix

        causal = shares_prefix(self.model)  # an encoder (BERT) attends both ways: no shared prefix
        with torch.inference_mode(), autocast(self.model, self.precision):
            for start in batches:
                chunk = order[start:start + self.batch_size]
                seqs = [ids[i] for i in chunk]
                # the tokens every dialogue shares (the chat template's system prompt) once, then one forward per
                # group of similar lengths (molma.models.prefill): less padding and less repeated work. Each row
                # keeps at least its last token, the one scored.
                shared = min(shared_prefix_length(seqs), min(len(s) for s in seqs) - 1) if causal else 0
                plan = (prefill_plan([len(s) for s in seqs], shared)
                        or PrefillPlan(0, [list(range(len(chunk)))]))
                prefix = (SharedPrefix(self.model, torch.tensor(seqs[0][:plan.prefix], device=self.device))
                          if plan.prefix else None)
                for group in plan.groups:
                    idx = [chunk[j] for j in group]
                    input_ids, mask = pad_right([ids[i][plan.prefix:] for i in idx], self.model.config.pad_token_id)
                    input_ids, mask = input_ids.to(self.device), mask.to(self.device)
                    if prefix is None:
                        inputs = {"input_ids": input_ids, "attention_mask": mask}
                    else:  # right padding: positions run on from the prefix's
                        positions = torch.arange(input_ids.shape[1], device=self.device).expand(len(idx), -1)
                        inputs = prefix.inputs(input_ids, mask, positions)
                    logits = self.model(**inputs).logits
                    scores[idx] = logits.reshape(len(idx), -1)[:, 0].float().cpu()
        return check_finite(scores, self.name, responses)
