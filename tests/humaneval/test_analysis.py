"""Win rates by the paper's rule, mid-ranks and Kendall's W (checked against scipy's Friedman test)."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from scipy.stats import friedmanchisquare

from molma.humaneval import DEFAULT_OBJECTIVES, compute_results, kendall_w, mid_ranks, results_to_dict
from molma.humaneval.store import Progress, StudyData


def _data(
    ratings: list[tuple[str, str, str, str, int]], models=("a", "b", "c"), prompts=("p0", "p1"), scores=None
) -> StudyData:
    scores = scores or {}
    return StudyData(
        title="t",
        objectives=DEFAULT_OBJECTIVES,
        models=tuple(models),
        prompts=tuple(prompts),
        available={p: tuple(models) for p in prompts},
        scores={(p, m): scores.get((p, m), {}) for p in prompts for m in models},
        ratings=tuple(ratings),
        progress=(Progress("e1", "evaluator", 1, 2, 0, None, False),),
    )


def _rank(evaluator: str, prompt: str, objective: str, **ranks: int) -> list[tuple[str, str, str, str, int]]:
    return [(evaluator, prompt, model, objective, r) for model, r in ranks.items()]


def test_mid_ranks() -> None:
    assert mid_ranks([1, 2, 3]) == [1, 2, 3]
    assert mid_ranks([1, 1, 2]) == [1.5, 1.5, 3]
    assert mid_ranks([1, 1, 3]) == [1.5, 1.5, 3]
    assert mid_ranks([2, 2, 2, 2]) == [2.5] * 4
    assert mid_ranks([3, 1, 3, 2]) == [3.5, 1, 3.5, 2]


def test_kendall_w_extremes_and_hand_values() -> None:
    assert kendall_w([[1, 2, 3], [1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0)
    assert kendall_w([[1, 2, 3], [3, 2, 1]]) == pytest.approx(0.0)
    # R = (2, 5, 5), S = 6, W = 12 * 6 / (4 * 24) = 0.75
    assert kendall_w([[1, 2, 3], [1, 3, 2]]) == pytest.approx(0.75)
    # ties: mid-ranks (1.5, 1.5, 3) and (1, 2.5, 2.5): S = 4.5, W = 54 / (96 - 2 * 12) = 0.75
    assert kendall_w([[1, 1, 3], [1, 2, 2]]) == pytest.approx(0.75)
    assert kendall_w([[1, 1, 1], [1, 1, 1]]) is None  # all tied: undefined, never NaN
    assert kendall_w([[1, 2]]) is None and kendall_w([[1], [1]]) is None


def test_kendall_w_matches_friedman() -> None:
    """W = chi2_F / (m (n - 1)) with scipy's tie-corrected Friedman statistic."""
    rng = random.Random(3)
    for _ in range(40):
        m, n = rng.randint(2, 6), rng.randint(3, 7)
        rows = [[rng.randint(1, n) for _ in range(n)] for _ in range(m)]
        w = kendall_w(rows)
        if w is None:
            continue
        chi2 = friedmanchisquare(*[[mid_ranks(r)[i] for r in rows] for i in range(n)]).statistic
        assert w == pytest.approx(chi2 / (m * (n - 1)), abs=1e-9)


def test_win_rates_by_average_rank() -> None:
    ratings = (
        # p0 help: averages a 1.5, b 1.5, c 3 -> a ties b, a and b beat c
        _rank("e1", "p0", "help", a=1, b=2, c=3)
        + _rank("e2", "p0", "help", a=2, b=1, c=3)
        # p1 help: a 1, b 3, c 2 -> a beats both, c beats b
        + _rank("e1", "p1", "help", a=1, b=3, c=2)
        # p0 safe only; p1 safe never ranked -> excluded, not a loss
        + _rank("e1", "p0", "safe", a=3, b=1, c=2)
        + _rank("e2", "p0", "safe", a=3, b=2, c=1)
    )
    res = compute_results(_data(ratings))
    ab = res.human["help"][("a", "b")]
    assert (ab.wins, ab.ties, ab.losses, ab.n, ab.win_rate, ab.tie_rate) == (1, 1, 0, 2, 0.5, 0.5)
    assert res.human["help"][("b", "a")].losses == 1 and res.human["help"][("b", "a")].ties == 1
    assert (res.human["help"][("c", "b")].wins, res.human["help"][("c", "b")].losses) == (1, 1)
    assert res.human["help"][("a", "c")].win_rate == 1.0
    safe = res.human["safe"]
    assert res.ranked_prompts == {"help": 2, "safe": 1}
    assert (safe[("a", "b")].losses, safe[("a", "b")].n) == (1, 1)
    assert safe[("b", "c")].ties == 1  # b: 1.5, c: 1.5
    # p0 help: R = (3, 3, 6), S = 6 -> W = 0.75; p1 has one evaluator: no agreement to measure
    agreement = res.agreement["help"]
    assert (agreement.n_prompts, agreement.n_undefined, agreement.mean_w) == (1, 0, pytest.approx(0.75))
    for pairs in res.human.values():
        for p in pairs.values():
            assert p.wins + p.ties + p.losses == p.n
            if p.n:
                assert p.win_rate + p.tie_rate + p.loss_rate == pytest.approx(1.0)


