"""The attention implementation of training forwards (molma.models.attention)."""

from __future__ import annotations

import torch

from molma.models.attention import attention_implementation, training_attention


def test_training_attention_is_eager_on_cpu_gives_the_same_logits_and_is_restored(tiny_model):
    from molma.models import LoraSettings, apply_lora

    model, tok = tiny_model
    policy = apply_lora(model, LoraSettings(r=2, alpha=4))
    before = policy.get_base_model().config._attn_implementation
    ids = tok(["hello there, how are you doing today", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        default = policy(**ids).logits
        with training_attention(policy):
            assert policy.get_base_model().config._attn_implementation == "eager"
            eager = policy(**ids).logits
    assert policy.get_base_model().config._attn_implementation == before
    mask = ids["attention_mask"].bool()
    torch.testing.assert_close(eager[mask], default[mask], rtol=1e-4, atol=1e-4)


def test_attention_implementation_leaves_models_without_the_setting_alone():
    layer = torch.nn.Linear(2, 2)
    with attention_implementation(layer, "eager"):
        assert layer(torch.ones(1, 2)).shape == (1, 2)
