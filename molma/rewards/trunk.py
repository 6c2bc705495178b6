"""Frozen-trunk features for reward-model training: the hidden states entering the first trained block,
computed once per training sequence and read back by every model that trains the same top blocks on the same
sequences (the seed members of a WARM average, or the epochs of one model).

With ``train_top_layers = k`` (full fine-tuning) the embeddings and the bottom blocks are frozen, so their
forward gives the same values for a sequence at every step that sees it. On SmolLM2 with k = 8 that forward
(22 of 30 blocks) is about half of what training costs, since the top blocks also run backward. TRL's
RewardTrainer and transformers have no feature cache for a partly frozen model, so molma keeps this one.

How it plugs into an unchanged training loop (:func:`cached_trunk`): the model's input embedding is
replaced by a lookup that returns each row's stored hidden states (found by the row's real tokens, which the
attention mask delimits), and its block list by the top blocks alone. Positions, the causal mask and the
scoring at the last real token are computed by the model as before, so the top blocks see what they would
see behind the real trunk, up to rounding (the trunk ran in other batch shapes). Right padding is required:
with left padding a row's positions, hence its trunk values, would depend on its batch.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from molma.models.blocks import named_transformer_blocks

FORMAT = "molma-trunk-features-1"


class _TrunkReachedSignal(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by the hook on the first trained block: the rest of the forward is not needed."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def frozen_trunk_depth(model: nn.Module) -> int | None:
    """How many leading blocks (with the embeddings) have no trainable parameter, when that trunk's output can
    be stored: a plain (non-PEFT) model without dropout in the trunk and at least one frozen block; else None."""
    if hasattr(model, "peft_config"):
        return None
    found = named_transformer_blocks(model)
    if found is None:
        return None
    _, blocks = found
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embedding is None or any(p.requires_grad for p in embedding.parameters()):
        return None
    depth = 0
    for block in blocks:
        if any(p.requires_grad for p in block.parameters()):
            break
        depth += 1
    if depth == 0 or depth == len(blocks):
        return None
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    if float(getattr(text_config, "attention_dropout", 0.0) or 0.0) > 0:
        return None
    trunk_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for b in blocks[:depth] for m in b.modules())
    if trunk_dropout or any(isinstance(m, nn.Dropout) and m.p > 0 for m in embedding.modules()):
        return None
    return depth


@dataclass
class TrunkFeatures:
    """Hidden states entering block ``depth`` for a set of token sequences: ``hidden[offsets[i]:offsets[i+1]]``
    belongs to the sequence ``index`` maps to ``i``. ``meta`` records what they were computed with (model,
    depth, precision), checked before use."""

    hidden: torch.Tensor
    offsets: torch.Tensor
    index: dict[tuple[int, ...], int]
    meta: dict[str, Any]

    @property
    def depth(self) -> int:
        return int(self.meta["depth"])

    def __len__(self) -> int:
        return len(self.index)

    def missing(self, sequences: Sequence[Sequence[int]]) -> int:
        """How many of ``sequences`` have no stored features."""
        return sum(tuple(s) not in self.index for s in sequences)

    def rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, T, H]`` stored hidden states for a right-padded batch; zeros at padding (masked anyway)."""
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)}")
        mask = attention_mask.bool()
        right_padded = not bool((mask[:, 1:] & ~mask[:, :-1]).any())  # no real token after a padding one
        if not right_padded:
            raise ValueError("trunk features need right-padded batches (left padding shifts every position)")
        lengths = mask.sum(dim=1).tolist()
        width = input_ids.shape[1]
        out = torch.zeros(input_ids.shape[0], width, self.hidden.shape[1], dtype=self.hidden.dtype)
        ids = input_ids.tolist()
        for row, (seq, n) in enumerate(zip(ids, lengths)):
            key = tuple(seq[:n])
            i = self.index.get(key)
            if i is None:
                raise KeyError(f"no trunk features for a sequence of {n} tokens (starting {list(key[:8])}); they "
                               "were computed for other data")
            out[row, :n] = self.hidden[self.offsets[i]:self.offsets[i + 1]]
        return out.to(input_ids.device)

    def save(self, path: str | Path) -> Path:
        """Write the features as one safetensors file (token ids kept, so a reader can check what it gets)."""
        from safetensors.torch import save_file

        from molma.atomic import atomic_file

        order = sorted(self.index.items(), key=lambda kv: kv[1])
        tokens = torch.tensor([t for key, _ in order for t in key], dtype=torch.int64)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            save_file({"hidden": self.hidden.contiguous(), "offsets": self.offsets, "tokens": tokens},
                      str(tmp), metadata={"format": FORMAT, "meta": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrunkFeatures:
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise ValueError(f"{path}: not a molma trunk-features file (format {header.get('format')!r})")
            hidden, offsets, tokens = (f.get_tensor(k) for k in ("hidden", "offsets", "tokens"))
        bounds = offsets.tolist()
        flat = tokens.tolist()
        if len(bounds) < 1 or bounds[-1] != hidden.shape[0] or len(flat) != hidden.shape[0]:
            raise ValueError(f"{path}: offsets, tokens and hidden states disagree (damaged file?)")
        index = {tuple(flat[a:b]): i for i, (a, b) in enumerate(zip(bounds, bounds[1:]))}
        return cls(hidden, offsets, index, json.loads(header["meta"]))

    @classmethod
    def merge(cls, parts: Sequence[TrunkFeatures]) -> TrunkFeatures:
        """One store from several (shards computed by different processes); their ``meta`` must agree."""
        if not parts:
            raise ValueError("no trunk features to merge")
        meta = parts[0].meta
        for part in parts[1:]:
            if part.meta != meta:
                raise ValueError(f"trunk features computed with different settings: {part.meta} vs {meta}")
        index: dict[tuple[int, ...], int] = {}
        pieces, bounds = [], [0]
        for part in parts:
            for key, i in sorted(part.index.items(), key=lambda kv: kv[1]):
                if key in index:
                    continue
                index[key] = len(index)
                piece = part.hidden[part.offsets[i]:part.offsets[i + 1]]
                pieces.append(piece)
                bounds.append(bounds[-1] + piece.shape[0])
        return cls(torch.cat(pieces), torch.tensor(bounds, dtype=torch.int64), index, dict(meta))


def _autocast(device: torch.device, precision: str):
    """The autocast the training loop runs under (TRL / accelerate: plain ``torch.autocast`` for bf16 / fp16)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


@torch.no_grad()
def compute_trunk_features(model: nn.Module, sequences: Sequence[Sequence[int]], depth: int, pad_id: int,
                           precision: str = "fp32", batch_size: int = 16, meta: dict[str, Any] | None = None,
                           progress: bool = True) -> TrunkFeatures:
    """Run the first ``depth`` blocks of ``model`` over every distinct sequence (longest first, right-padded
    batches of ``batch_size``) under the training loop's autocast and keep, per sequence, the float32 hidden
    states entering block ``depth``. The forward stops there."""
    from molma.rewards.model import pad_right

    found = named_transformer_blocks(model)
    if found is None:
        raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")
    blocks = found[1]
    if not 0 < depth < len(blocks):
        raise ValueError(f"depth must be in 1..{len(blocks) - 1}, got {depth}")
    unique = list(dict.fromkeys(tuple(s) for s in sequences))
    if any(len(s) == 0 for s in unique):
        raise ValueError("an empty token sequence has no trunk features")
    order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
    device = next(model.parameters()).device

    def stop(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        raise _TrunkReachedSignal(hidden)

    handle = blocks[depth].register_forward_pre_hook(stop, with_kwargs=True)
    was_training = model.training
    model.eval()
    stored: list[torch.Tensor | None] = [None] * len(unique)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    try:
        from tqdm.auto import tqdm

        for batch in tqdm(batches, desc="trunk features", unit="batch", disable=not progress):
            ids, mask = pad_right([unique[i] for i in batch], pad_id)
            try:
                with _autocast(device, precision):
                    model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            except _TrunkReachedSignal as reached:
                hidden = reached.hidden.float().cpu()
            else:  # pragma: no cover - the hook always fires
                raise RuntimeError("the forward never reached the first trained block")
            for row, i in enumerate(batch):
                stored[i] = hidden[row, :len(unique[i])].clone()
    finally:
        handle.remove()
        model.train(was_training)
    pieces = [t for t in stored if t is not None]
    bounds = [0]
    for t in pieces:
        bounds.append(bounds[-1] + t.shape[0])
    return TrunkFeatures(torch.cat(pieces), torch.tensor(bounds, dtype=torch.int64),
                         {key: i for i, key in enumerate(unique)},
                         {"depth": depth, "precision": precision, **(meta or {})})


class _TrunkLookup(nn.Module):
    """Stands in for the input embedding: each row's stored trunk output (the batch's attention mask is handed
    over by the model's forward pre-hook)."""

    def __init__(self, features: TrunkFeatures) -> None:
        super().__init__()
        self.features = features
        self.attention_mask: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = self.attention_mask if self.attention_mask is not None else torch.ones_like(input_ids)
        return self.features.rows(input_ids, mask)


@contextlib.contextmanager
def cached_trunk(model: nn.Module, features: TrunkFeatures) -> Iterator[nn.Module]:
    """Within the block, ``model``'s forward starts at block ``features.depth`` from the stored features: the
    input embedding is a lookup, the block list holds the top blocks only. Restored on exit (the saved model is
    the whole model)."""
    depth = frozen_trunk_depth(model)
    if depth is None or depth < features.depth:
        raise ValueError(f"trunk features of depth {features.depth} need the model's first {features.depth} "
                         f"blocks frozen (frozen: {depth or 0})")
    name, blocks = named_transformer_blocks(model)  # type: ignore[misc]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    embedding = model.get_input_embeddings()
    lookup = _TrunkLookup(features)

    def hand_mask(_module, args, kwargs):
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise ValueError("a model with cached trunk features needs input_ids (the lookup key)")
        lookup.attention_mask = mask

    handle = model.register_forward_pre_hook(hand_mask, with_kwargs=True)
    setattr(parent, attr, nn.ModuleList(list(blocks)[features.depth:]))
    model.set_input_embeddings(lookup)
    try:
        yield model
    finally:
        handle.remove()
        setattr(parent, attr, blocks)
        model.set_input_embeddings(embedding)