def test_mid_ranks_make_tie_numbering_irrelevant() -> None:
    """'1,1,2' (dense) and '1,1,3' (competition) mean the same and average the same."""
    dense = _rank("e1", "p0", "help", a=1, b=1, c=2) + _rank("e2", "p0", "help", a=3, b=1, c=2)
    comp = _rank("e1", "p0", "help", a=1, b=1, c=3) + _rank("e2", "p0", "help", a=3, b=1, c=2)
    for ratings in (dense, comp):
        res = compute_results(_data(ratings, prompts=("p0",)))
        # e1 (1.5, 1.5, 3) + e2 (3, 1, 2): a 2.25, b 1.25, c 2.5
        assert res.human["help"][("b", "a")].wins == 1
        assert res.human["help"][("a", "c")].wins == 1


def test_single_evaluator_matches_own_order() -> None:
    rng = random.Random(0)
    ratings = []
    expected = {}
    for p in ("p0", "p1", "p2", "p3"):
        ranks = {m: rng.randint(1, 3) for m in "abc"}
        ratings += _rank("e1", p, "help", **ranks)
        expected[p] = ranks
    res = compute_results(_data(ratings, prompts=("p0", "p1", "p2", "p3")))
    for a, b in itertools.permutations("abc", 2):
        wins = sum(expected[p][a] < expected[p][b] for p in expected)
        ties = sum(expected[p][a] == expected[p][b] for p in expected)
        assert (res.human["help"][(a, b)].wins, res.human["help"][(a, b)].ties) == (wins, ties)


def test_model_based_and_json_has_no_nan() -> None:
    scores = {
        ("p0", "a"): {"help": 2.0, "safe": 0.0},
        ("p0", "b"): {"help": 1.0, "safe": 0.0},
        ("p0", "c"): {"help": 1.0, "safe": 1.0},
    }
    res = compute_results(_data([], scores=scores, prompts=("p0",)))
    assert res.model_based["help"][("a", "b")].win_rate == 1.0
    assert res.model_based["help"][("b", "c")].tie_rate == 1.0
    assert res.model_based["safe"][("c", "a")].win_rate == 1.0
    assert res.human["help"][("a", "b")].win_rate is None  # nothing ranked yet
    text = json.dumps(results_to_dict(res), allow_nan=False)  # raises on NaN/inf
    assert not math.isnan(len(text))
    assert json.loads(text)["win_rates"]["help"][0]["win_rate"] is None


def test_pair_result_intervals_and_sign_test() -> None:
    from molma.eval.stats import wilson_interval
    from molma.humaneval.analysis import PairResult

    p = PairResult("help", "a", "b", wins=9, ties=2, losses=1)
    assert p.win_rate == 0.75 and p.win_excl_ties == 0.9 and p.n_decisive == 10
    assert p.win_ci == pytest.approx(wilson_interval(9, 12))
    # Wilson(9, 10): centre (0.9 + 0.19208) / 1.38416 = 0.788984, half 1.416021 * sqrt(0.018604) = 0.193140
    assert p.excl_ci == pytest.approx((0.595844, 0.982124), abs=1e-6)
    assert p.sign_p == pytest.approx(0.021484375)  # 2 * 11 / 1024
    d = p.to_dict()
    assert (d["win_ci_low"], d["win_ci_high"]) == pytest.approx(wilson_interval(9, 12))
    assert (d["win_excl_ties"], d["sign_p"]) == (0.9, pytest.approx(0.021484375))
    empty = PairResult("help", "a", "b", 0, 0, 0).to_dict()
    assert (empty["win_ci_low"], empty["win_excl_ties"], empty["excl_ci_low"], empty["sign_p"]) == (
        None, None, None, 1.0)
    ties = PairResult("help", "a", "b", 0, 3, 0)
    assert ties.win_excl_ties is None and ties.sign_p == 1.0 and ties.to_dict()["win_ci_low"] == 0.0


def test_win_rates_csv_and_summary_show_intervals() -> None:
    from molma.humaneval.analysis import summary_text, win_rates_csv

    ratings = []
    for i in range(6):  # a is ranked first on every prompt by the one evaluator
        ratings += _rank("e1", f"p{i}", "help", a=1, b=2, c=3)
    res = compute_results(_data(ratings, prompts=tuple(f"p{i}" for i in range(6))))
    lines = win_rates_csv(res).splitlines()
    header = lines[0].split(",")
    assert header[:8] == ["objective", "model", "opponent", "wins", "ties", "losses", "n_prompts", "win_rate"]
    assert header[-7:] == ["win_ci_low", "win_ci_high", "win_excl_ties", "excl_ci_low", "excl_ci_high", "sign_p",
                           "model_based_sign_p"]
    row = dict(zip(header, next(line.split(",") for line in lines if line.startswith("help,a,b,"))))
    # 6 of 6: Wilson centre (1 + 0.32013) / 1.64027 = 0.804834, half 0.195166; p = 2 / 64
    assert float(row["win_ci_low"]) == pytest.approx(0.609666, abs=1e-5) and float(row["win_ci_high"]) == 1.0
    assert float(row["sign_p"]) == pytest.approx(0.03125) and row["model_based_sign_p"] == ""
    text = summary_text(res, "a")
    line = next(x for x in text.splitlines() if x.strip().startswith("b "))
    assert line.split() == ["b", "100.0%", "0.0%", "0.0%", "6", "[61.0%,", "100.0%]", "100.0%", "[61.0%,",
                            "100.0%]", "0.031", "-"]
    assert "sign p" in text and "no-tie win" in text
