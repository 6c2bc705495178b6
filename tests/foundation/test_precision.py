"""Mixed precision (molma.models.precision): resolution of ``auto``, float32 output layers inside bf16
autocast, token log-probabilities close to float32, and the trainer's losses and alpha with them."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from molma.models.precision import autocast, output_layers, resolve_precision
from molma.rl.rollout import GenerationSettings, generate, sequence_logprobs
from tests.foundation.lora import lora_policy_with_trained_adapters


def test_resolve_precision():
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8")


def test_bf16_forwards_with_float32_head(tiny_model):
    model, tok = tiny_model
    head = output_layers(model)
    assert head and head[0] is model.get_output_embeddings()
    ids = tok(["hello there, how are you"], return_tensors="pt")["input_ids"]
    seen = {}
    def record(module, inputs, output) -> None:
        seen["mlp"] = output.dtype

    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(record)
    with autocast(model, "bf16"):
        logits = model(input_ids=ids).logits
    hook.remove()
    assert seen["mlp"] == torch.bfloat16  # the body runs in bf16 ...
    assert logits.dtype == torch.float32  # ... the LM head in float32
    assert "forward" not in model.get_output_embeddings().__dict__  # the patch is undone
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    # gradients reach the float32 weights through the bf16 region
    with autocast(model, "bf16"):
        model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
    assert model.get_output_embeddings().weight.grad.dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16"])
def test_smollm2_token_logprobs_within_tolerance(precision):
    """On SmolLM2-135M-Instruct, bf16 token log-probs stay within a stated tolerance of float32: mean
    absolute error <= 0.05 nats per token, max <= 0.6 (measured: ~0.02 / ~0.25)."""
    from molma.data import load_builtin_prompts
    from molma.data.chat import render_prompt
    from molma.models import ModelNotAvailableError, load_model

    try:
        model, tok = load_model("smollm2-135m-instruct")
    except ModelNotAvailableError as err:  # pragma: no cover - the wheel is installed by make
        pytest.skip(str(err))
    texts = [render_prompt(tok, p.text) for p in load_builtin_prompts("help")[:4]]
    batch, _ = generate(model, tok, texts, GenerationSettings(max_new_tokens=12), seed=0)
    with torch.no_grad():
        lp32, _ = sequence_logprobs(model, batch)
        with autocast(model, precision):
            lp16, _ = sequence_logprobs(model, batch)
    assert lp16.dtype == torch.float32
    err = (lp16 - lp32).abs()[batch.response_mask > 0]
    assert err.mean() <= 0.05 and err.max() <= 0.6, (err.mean(), err.max())
    # the APA losses built on them agree too
    from molma.rl.losses import apa_loss

    adv = torch.randn(2, *lp32.shape, generator=torch.Generator().manual_seed(0))
    ref = lp32.detach() - 0.1
    l32 = apa_loss(lp32, ref, adv, batch.response_mask, 0.95)
    l16 = apa_loss(lp16, ref, adv, batch.response_mask, 0.95)
    assert torch.allclose(l16, l32, rtol=0.1, atol=0.05), (l16, l32)


def test_frozen_layers_use_one_half_copy_with_the_results_of_plain_autocast(tiny_model):
    """Frozen linear layers (the base under LoRA) run on a bf16 copy of their weights made once per context:
    the logits and the adapters' gradients are those of plain torch.autocast, the copies are gone after the
    context, and a backward after it still works."""
    from molma.models import LoraSettings, apply_lora

    model, tok = tiny_model
    policy = apply_lora(model, LoraSettings(r=2, alpha=4))
    ids = tok(["hello there, how are you"], return_tensors="pt")["input_ids"]
    head = output_layers(policy)

    def loss_and_grads(use_molma: bool):
        policy.zero_grad()
        if use_molma:
            with autocast(policy, "bf16"):
                logits = policy(input_ids=ids).logits
        else:  # what autocast(...) did before: torch.autocast around the body, the head in float32
            from molma.models.precision import _float32_outputs

            with torch.autocast("cpu", dtype=torch.bfloat16), _float32_outputs(head):
                logits = policy(input_ids=ids).logits
        loss = logits.float().logsumexp(-1).mean()
        loss.backward()  # outside the context
        return logits.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    plain_logits, plain_grads = loss_and_grads(False)
    logits, grads = loss_and_grads(True)
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=0)
    assert grads.keys() == plain_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-6, atol=1e-7)
    frozen = [m for m in policy.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    assert frozen and not any("forward" in m.__dict__ for m in frozen)  # the copies are dropped
    assert all(p.dtype == torch.float32 for p in policy.parameters())


def test_inference_context_folds_the_adapters_into_one_half_weight_and_restores_everything(tiny_model):
    """``autocast(..., inference=True)`` (generation) runs each LoRA layer as one bf16 matmul with W + s B A:
    the logits are as close to float32 as the unmerged bf16 forward's, with the adapters disabled they are the
    base model's exactly, and afterwards the float32 weights, peft's state and the forwards are untouched."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    model, tok = tiny_model
    policy = lora_policy_with_trained_adapters(model)
    ids = tok(["hello there, how are you doing today"], return_tensors="pt")["input_ids"]
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    with torch.no_grad():
        fp32 = policy(input_ids=ids).logits
        with autocast(policy, "bf16"):
            plain = policy(input_ids=ids).logits
        with autocast(policy, "bf16", inference=True):
            merged = policy(input_ids=ids).logits
        with policy.disable_adapter():
            with autocast(policy, "bf16"):
                base_plain = policy(input_ids=ids).logits
            with autocast(policy, "bf16", inference=True):
                base_merged = policy(input_ids=ids).logits
    assert not torch.equal(merged, plain)  # the merged path ran (other rounding) ...
    err_plain, err_merged = (plain - fp32).abs().max(), (merged - fp32).abs().max()
    assert err_merged <= 2 * err_plain + 1e-3, (err_merged, err_plain)  # ... and is as close to float32
    assert (merged - fp32).abs().max() < 0.1 * fp32.abs().max()
    torch.testing.assert_close(base_merged, base_plain, rtol=0, atol=0)  # disabled adapters: not folded in
    layers = [m for m in policy.modules() if isinstance(m, LoraLinear)]
    assert layers and not any(m.merged or "forward" in m.__dict__ for m in layers)
    assert not any("forward" in m.__dict__ for m in policy.modules())
    for n, p in policy.named_parameters():
        assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("context", ["inference", "sampling"])
