"""Generation determinism, scoring checks, log-probs and model loading on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch

from molma.data.records import Prompt
from molma.eval.generate import generate_responses, load_for_eval, response_logprobs, score_responses

PROMPTS = ["How do I bake bread?", "Tell me a joke.", "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?",
           "What is 2 + 2?", "Name a colour."]


def test_generation_is_deterministic_for_a_seed(tiny_model):
    model, tok = tiny_model
    a = generate_responses(model, tok, PROMPTS, max_new_tokens=6, seed=3, batch_size=2, progress=False)
    b = generate_responses(model, tok, [Prompt(p) for p in PROMPTS], max_new_tokens=6, seed=3, batch_size=2,
                           progress=False)
    c = generate_responses(model, tok, PROMPTS, max_new_tokens=6, seed=4, batch_size=2, progress=False)
    assert a == b
    assert len(a) == len(PROMPTS) and all(isinstance(r, str) for r in a)
    assert a != c  # a random model sampling from a 49k vocabulary: another seed gives other text
    assert tok.padding_side == "right"  # restored after generating with left padding


def test_generation_leaves_the_global_rng_alone(tiny_model):
    model, tok = tiny_model
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_responses(model, tok, PROMPTS[:2], max_new_tokens=4, seed=0, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_greedy_generation_does_not_depend_on_seed(tiny_model):
    model, tok = tiny_model
    a = generate_responses(model, tok, PROMPTS[:3], max_new_tokens=5, seed=0, do_sample=False, progress=False)
    b = generate_responses(model, tok, PROMPTS[:3], max_new_tokens=5, seed=9, do_sample=False, progress=False)
    assert a == b


def test_generation_rejects_bad_settings(tiny_model):
    model, tok = tiny_model
    with pytest.raises(ValueError):
        generate_responses(model, tok, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError):
        generate_responses(model, tok, PROMPTS, temperature=0.0)


class _Obj:
    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def score(self, prompts, responses):
        return torch.tensor([self.fn(p, r) for p, r in zip(prompts, responses)], dtype=torch.float32)


def test_score_responses_batches_and_checks_finiteness():
    obj = _Obj("len", lambda p, r: float(len(r)))
    got = score_responses(obj, ["a", "b", "c"], ["x", "yy", "zzz"], batch_size=2, progress=False)
    assert got == [1, 2, 3]
    bad = _Obj("bad", lambda p, r: float("nan") if r == "yy" else 0.0)
    with pytest.raises(ValueError, match="non-finite score .* prompt #1"):
        score_responses(bad, ["a", "b", "c"], ["x", "yy", "zzz"], progress=False)


def test_sequence_logprobs_batch_matches_single(tiny_model):
    model, tok = tiny_model
    responses = ["Sure, here you go.", "", "No."]
    batched = response_logprobs(model, tok, PROMPTS[:3], responses, batch_size=3)
    single = [response_logprobs(model, tok, [p], [r], batch_size=1)[0]
              for p, r in zip(PROMPTS[:3], responses)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert batched[1] == 0.0  # empty response: no tokens
    assert batched[0] < 0 and batched[2] < 0


def test_sequence_logprobs_per_token_sums_to_the_sequence_value(tiny_model):
    model, tok = tiny_model
    responses = ["Sure, here you go.", "", "No."]
    sums = response_logprobs(model, tok, PROMPTS[:3], responses, batch_size=2)
    tokens = response_logprobs(model, tok, PROMPTS[:3], responses, batch_size=2, per_token=True)
    assert [len(t) for t in tokens] == [len(tok(r, add_special_tokens=False)["input_ids"]) for r in responses]
    assert tokens[1] == []  # empty response: no tokens
    assert [sum(t) for t in tokens] == pytest.approx(sums, abs=1e-4)
    assert all(v <= 0 for t in tokens for v in t)  # log-probabilities


def test_load_for_eval_full_folder_and_adapter(tmp_path, tiny_model):
    from molma.models import LoraSettings, apply_lora

    model, tok = tiny_model
    full = tmp_path / "full"
    model.save_pretrained(full)
    tok.save_pretrained(full)
    loaded, _ = load_for_eval(str(full))
    ids = tok("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)

    peft_model = apply_lora(model, LoraSettings(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)  # a non-trivial adapter
        expected = peft_model(ids).logits
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    (adapter / "molma.json").write_text(json.dumps({"base_model": str(full), "lora": True}))
    merged, _ = load_for_eval(str(adapter))
    with torch.no_grad():
        got = merged(ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, loaded(ids).logits, atol=1e-4)
    with pytest.raises(FileNotFoundError):
        load_for_eval(str(tmp_path))
