"""Rewarded Soups (Rame et al. 2023) of LoRA policies (issue 15): the soup's adapter is exact for
w * dW_A + (1 - w) * dW_B (checked against peft's own merge of each policy on a tiny model), the folders load
with molma eval's loader and with peft's AutoPeftModelForCausalLM, and ``molma soup`` writes a sweep JSON
that ``molma report`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from molma.models.soup import LoraAdapter, lora_deltas, read_lora_adapter, rewarded_soups, soup_lora, write_soup


def _linear_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("proj.weight")}


def _make_adapter(base: Path, out: Path, config, seed: int) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    (out / "molma.json").write_text(json.dumps({"base_model": str(base), "lora": True}))


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """A tiny base model and two LoRA policies on it with different ranks, alphas, rsLoRA and targets."""
    from peft import LoraConfig

    from molma.models import tiny_llama

    root = tmp_path_factory.mktemp("soup")
    model, tok = tiny_llama(seed=0)
    base = root / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    a, b = root / "so-help" / "final", root / "so-safe" / "final"
    _make_adapter(base, a, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                      task_type="CAUSAL_LM"), seed=1)
    _make_adapter(base, b, LoraConfig(r=3, lora_alpha=5, use_rslora=True, target_modules=["q_proj", "o_proj"],
                                      task_type="CAUSAL_LM"), seed=2)
    return base, a, b


def _merged_weights(folder: Path) -> dict[str, torch.Tensor]:
    from molma.eval.generate import load_for_eval

    model, _ = load_for_eval(str(folder))
    return _linear_weights(model)


def test_soup_adapter_equals_the_weighted_sum_of_deltas(policies, tmp_path):
    from transformers import AutoModelForCausalLM

    base, a, b = policies
    theta0 = _linear_weights(AutoModelForCausalLM.from_pretrained(base))
    # the policies' deltas as peft itself merges them
    d_a = {n: w - theta0[n] for n, w in _merged_weights(a).items()}
    d_b = {n: w - theta0[n] for n, w in _merged_weights(b).items()}
    assert any(d.abs().max() > 1e-3 for d in d_a.values()) and any(d.abs().max() > 1e-3 for d in d_b.values())
    soups = rewarded_soups([a, b], [0.0, 0.25, 1.0], tmp_path / "soup")
    assert [s.label for s in soups] == ["w0", "w0.25", "w1"]
    for s in soups:
        got = _merged_weights(s.path)
        for name, w in got.items():
            expected = theta0[name] + s.weight * d_a[name] + (1 - s.weight) * d_b[name]
            torch.testing.assert_close(w, expected, atol=2e-6, rtol=0)
    # ranks: w=0.25 concatenates 2 + 3; w=0 and w=1 keep one policy's rank
    ranks = {s.label: json.loads((s.path / "adapter_config.json").read_text())["r"] for s in soups}
    assert ranks == {"w0": 3, "w0.25": 5, "w1": 2}
    manifest = json.loads((tmp_path / "soup" / "soup.json").read_text())
    assert [p["coefficients"] for p in manifest["soups"]] == [[0.0, 1.0], [0.25, 0.75], [1.0, 0.0]]
    meta = json.loads((soups[1].path / "molma.json").read_text())
    assert meta["base_model"] == str(base) and meta["soup"]["coefficients"] == [0.25, 0.75]
    assert (soups[1].path / "README.md").read_text().startswith("---\n")


def test_soup_loads_with_autopeft_and_load_policy(policies, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from molma.eval.generate import load_for_eval

    base, a, b = policies
    out = write_soup([a, b], [0.5, 0.5], tmp_path / "half")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base.resolve())
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("hello soup", return_tensors="pt")["input_ids"]
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    merged, _ = load_for_eval(str(out))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, merged(ids).logits, atol=1e-4, rtol=0)
    from molma.rl import load_policy

    model, _ = load_policy(out)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, merged(ids).logits, atol=1e-5, rtol=0)


def test_a_linear_mix_of_lora_matrices_is_not_the_soup(policies):
    _, a, _ = policies
    ad = read_lora_adapter(a)
    other = LoraAdapter(ad.path, ad.config, {m: (torch.randn_like(x), torch.randn_like(y), s)
                                             for m, (x, y, s) in ad.modules.items()}, ad.kinds)
    name = next(iter(ad.modules))
    (a1, b1, s), (a2, b2, _) = ad.modules[name], other.modules[name]
    naive = s * (0.5 * b1 + 0.5 * b2) @ (0.5 * a1 + 0.5 * a2)
    exact = 0.5 * lora_deltas(ad)[name] + 0.5 * lora_deltas(other)[name]
    assert not torch.allclose(naive.double(), exact, atol=1e-3)
    config, state = soup_lora([ad, other], [0.5, 0.5])
    got = state[f"{name}.lora_B.weight"].double() @ state[f"{name}.lora_A.weight"].double()
    torch.testing.assert_close(got, exact, atol=1e-5, rtol=1e-5)
    assert config["r"] == config["lora_alpha"] == 4 and not config["use_rslora"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.floats(0.5, 16), st.booleans(), st.booleans()), min_size=1,
                max_size=3),
       st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3), st.integers(0, 2**16))
def test_soup_of_random_adapters_is_exact(specs, raw, seed):
    """Any ranks, alphas, rsLoRA, modules present in only some adapters: s B A of the soup = sum c_i dW_i."""
    gen = torch.Generator().manual_seed(seed)
    adapters = []
    for r, alpha, rslora, has_second in specs:
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
                  "target_modules": ["m1", "m2"] if has_second else ["m1"]}
        scale = alpha / (r ** 0.5 if rslora else r)
        modules = {"base_model.model.m1": (torch.randn(r, 5, generator=gen), torch.randn(6, r, generator=gen), scale)}
        if has_second:
            modules["base_model.model.m2"] = (torch.randn(r, 3, generator=gen), torch.randn(4, r, generator=gen), scale)
        adapters.append(LoraAdapter(Path("x"), config, modules, dict.fromkeys(modules, "lora")))
    weights = [x + 1e-3 for x in raw[:len(adapters)]]
    coefs = [w / sum(weights) for w in weights]
    config, state = soup_lora(adapters, coefs)
    for name in {m for ad in adapters for m in ad.modules}:
        expected = sum(c * lora_deltas(ad)[name] for ad, c in zip(adapters, coefs) if name in ad.modules)
        got = (config["lora_alpha"] / config["r"]) * state[f"{name}.lora_B.weight"].double() \
            @ state[f"{name}.lora_A.weight"].double()
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        assert state[f"{name}.lora_A.weight"].shape[0] == config["r"]


def test_bad_soups_are_refused(policies, tmp_path):
    base, a, b = policies
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        rewarded_soups([a, b], [1.5], tmp_path / "x")
    with pytest.raises(ValueError, match="twice"):
        rewarded_soups([a, b], [0.5, 0.50], tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="not a LoRA policy folder"):
        rewarded_soups([a, base], [0.5], tmp_path / "x")
    other = tmp_path / "other"
    other.mkdir()
    for f in a.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "molma.json").write_text(json.dumps({"base_model": "smollm2-135m-instruct", "lora": True}))
    with pytest.raises(ValueError, match="share their base model"):
        write_soup([a, other], [0.5, 0.5], tmp_path / "y")
    cfg = json.loads((a / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        read_lora_adapter(other)
    with pytest.raises(ValueError, match="sum to 1"):
        soup_lora([read_lora_adapter(a)], [0.5])
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob(".y.*"))


def test_cli_soup_with_evaluation_writes_a_sweep(policies, tmp_path):
    from molma.cli.main import main
    from molma.eval.sweep import analyse_fronts, read_sweep

    _, a, b = policies
    out = tmp_path / "soup"
    rc = main(["soup", "--policies", f"{a},{b}", "--weights", "0,0.5,1", "--out", str(out),
               "--rm", "len=rule:length", "--rm", "clean=rule:banned_words", "--n-prompts", "2",
               "--max-new-tokens", "4", "--batch-size", "2", "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["eval", "pareto", "w0", "w0.5", "w1"]
    sweep = read_sweep(out / "pareto" / "soup.json")
    assert sweep["method"] == "Rewarded soups" and sweep["objectives"] == ["len", "clean"]
    assert [p["weights"] for p in sweep["points"]] == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    fronts, _, _ = analyse_fronts([sweep])
    assert fronts[0].hypervolume >= 0.0
    assert main(["soup", "--policies", f"{a},{b}", "--weights", "2", "--out", str(out)]) == 2
