"""The attention implementation of training forwards.

On CPU, transformers' default ``sdpa`` attention has a slow backward (PyTorch's CPU flash-attention kernel):
measured on SmolLM2-135M + LoRA, bf16, 16 x 71 tokens, one thread, forward + backward took 4.15 s with
``sdpa`` and 3.45 s with ``eager`` (1.20x), while generation, forward only, was faster with ``sdpa`` (113 vs
103 tokens/s). So forwards that are backpropagated switch to ``eager`` on CPU for their duration, and
everything else keeps the model's own setting. On GPUs ``sdpa`` / flash attention is the fast one: unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def attention_implementation(model: nn.Module, name: str) -> Iterator[None]:
    """Run ``model``'s attention (a transformers model, or a peft model around one) with implementation
    ``name`` while the context is open, then restore the previous one. Models without the setting: no-op."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    setter = getattr(base, "set_attn_implementation", None)
    current = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if not callable(setter) or current is None or current == name:
        yield
        return
    setter(name)
    try:
        yield
    finally:
        setter(current)


def training_attention(model: nn.Module) -> contextlib.AbstractContextManager:
    """The attention to backpropagate through: ``eager`` on CPU (see the module note), unchanged elsewhere."""
    try:
        device = next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless module
        return contextlib.nullcontext()
    return attention_implementation(model, "eager") if device.type == "cpu" else contextlib.nullcontext()
