"""Tiny randomly initialised models for fast tests: a few MB, sharing the SmolLM2 tokenizer and chat
template so every code path (templating, generation, scoring) is exercised for real."""

from __future__ import annotations

import torch

from molma.models.loading import DEFAULT_MODEL, load_tokenizer


def tiny_llama_config(vocab_size: int, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4,
                      intermediate_size: int = 64, max_position_embeddings: int = 512, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        **extra,
    )


def tiny_llama(seed: int = 0, tokenizer_name: str = DEFAULT_MODEL, **config_kwargs):
    """A ~1.6M-parameter Llama (random weights, seeded) and the SmolLM2 tokenizer.

    Returns ``(model, tokenizer)`` like :func:`molma.models.load_model`.
    """
    from transformers import LlamaForCausalLM

    tok = load_tokenizer(tokenizer_name)
    config = tiny_llama_config(len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, **config_kwargs)
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return model, tok
