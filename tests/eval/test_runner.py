"""evaluate_models end to end on tiny models with fake objectives: saved format, win rates and paired
tests from the saved scores, identical-text ties, resuming, re-scoring, KL to the reference (k3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from molma.data.records import Prompt
from molma.eval.generate import response_logprobs
from molma.eval.responses import ResponseRecord, read_responses
from molma.eval.runner import EvalConfig, compute_result, evaluate_models, kl_estimate, load_result, rescore
from molma.eval.stats import k3_kl, win_rates

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
    text = {(r.model, r.prompt_id): r.response for r in recs}
    for o in ("help", "safe"):
        expected = win_rates([by[("molma", p)][o] for p in ids], [by[("ref", p)][o] for p in ids])
        got = result.win_rates["ref"][o]
        # every statistic of win_rates (counts, shares, Wilson intervals, sign test, bootstrap), plus
        # the ties whose two responses are the same text
        assert {k: got[k] for k in expected} == expected
        assert set(got) == {*expected, "n_identical_ties"}
        assert got["n_identical_ties"] == sum(
            text[("molma", p)] == text[("ref", p)] and by[("molma", p)][o] == by[("ref", p)][o] for p in ids)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["versus"] == "molma" and summary["config"]["generation"]["seed"] == 0
    assert summary["environment"]["cpu_count"] >= 1 and "torch" in summary["environment"]
    assert summary["timings"]["ref"]["generation_s"] > 0
    assert "ref" in result.win_rate_text() and "help win %" in result.win_rate_text()
    # the same model under two names answers identically (same prompts, same seeds)
    same = evaluate_models({"a": two_models["ref"], "b": two_models["ref"]}, PROMPTS, objs, _config())
    assert same.win_rates["b"]["help"]["tie"] == 1.0
    for o in ("help", "safe"):  # every tie is identical text; no evidence either way
        r = same.win_rates["b"][o]
        assert (r["n_identical_ties"], r["win_excl_ties"], r["sign_p"], r["mean_diff"]) == (4, None, 1.0, 0.0)
    assert "same text" in same.win_rate_text() and "b 4" in same.win_rate_text()
    assert "no significant difference from b" in same.verdict()


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


def test_kl_to_reference_from_logprobs(tmp_path, two_models):
    result = evaluate_models(two_models, PROMPTS[:2], [FakeObjective("help")], _config(kl_reference="ref"),
                             out_dir=tmp_path)
    assert result.kl["ref"] == 0.0
    assert np.isfinite(result.kl["molma"]) and result.kl["molma"] > 0.0  # k3: never negative
    row = {r["model"]: r for r in result.summary}
    assert row["molma"]["kl"] == result.kl["molma"]
    # recomputed by hand: per-token log-probs of molma's responses under both models, k3 summed per
    # response, averaged over responses
    model, tok = two_models["molma"]
    responses = [r.response for r in result.records if r.model == "molma"]
    lp = response_logprobs(model, tok, PROMPTS[:2], responses, batch_size=2, per_token=True)
    lr = response_logprobs(*two_models["ref"], PROMPTS[:2], responses, batch_size=2, per_token=True)
    assert result.kl["molma"] == pytest.approx(float(np.mean(k3_kl(lp, lr))), rel=1e-5)
    details = result.kl_details["molma"]
    assert details["estimator"].startswith("k3 per token")
    assert details["mean_log_ratio"] == pytest.approx(np.mean([sum(a) - sum(b) for a, b in zip(lp, lr)]),
                                                      rel=1e-5, abs=1e-6)
    assert (details["n_responses"], details["n_tokens"]) == (2, sum(len(x) for x in lp))
    assert result.kl_details["ref"]["kl"] == 0.0 and result.kl_details["ref"]["mean_log_ratio"] == 0.0
    again = load_result(tmp_path)  # saved in summary.json and read back
    assert again.kl == result.kl and again.kl_details == result.kl_details


def test_kl_estimate_hand_values():
    lg = np.log
    # two responses; per token d = log ref - log pi: (-log 2, 0) and (log 3)
    got = kl_estimate([[lg(0.5), lg(0.25)], [lg(0.2)]], [[lg(0.25), lg(0.25)], [lg(0.6)]])
    k3 = [0.5 - 1 + np.log(2), 2 - np.log(3)]
    assert got["kl"] == pytest.approx(np.mean(k3))
    assert got["kl_se"] == pytest.approx(np.std(k3, ddof=1) / np.sqrt(2))
    assert got["mean_log_ratio"] == pytest.approx((np.log(2) - np.log(3)) / 2)  # negative here
    assert (got["n_responses"], got["n_tokens"]) == (2, 3)
    # different tokenisations: k3 of the whole-sequence log-ratio D = log 0.5 - 2 log 0.5 = log 2,
    # exp(D) - 1 - D = 1 - log 2
    got = kl_estimate([[lg(0.5), lg(0.5)]], [[lg(0.5)]])
    assert got["kl"] == pytest.approx(1 - np.log(2)) and "differ" in got["estimator"]
    with pytest.raises(ValueError):
        kl_estimate([], [])


def test_compute_result_counts_identical_text_ties_and_tests():
    recs = []
    for i in range(12):
        # molma wins 9, loses 1; prompts 10 and 11 are ties, only prompt 10 with the same text
        mh = 1.0 if i < 9 else (0.0 if i == 9 else 5.0)
        rh = 0.0 if i < 9 else (1.0 if i == 9 else 5.0)
        recs.append(ResponseRecord(f"p{i:02d}", "q", "molma", "same" if i == 10 else f"m{i}", scores={"help": mh}))
        recs.append(ResponseRecord(f"p{i:02d}", "q", "ref", "same" if i == 10 else f"r{i}", scores={"help": rh}))
    r = compute_result(recs, "molma").win_rates["ref"]["help"]
    assert (r["n_win"], r["n_tie"], r["n_loss"], r["n_identical_ties"]) == (9, 2, 1, 1)
    assert r["win_excl_ties"] == 0.9 and r["sign_p"] == pytest.approx(0.021484375)
    assert r["mean_diff"] == pytest.approx(8 / 12)


def test_bad_arguments(two_models):
    with pytest.raises(ValueError, match="versus"):
        evaluate_models(two_models, PROMPTS, [FakeObjective("help")], _config(versus="nobody"))
    with pytest.raises(ValueError, match="named"):
        evaluate_models(two_models, PROMPTS, [FakeObjective("help"), FakeObjective("help")], _config())
    with pytest.raises(ValueError):
        EvalConfig(top_p=0.0)