def test_merged_generation_logprobs_match_the_training_forward_on_smollm2(context):
    """The rollout's log-probs (sampled with the adapters folded into bf16 weights; under ``sampling`` with the
    bf16 LM head whose top logits are recomputed in float32) stay within the bf16 tolerance of the float32
    teacher-forced log-probs the policy is trained against, on SmolLM2 + LoRA."""
    from molma.data import load_builtin_prompts
    from molma.data.chat import render_prompt
    from molma.models import ModelNotAvailableError, load_model

    try:
        model, tok = load_model("smollm2-135m-instruct")
    except ModelNotAvailableError as err:  # pragma: no cover - the wheel is installed by make
        pytest.skip(str(err))
    policy = lora_policy_with_trained_adapters(model, r=8)
    texts = [render_prompt(tok, p.text) for p in load_builtin_prompts("help")[:4]]
    with autocast(policy, "bf16", **{context: True}):
        batch, logp_rollout = generate(policy, tok, texts, GenerationSettings(max_new_tokens=12), seed=0)
    with torch.no_grad():
        lp32, _ = sequence_logprobs(policy, batch)
    err = (logp_rollout - lp32).abs()[batch.response_mask > 0]
    assert err.numel() > 0 and err.mean() <= 0.05 and err.max() <= 0.6, (err.mean(), err.max())


