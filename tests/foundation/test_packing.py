"""Prepacked linear layers for CPU decoding (molma.models.packing): the same numbers as ``F.linear``,
no silent gradient, and generation under ``autocast(inference=True)`` unchanged by the packing."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import molma.models.precision as precision
from molma.models import packing
from molma.models.packing import packed_linear
from molma.rl.rollout import GenerationSettings, generate
from tests.foundation.lora import lora_policy_with_trained_adapters

PACKS = {torch.bfloat16: packing._mkldnn_packing(), torch.float32: packing._mkl_packing()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(16, 1, 48), (1, 48), (5, 7, 48), (300, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_linear_gives_f_linear_bit_for_bit(dtype, shape, with_bias):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 48, generator=g).to(dtype)
    bias = torch.randn(96, generator=g).to(dtype) if with_bias else None
    x = torch.randn(*shape, generator=g).to(dtype)
    with torch.no_grad():
        assert torch.equal(packed_linear(weight, bias)(x), F.linear(x, weight, bias))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_linear_reads_strided_inputs_and_casts(dtype):
    """A strided view (oneDNN needs a dense block) and an input of another dtype give F.linear's result."""
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 32, generator=g).to(dtype)
    x = torch.randn(4, 20, 32, generator=g)[:, ::3]
    assert not x.is_contiguous()
    with torch.no_grad():
        assert torch.equal(packed_linear(weight)(x), F.linear(x.to(dtype), weight))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_linear_refuses_a_gradient_it_cannot_give(dtype):
    if not PACKS[dtype]:
        pytest.skip("this torch build has no packed linear operator for this dtype (plain F.linear: differentiable)")
    layer = packed_linear(torch.randn(8, 4).to(dtype))
    x = torch.randn(2, 4, dtype=dtype, requires_grad=True)
    with pytest.raises(RuntimeError, match="no backward"):
        layer(x)
    with torch.no_grad():
        assert layer(x).shape == (2, 8)


def _policy_and_reference(tiny_model):
    """A LoRA policy with non-zero adapters (folded into the decoding weights) and a frozen reference."""
    from molma.models import tiny_llama

    model, tok = tiny_model
    policy = lora_policy_with_trained_adapters(model, seed=5)
    reference, _ = tiny_llama(seed=0)
    reference.requires_grad_(False)
    return {"policy": policy, "reference": reference}, tok


@pytest.mark.parametrize("which", ["policy", "reference"])
def test_generation_is_unchanged_by_packing(tiny_model, monkeypatch, which):
    """The decoding path (autocast(inference=True): folded LoRA weights, frozen layers, float32 head) gives
    the same tokens with and without prepacking, and the same log-probs to float32 resolution."""
    models, tok = _policy_and_reference(tiny_model)
    model = models[which]
    texts = ["hello there", "what is the capital of france and why", "tell me a story"]
    settings = GenerationSettings(max_new_tokens=8, max_prompt_tokens=32)
    packed_layers = []

    def counting(weight, bias=None):
        packed_layers.append(weight.dtype)
        return packed_linear(weight, bias)

    def plain(weight, bias=None):
        weight, bias = weight.detach(), None if bias is None else bias.detach().to(weight.dtype)
        return lambda x: F.linear(x.to(weight.dtype), weight, bias)

    def run(factory):
        monkeypatch.setattr(precision, "packed_linear", factory)
        monkeypatch.setattr(packing, "packed_linear", factory)  # the float32 head's
        packing._PACKED_LAYERS.clear()
        with precision.autocast(model, "bf16", inference=True):
            return generate(model, tok, texts, settings, seed=3)

    packed_batch, packed_logp = run(counting)
    n_linear = sum(isinstance(m, torch.nn.Linear) and "lora_" not in name for name, m in model.named_modules())
    n_layers = model.config.num_hidden_layers
    # every linear layer of the decoder in bf16 (LoRA layers folded: their base counted once; q/k/v and gate/up
    # stacked into one product per block), the head in float32
    assert packed_layers.count(torch.float32) == 1 and len(packed_layers) == n_linear - 3 * n_layers
    plain_batch, plain_logp = run(plain)
    assert torch.equal(packed_batch.input_ids, plain_batch.input_ids)
    torch.testing.assert_close(packed_logp, plain_logp, rtol=0, atol=1e-5)


def test_a_packed_float32_layer_is_reused_until_its_weight_changes():
    layer = torch.nn.Linear(48, 96)
    x = torch.randn(16, 48)
    with torch.no_grad():
        first = packing.packed_layer(layer)
        assert packing.packed_layer(layer) is first  # packed once
        assert torch.equal(first(x), layer(x))
        layer.weight.mul_(2.0)  # an in-place update (an optimizer step, load_state_dict) repacks
        again = packing.packed_layer(layer)
        assert again is not first and torch.equal(again(x), layer(x))
        layer.weight = torch.nn.Parameter(torch.randn(96, 48))  # so does a new weight
        assert torch.equal(packing.packed_layer(layer)(x), layer(x))


def test_decoding_keeps_only_the_packed_copy_of_a_folded_layer(tiny_model):
    """Memory: inside the inference context a LoRA layer's forward holds its packed weight, not also the
    unpacked bf16 sum (which would double the decoding copies of the policy)."""
    if not PACKS[torch.bfloat16]:
        pytest.skip("no oneDNN packing in this torch build: the unpacked weight is the only copy")
    from peft.tuners.lora.layer import Linear as LoraLinear

    models, _ = _policy_and_reference(tiny_model)
    policy = models["policy"]
    layers = [m for m in policy.modules() if isinstance(m, LoraLinear)]
    with precision.autocast(policy, "bf16", inference=True):
        for layer in layers:
            held = [c.cell_contents for c in layer.forward.__closure__ or ()]
            shape = layer.get_base_layer().weight.shape
            assert not any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 and t.shape == shape
                           for t in held)
