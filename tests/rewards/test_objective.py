"""Objective protocol, rule-based rewards, load_objective and the NaN guard."""

from __future__ import annotations

import math

import pytest
import torch

from molma.rewards import (
    RULES,
    NonFiniteRewardError,
    Objective,
    RewardFunction,
    banned_words_reward,
    length_reward,
    load_objective,
    register_rule,
)


def test_reward_function_wraps_lists_and_tensors():
    f = RewardFunction(lambda p, r: [float(len(x)) for x in r], name="chars")
    out = f.score(["a", "b"], ["xyz", ""])
    assert isinstance(f, Objective)
    assert out.dtype == torch.float32 and out.shape == (2,) and out.device.type == "cpu"
    assert out.tolist() == [3.0, 0.0]
    g = RewardFunction(lambda p, r: torch.ones(len(r), dtype=torch.float64, requires_grad=True) * 2)
    out = g.score(["a"], ["b"])
    assert out.dtype == torch.float32 and not out.requires_grad and out.tolist() == [2.0]


def test_reward_function_checks_counts():
    f = RewardFunction(lambda p, r: [1.0], name="one")
    with pytest.raises(ValueError, match="'one'.*1 scores for 2 responses"):
        f.score(["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        f.score(["a", "b"], ["c"])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_name_the_objective_and_the_response(bad):
    f = RewardFunction(lambda p, r: [0.0, 1.0, bad], name="shaky")
    with pytest.raises(NonFiniteRewardError, match=r"'shaky'.*response index 2.*'third'"):
        f.score(["p"] * 3, ["first", "second", "third"])


def test_length_reward_grows_with_words_up_to_the_cap():
    f = length_reward(cap=4)
    out = f.score(["p"] * 4, ["", "one two", "one two three four", "a b c d e f g"])
    assert f.name == "length"
    assert out.tolist() == [0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="cap"):
        length_reward(cap=0)


def test_banned_words_reward_counts_whole_words_case_insensitively():
    f = banned_words_reward(["kill", "steal"], penalty=2.0)
    out = f.score(["p"] * 3, ["Kill it, then STEAL; kill!", "skills and stealth", "fine"])
    assert out.tolist() == [-6.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="empty"):
        banned_words_reward([" "])


def test_default_rules_conflict_longer_answers_pay_more_banned_words():
    short, long = "Yes.", "Yes, the answer is that a cat and the dog sleep in the sun to rest."
    length, banned = load_objective("rule:length", "L"), load_objective("rule:banned_words", "B")
    lengths, penalties = length.score(["p", "p"], [short, long]), banned.score(["p", "p"], [short, long])
    assert lengths[1] > lengths[0] and penalties[1] < penalties[0]


def test_load_objective_parses_rule_arguments_and_names():
    f = load_objective("rule:length:cap=2", "brevity")
    assert f.name == "brevity" and f.score(["p"], ["a b c"]).tolist() == [1.0]
    g = load_objective("rule:banned_words:words=foo|bar,penalty=0.5", "clean")
    assert g.score(["p"], ["foo bar baz foo"]).tolist() == [-1.5]
    assert load_objective("rule:length").name == "length"


def test_load_objective_errors_are_clear():
    with pytest.raises(ValueError, match="unknown rule 'nope'; known rules: .*length"):
        load_objective("rule:nope", "x")
    with pytest.raises(ValueError, match="not key=value"):
        load_objective("rule:length:30", "x")
    with pytest.raises(ValueError, match="unexpected keyword"):
        load_objective("rule:length:size=3", "x")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_objective("/no/such/reward/model", "x")


def test_register_rule_makes_it_loadable(monkeypatch):
    monkeypatch.setattr("molma.rewards.objective.RULES", dict(RULES))
    register_rule("exclaim", lambda: RewardFunction(lambda p, r: [x.count("!") for x in r], "exclaim"))
    assert load_objective("rule:exclaim", "wow").score(["p"], ["hi!!"]).tolist() == [2.0]