def test_lora_training_forward_gives_the_gradients_of_pefts_forward(tiny_model):
    """In training, molma's LoRA forward (the rank-r intermediate scaled, no float32 round trip of the input)
    gives logits and adapter gradients as close to float32 as peft's own forward under plain autocast."""
    from molma.models.precision import _float32_outputs

    model, tok = tiny_model
    policy = lora_policy_with_trained_adapters(model)
    ids = tok(["hello there, how are you doing today"], return_tensors="pt")["input_ids"]
    head = output_layers(policy)

    def run(mode: str):
        policy.zero_grad()
        if mode == "fp32":
            logits = policy(input_ids=ids).logits
        elif mode == "molma":
            with autocast(policy, "bf16"):
                logits = policy(input_ids=ids).logits
        else:  # peft's forward under torch.autocast, the head in float32
            with torch.autocast("cpu", dtype=torch.bfloat16), _float32_outputs(head):
                logits = policy(input_ids=ids).logits
        logits.float().logsumexp(-1).mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    ref_logits, ref_grads = run("fp32")
    errors = {}
    for mode in ("peft", "molma"):
        logits, grads = run(mode)
        rel = max(float((grads[n] - ref_grads[n]).norm() / ref_grads[n].norm().clamp_min(1e-12)) for n in grads)
        errors[mode] = (float((logits - ref_logits).abs().max()), rel)
    assert errors["molma"][0] <= 2 * errors["peft"][0] + 1e-3, errors
    assert errors["molma"][1] <= 2 * errors["peft"][1] + 1e-3 and errors["molma"][1] < 0.1, errors


def test_a_trainable_base_under_lora_still_gets_its_gradient(tiny_model):
    """molma's LoRA forward runs on a detached copy of the base weight, so a base a user unfroze keeps
    peft's forward and gets its gradient under half precision too."""
    model, tok = tiny_model
    policy = lora_policy_with_trained_adapters(model)
    layer = next(m for m in policy.modules() if hasattr(m, "lora_A") and m.lora_A)
    base = layer.get_base_layer()
    base.weight.requires_grad_(True)
    ids = tok(["hello there"], return_tensors="pt")["input_ids"]
    with autocast(policy, "bf16"):
        logits = policy(input_ids=ids).logits
    logits.float().logsumexp(-1).mean().backward()
    assert base.weight.grad is not None and base.weight.grad.abs().sum() > 0


def test_cpuinfo_facts_name_the_cpu_and_its_bf16_units():
    from molma.environment import cpuinfo_facts

    zen4 = ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n"
            "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert cpuinfo_facts(zen4) == {"cpu_model": "AMD EPYC", "cpu_bf16_units": ["avx512_bf16"]}
    spr = "model name : Intel(R) Xeon(R) Platinum 8481C\nflags : amx_bf16 amx_tile avx512_bf16\n"
    assert cpuinfo_facts(spr)["cpu_bf16_units"] == ["amx_bf16", "avx512_bf16"]
    # no bf16 unit (avx512bw is not one): auto precision falls back to fp32 on such a CPU
    assert cpuinfo_facts("model name : old\nflags : avx2 avx512bw\n")["cpu_bf16_units"] == []


def test_environment_info_records_the_cpu_for_timings():
    from molma.environment import environment_info, read_cpuinfo

    env = environment_info()
    assert env["cpu_model"] == read_cpuinfo()["cpu_model"]
    assert env["cpu_bf16_units"] == read_cpuinfo()["cpu_bf16_units"]


def test_sampling_head_recomputes_each_rows_top_logits_in_float32():
    """The decoding head: each row's largest logits exactly float32 (what the float32 head gives), the rest the
    bf16 product; an input of several positions (a scoring forward) takes the float32 head."""
    from molma.models import packing, precision

    torch.manual_seed(0)
    head = torch.nn.Linear(32, 500, bias=True)
    x = torch.randn(4, 1, 32)
    exact = F.linear(x, head.weight, head.bias)
    half = packing.packed_layer(head, torch.bfloat16)
    logits = precision.sampling_logits(x, half, head.weight, head.bias, exact_top=16)
    top = half(x).float().topk(16, dim=-1).indices
    torch.testing.assert_close(logits.gather(-1, top), exact.gather(-1, top), rtol=1e-6, atol=1e-6)
    rest = torch.ones_like(logits, dtype=torch.bool).scatter_(-1, top, False)
    assert torch.equal(logits[rest], half(x).float()[rest])
    assert (logits[rest] - exact[rest]).abs().max() > 0  # the tail keeps its bf16 rounding
    model = torch.nn.Sequential()
    model.get_output_embeddings = lambda: head
    many = torch.randn(4, 3, 32)
    with torch.no_grad():
        expected = precision.sampling_logits(x, half, head.weight, head.bias), F.linear(many, head.weight, head.bias)
        with precision.autocast(model, "bf16", sampling=True):
            got = head(x), head(many)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1], rtol=1e-6, atol=1e-5)
    assert "forward" not in head.__dict__  # restored
