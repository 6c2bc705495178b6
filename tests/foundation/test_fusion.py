"""Decoding shortcuts that must not change a number: sibling projections as one product
(molma.models.fusion) and keys cached in the dtype the attention reads (molma.models.prefill.keys_to_attend)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.nn import functional as F

import molma.models.precision as precision
import molma.models.prefill as prefill
from molma.models.fusion import SharedInputProduct, sibling_groups
from molma.rl.rollout import GenerationSettings, generate
from tests.foundation.lora import lora_policy_with_trained_adapters


def _shared(weights):
    stacked = torch.cat(weights)
    calls = []

    def product(x):
        calls.append(x)
        return F.linear(x, stacked)

    return SharedInputProduct(product, [w.shape[0] for w in weights]), calls


def test_siblings_take_their_slice_of_one_product():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, 8, generator=g) for n in (6, 2, 2)]
    shared, calls = _shared(weights)
    q, k, v = (shared.member(i) for i in range(3))
    x = torch.randn(4, 3, 8, generator=g)
    outs = [q(x), k(x), v(x)]
    assert len(calls) == 1  # one product served all three
    for out, w in zip(outs, weights, strict=True):
        torch.testing.assert_close(out, F.linear(x, w))
    assert shared._input is None  # every slice served: the input is not held until the next step


def test_a_sibling_given_another_input_computes_its_own():
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(n, 8, generator=g) for n in (5, 3)]
    shared, calls = _shared(weights)
    gate, up = shared.member(0), shared.member(1)
    x, y = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    gate(x)
    torch.testing.assert_close(up(y), F.linear(y, weights[1]))  # not x's slice
    assert len(calls) == 2
    # the same tensor changed in place since the product: computed afresh, not the stale slice
    z = torch.randn(2, 8, generator=g)
    gate(z)
    z.mul_(2.0)
    torch.testing.assert_close(up(z), F.linear(z, weights[1]))
    # a member called twice on one input: the second call recomputes (its slice was served)
    gate(x)
    torch.testing.assert_close(gate(x), F.linear(x, weights[0]))


def test_sibling_groups_are_llama_q_k_v_and_gate_up(tiny_model):
    model, _ = tiny_model
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    groups = sibling_groups(model, layers)
    n_blocks = model.config.num_hidden_layers
    assert len(groups) == 2 * n_blocks
    attn = model.model.layers[0].self_attn
    assert [attn.q_proj, attn.k_proj, attn.v_proj] in groups
    # a layer molma does not replace (here: k_proj) leaves its group unfused
    assert [attn.q_proj, attn.k_proj, attn.v_proj] not in sibling_groups(model, set(layers) - {attn.k_proj})


def _lora_policy(tiny_model, target_modules="all-linear"):
    model, tok = tiny_model
    return lora_policy_with_trained_adapters(model, seed=5, target_modules=target_modules), tok


TEXTS = ["hello there", "what is the capital of france and why", "tell me a story"]


@pytest.mark.parametrize("which", ["lora", "lora_q_v", "frozen"])
def test_fused_siblings_leave_generation_unchanged(tiny_model, monkeypatch, which):
    """The rollout (bf16, sampling head) with q/k/v and gate/up as one product per block draws the same tokens
    with the same log-probs as with one product per layer, for a LoRA policy (folded weights), one with adapters
    on q and v only (a group of folded and halved weights) and a frozen model (halved weights)."""
    if which == "lora":
        model, tok = _lora_policy(tiny_model)
    elif which == "lora_q_v":
        model, tok = _lora_policy(tiny_model, ["q_proj", "v_proj"])
    else:
        model, tok = tiny_model
        model.requires_grad_(False)
    settings = GenerationSettings(max_new_tokens=8, max_prompt_tokens=32)
    fused = precision._fused_siblings
    calls = []

    def counting(*args, **kwargs):
        ctx = fused(*args, **kwargs)
        calls.append(ctx)
        return ctx

    def run(fuse):
        monkeypatch.setattr(precision, "_fused_siblings",
                            counting if fuse else (lambda *a, **k: contextlib.nullcontext()))
        with precision.autocast(model, "bf16", sampling=True):
            if fuse:  # the fused forwards are in place inside the context
                assert "forward" in model.get_decoder().layers[0].self_attn.k_proj.__dict__
            return generate(model, tok, TEXTS, settings, seed=3)

    fused_batch, fused_logp = run(True)
    plain_batch, plain_logp = run(False)
    assert calls
    assert torch.equal(fused_batch.input_ids, plain_batch.input_ids)
    torch.testing.assert_close(fused_logp, plain_logp, rtol=0, atol=1e-6)
    assert not any("forward" in m.__dict__ for m in model.modules())  # restored


def test_keys_are_cached_in_the_dtype_the_attention_reads():
    keys, values = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8).bfloat16()
    assert prefill.keys_to_attend(keys, values) is keys  # no autocast: left as they are
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert prefill.keys_to_attend(keys, values).dtype == torch.bfloat16
        assert prefill.keys_to_attend(keys, values.float()).dtype == torch.float32  # fp32 values: unchanged
        # a forward that backpropagates keeps float32 keys: gradients of shared keys are summed in their dtype
        trained = keys.clone().requires_grad_()
        assert prefill.keys_to_attend(trained, values) is trained
        with torch.no_grad():
            assert prefill.keys_to_attend(trained, values).dtype == torch.bfloat16
        q = torch.randn(2, 3, 1, 8)
        mask = torch.ones(2, 1, 1, 4, dtype=torch.bool)
        for attend in (lambda k: F.scaled_dot_product_attention(q, k, values, attn_mask=mask),
                       lambda k: torch.matmul(q, k.transpose(-1, -2))):  # sdpa and eager attention cast them anyway
            assert torch.equal(attend(keys), attend(prefill.keys_to_attend(keys, values)))


def test_rollout_caches_half_keys_and_draws_what_float32_keys_draw(tiny_model, monkeypatch):
    model, tok = _lora_policy(tiny_model)
    settings = GenerationSettings(max_new_tokens=8, max_prompt_tokens=32)
    seen = []
    keys_to_attend = prefill.keys_to_attend
    cache_class = prefill._attention_dtype_cache_class()
    update = cache_class.update

    def run(cast):
        monkeypatch.setattr(prefill, "keys_to_attend", keys_to_attend if cast else (lambda k, v: k))

        def recording(self, key_states, value_states, layer_idx, *args, **kwargs):
            out = update(self, key_states, value_states, layer_idx, *args, **kwargs)
            seen.append((cast, self.layers[layer_idx].keys.dtype))
            return out

        monkeypatch.setattr(cache_class, "update", recording)
        with precision.autocast(model, "bf16", sampling=True):
            return generate(model, tok, TEXTS, settings, seed=4)

    half_batch, half_logp = run(True)
    full_batch, full_logp = run(False)
    assert {dtype for cast, dtype in seen if cast} == {torch.bfloat16}
    assert {dtype for cast, dtype in seen if not cast} == {torch.float32}  # what the rotary embedding gives
    assert torch.equal(half_batch.input_ids, full_batch.input_ids)
    torch.testing.assert_close(half_logp, full_logp, rtol=0, atol=0)


@pytest.mark.parametrize("fold_rows", [7, 64, 4096])
def test_lora_folds_block_by_block_into_the_sum_of_one_pass(monkeypatch, fold_rows):
    """The folded decoding weight ``W + s B A``, computed block by block of rows (into a stacked weight's block
    too), equals the one-pass float32 sum rounded to bf16, for two active adapters."""
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(40, 150)

    torch.manual_seed(0)
    net = get_peft_model(Net(), LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]))
    net.add_adapter("second", LoraConfig(r=2, lora_alpha=6, target_modules=["proj"]))
    layer = net.base_model.model.proj
    layer.set_adapter(["default", "second"])
    with torch.no_grad():
        for p in layer.parameters():
            if p is not layer.base_layer.weight and p is not layer.base_layer.bias:
                p.normal_(0, 0.1)
    expected = layer.base_layer.weight.detach().float()
    for name in ("default", "second"):
        expected = torch.addmm(expected, layer.lora_B[name].weight, layer.lora_A[name].weight,
                               alpha=layer.scaling[name])
    monkeypatch.setattr(precision, "FOLD_ROWS", fold_rows)
    weight, bias = precision._folded_weight(layer, torch.bfloat16)
    torch.testing.assert_close(weight, expected.to(torch.bfloat16), rtol=0, atol=0)
    # inside autocast too (where the inference context folds): a float32 sum, not autocast's bf16 addmm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(precision._folded_weight(layer, torch.bfloat16)[0], weight, rtol=0, atol=0)
    stacked = torch.zeros(160, 40, dtype=torch.bfloat16)
    precision._folded_weight(layer, torch.bfloat16, out=stacked[10:])
    assert torch.equal(stacked[10:], weight) and not stacked[:10].any()
    torch.testing.assert_close(bias, layer.base_layer.bias.detach().to(torch.bfloat16))


def test_a_bf16_training_run_logs_the_same_numbers_with_the_decoding_shortcuts(tmp_path, monkeypatch):
    """End to end: MOLMA in bf16 on the toy policy gives the same metrics (rewards, KL, losses, gradients) with
    and without both shortcuts: they touch decoding and inference forwards only, never a gradient."""
    import copy
    import json
    from pathlib import Path

    from molma.rl import MultiObjectiveTrainer, TrainConfig
    from tests.rl import toy

    model, tok = toy.toy_policy()
    fused, keys_to_attend = precision._fused_siblings, prefill.keys_to_attend
    logs = []
    for shortcuts in (True, False):
        monkeypatch.setattr(precision, "_fused_siblings",
                            fused if shortcuts else (lambda *a, **k: contextlib.nullcontext()))
        monkeypatch.setattr(prefill, "keys_to_attend", keys_to_attend if shortcuts else (lambda k, v: k))
        cfg = TrainConfig(algo="molma", objectives={"long": "rule:length", "clean": "rule:banned_words"},
                          help_objective="long", safe_objective="clean", iterations=3, experience_size=16,
                          minibatch_size=16, max_new_tokens=8, lr=5e-3, critic_backbone="frozen", seed=1,
                          prompt_mix={"help": 0.5, "safe": 0.5}, precision="bf16", report_to="none",
                          progress=False, save_every=0, out=str(tmp_path / str(shortcuts)))
        MultiObjectiveTrainer(cfg, policy=copy.deepcopy(model), tokenizer=tok, objectives=toy.objectives(),
                              prompt_pools=toy.pools()).train()
        rows = [json.loads(line) for line in Path(cfg.out, "metrics.jsonl").read_text().splitlines()]
        logs.append([{k: v for k, v in row.items() if not k.startswith("time/") and k != "tokens_per_s"}
                     for row in rows])
    assert logs[0] == logs[1]


def test_generate_gets_an_attention_dtype_cache_only_where_a_dynamic_cache_is_the_default(tiny_model, monkeypatch):
    """When the padded prefill is kept (one-token prompts here: nothing to build), ``generate`` is handed an empty
    cache of molma's kind for a model whose default cache is a DynamicCache, and nothing for one that needs its own."""
    model, tok = tiny_model
    ids = torch.tensor([[5]])
    mask = torch.ones_like(ids)
    args = prefill.prefilled(model, ids, mask)
    (cache,) = args.values()
    assert isinstance(cache, prefill._attention_dtype_cache_class()) and cache.get_seq_length() == 0
    monkeypatch.setattr(type(model), "_supports_default_dynamic_cache", classmethod(lambda cls: False))
    assert prefill.prefilled(model, ids, mask) == {}
