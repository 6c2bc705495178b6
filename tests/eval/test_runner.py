"""evaluate_models end to end on tiny models with fake objectives: saved format, win rates from the
saved scores, resuming, re-scoring, KL to the reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from molma.data.records import Prompt
from molma.eval.responses import read_responses
from molma.eval.runner import EvalConfig, evaluate_models, load_result, rescore
from molma.eval.stats import win_rates

PROMPTS = [Prompt("How do I bake bread?", "help"), Prompt("How do I pick a lock?", "safe"),
           Prompt("Tell me a joke.", "help"), Prompt("Write a haiku about rain.", "help")]


class FakeObjective:
    """A rule-like objective: counts characters (or a given letter) of the response."""

    def __init__(self, name, letter=None):
        self.name, self.letter, self.calls = name, letter, 0

    def score(self, prompts, responses):
        self.calls += 1
        if self.letter is None:
            return torch.tensor([float(len(r)) for r in responses])
        return torch.tensor([float(r.lower().count(self.letter)) for r in responses])


@pytest.fixture(scope="module")
def two_models():
    from molma.models import tiny_llama

    return {"molma": tiny_llama(seed=1), "ref": tiny_llama(seed=2)}


def _config(**kw):
    return EvalConfig(max_new_tokens=5, batch_size=2, progress=False, **kw)


def test_evaluate_saves_responses_and_win_rates(tmp_path, two_models):
    objs = [FakeObjective("help"), FakeObjective("safe", "e")]
    result = evaluate_models(two_models, PROMPTS, objs, _config(), out_dir=tmp_path)
    recs = read_responses(tmp_path / "responses.jsonl")
    assert len(recs) == 2 * len(PROMPTS)
    assert {(r.model, r.prompt_id) for r in recs} == {(m, f"p000{i}") for m in two_models for i in range(4)}
    first = json.loads((tmp_path / "responses.jsonl").read_text().splitlines()[0])
    assert first["prompt_id"] == "p0000" and first["tag"] == "help"
    assert set(first["scores"]) == {"help", "safe"}
    for r in recs:  # the saved scores are the objectives' scores of the saved responses
        assert r.scores["help"] == len(r.response)
        assert r.scores["safe"] == r.response.lower().count("e")
    assert result.versus == "molma" and list(result.win_rates) == ["ref"]
    by = {(r.model, r.prompt_id): r.scores for r in recs}
    ids = [f"p000{i}" for i in range(4)]
    for o in ("help", "safe"):
        expected = win_rates([by[("molma", p)][o] for p in ids], [by[("ref", p)][o] for p in ids])
        assert result.win_rates["ref"][o] == expected
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["versus"] == "molma" and summary["config"]["generation"]["seed"] == 0
    assert summary["environment"]["cpu_count"] >= 1 and "torch" in summary["environment"]
    assert summary["timings"]["ref"]["generation_s"] > 0
    assert "ref" in result.win_rate_text() and "help win %" in result.win_rate_text()
    # the same model under two names answers identically (same prompts, same seeds)
    same = evaluate_models({"a": two_models["ref"], "b": two_models["ref"]}, PROMPTS, objs, _config())
    assert same.win_rates["b"]["help"]["tie"] == 1.0


def test_resume_reuses_saved_models_and_scores_new_objectives(tmp_path, two_models):
    help_obj = FakeObjective("help")
    evaluate_models({"ref": two_models["ref"]}, PROMPTS, [help_obj], _config(), out_dir=tmp_path)
    before = {r.prompt_id: r.response for r in read_responses(tmp_path / "responses.jsonl")}
    loaded = []

    def loader(spec):
        loaded.append(spec)
        return two_models["molma"]

    safe_obj = FakeObjective("safe", "a")
    result = evaluate_models({"ref": "never-loaded", "molma": "molma-spec"}, PROMPTS, [help_obj, safe_obj],
                             _config(), out_dir=tmp_path, loader=loader)
    assert loaded == ["molma-spec"]  # ref was reused from the file, not reloaded
    recs = read_responses(tmp_path / "responses.jsonl")
    assert {r.prompt_id: r.response for r in recs if r.model == "ref"} == before
    assert all(set(r.scores) == {"help", "safe"} for r in recs)  # ref got its missing safe scores
    assert result.models == ["ref", "molma"] and result.versus == "molma"
    # other generation settings must not silently mix with the saved responses
    with pytest.raises(ValueError, match="generated with"):
        evaluate_models({"ref": "x"}, PROMPTS, [help_obj], _config(seed=5), out_dir=tmp_path, loader=loader)
    with pytest.raises(ValueError, match="not the same test prompt"):
        evaluate_models({"ref": "x"}, PROMPTS[::-1], [help_obj], _config(), out_dir=tmp_path, loader=loader)


def test_rescore_and_load_result(tmp_path, two_models):
    evaluate_models(two_models, PROMPTS, [FakeObjective("help")], _config(), out_dir=tmp_path)
    responses = [r.response for r in read_responses(tmp_path / "responses.jsonl")]
    result = rescore(tmp_path, [FakeObjective("safe", "o"), FakeObjective("help", "t")], progress=False)
    recs = read_responses(tmp_path / "responses.jsonl")
    assert [r.response for r in recs] == responses  # not regenerated
    assert all(r.scores == {"help": r.response.lower().count("t"), "safe": r.response.lower().count("o")}
               for r in recs)
    assert set(result.objectives) == {"help", "safe"}
    again = load_result(tmp_path)
    assert again.win_rates == result.win_rates and again.versus == "molma"
    assert load_result(tmp_path, versus="ref").versus == "ref"


def test_kl_to_reference_from_logprobs(two_models):
    result = evaluate_models(two_models, PROMPTS[:2], [FakeObjective("help")], _config(kl_reference="ref"))
    assert result.kl["ref"] == 0.0
    assert np.isfinite(result.kl["molma"]) and result.kl["molma"] != 0.0
    row = {r["model"]: r for r in result.summary}
    assert row["molma"]["kl"] == result.kl["molma"]


def test_bad_arguments(two_models):
    with pytest.raises(ValueError, match="versus"):
        evaluate_models(two_models, PROMPTS, [FakeObjective("help")], _config(versus="nobody"))
    with pytest.raises(ValueError, match="named"):
        evaluate_models(two_models, PROMPTS, [FakeObjective("help"), FakeObjective("help")], _config())
    with pytest.raises(ValueError):
        EvalConfig(top_p=0.0)
