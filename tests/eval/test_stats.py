"""Win rates, Wilson intervals, sign test, paired bootstrap, k3 KL, dominance and hypervolume against
hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from molma.eval.stats import (
    bootstrap_ci,
    holm_adjusted,
    hypervolume,
    k3_kl,
    paired_bootstrap_ci,
    paired_comparison,
    pareto_mask,
    reward_summary,
    sign_test,
    summary_table,
    wilson_interval,
    win_rates,
)


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # p = 0.8: centre = (0.8 + 1.96²/20) / (1 + 1.96²/10) = 0.716738, half = 0.226581
    (8, 10, 0.490157, 0.943319),
    # p = 0.5: half = 1.96 / 1.38416 * sqrt(0.025 + 0.009604) = 0.263412
    (5, 10, 0.236588, 0.763412),
    # p = 0: centre = half = 0.19208 / 1.38416 = 0.138771
    (0, 10, 0.0, 0.277543),
    (10, 10, 0.722457, 1.0),
])
def test_wilson_interval_hand_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-5)
    assert hi == pytest.approx(high, abs=1e-5)


def test_wilson_interval_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # z = 1 (68 %), k = 1, n = 4: centre = (0.25 + 0.125) / 1.25 = 0.3,
    # half = 0.8 * sqrt(0.046875 + 0.015625) = 0.2
    lo, hi = wilson_interval(1, 4, z=1.0)
    assert (lo, hi) == pytest.approx((0.1, 0.5))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, z=0)


def test_win_rates_counts_wins_ties_losses():
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    b = [0.0, 2.0, 4.0, 4.05, 1.0]  # diffs 1, 0, -1, -0.05, 4
    r = win_rates(a, b)
    assert (r["n_win"], r["n_tie"], r["n_loss"], r["n"]) == (2, 1, 2, 5)
    assert (r["win"], r["tie"], r["loss"]) == pytest.approx((0.4, 0.2, 0.4))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson_interval(2, 5))
    r = win_rates(a, b, tol=0.1)  # -0.05 becomes a tie
    assert (r["n_win"], r["n_tie"], r["n_loss"]) == (2, 2, 1)
    r = win_rates(b, a)  # symmetric
    assert (r["n_win"], r["n_tie"], r["n_loss"]) == (2, 1, 2)


def test_win_rates_rejects_bad_input():
    with pytest.raises(ValueError, match="one per prompt"):
        win_rates([1, 2], [1])
    with pytest.raises(ValueError, match="non-finite"):
        win_rates([1, float("nan")], [1, 2])
    with pytest.raises(ValueError):
        win_rates([1], [1], tol=-1)


def test_pareto_mask_dominance():
    pts = [(1, 3), (2, 2), (3, 1), (1, 1), (2, 2), (0.5, 3)]
    assert pareto_mask(pts).tolist() == [True, True, True, False, True, False]
    # minimising both: only (1, 1) and (0.5, 3) survive
    assert pareto_mask(pts, maximize=False).tolist() == [False, False, False, True, False, True]
    # maximise x, minimise y: (2, 1) dominates (1, 2); (3, 3) and (2, 1) trade off
    assert pareto_mask([(2, 1), (1, 2), (3, 3)], maximize=[True, False]).tolist() == [True, False, True]
    assert pareto_mask(np.zeros((0, 2))).size == 0


def test_hypervolume_2d_hand_examples():
    front = [(1, 3), (2, 2), (3, 1)]
    # union of [0,1]x[0,3], [0,2]x[0,2], [0,3]x[0,1] = 3 + 2 + 1
    assert hypervolume(front, (0, 0)) == pytest.approx(6.0)
    # a dominated point and a point not beyond the reference change nothing
    assert hypervolume([*front, (1, 1), (5, -1)], (0, 0)) == pytest.approx(6.0)
    # reference (0.5, 0.5): 2.5*0.5 + 1.5*1 + 0.5*1
    assert hypervolume(front, (0.5, 0.5)) == pytest.approx(3.25)
    # minimisation mirrors it: reference (4, 4)
    assert hypervolume(front, (4, 4), maximize=False) == pytest.approx(6.0)
    assert hypervolume([(2, 5)], (1, 1)) == pytest.approx(4.0)
    assert hypervolume(np.zeros((0, 2)), (0, 0)) == 0.0


def test_hypervolume_3d_hand_examples():
    assert hypervolume([(1, 1, 1)], (0, 0, 0)) == pytest.approx(1.0)
    # three boxes of volume 3, pairwise overlaps 1, triple overlap 1: 9 - 3 + 1
    assert hypervolume([(3, 1, 1), (1, 3, 1), (1, 1, 3)], (0, 0, 0)) == pytest.approx(7.0)
    # volume 2 each: 6 - 3 + 1
    assert hypervolume([(2, 1, 1), (1, 2, 1), (1, 1, 2)], (0, 0, 0)) == pytest.approx(4.0)


def _grid_volume(points: np.ndarray, ref: np.ndarray) -> int:
    """Unit cells [c, c+1] dominated by integer points (independent oracle)."""
    hi = points.max(axis=0)
    count = 0
    for cell in itertools.product(*[range(int(r), int(h)) for r, h in zip(ref, hi)]):
        upper = np.asarray(cell) + 1
        count += bool((points >= upper).all(axis=1).any())
    return count


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hypervolume_matches_grid_count(d):
    rng = np.random.default_rng(d)
    for _ in range(5):
        pts = rng.integers(0, 6, size=(7, d)).astype(float)
        ref = np.zeros(d)
        assert hypervolume(pts, ref) == pytest.approx(_grid_volume(pts, ref))


def test_hypervolume_checks_shapes():
    with pytest.raises(ValueError, match="objectives"):
        hypervolume([(1, 2)], (0, 0, 0))


def test_reward_summary_and_table():
    s = reward_summary([1.0, 2.0, 6.0])
    assert (s["mean"], s["median"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 1.0, 6.0, 3)
    assert s["std"] == pytest.approx(np.sqrt(14 / 3))
    rows = summary_table({"a": {"help": [1, 3], "safe": [0, 0]}, "b": {"help": [2, 2], "safe": [1, 5]}},
                         kl={"b": 0.25})
    assert rows[0] == {"model": "a", "help/mean": 2.0, "help/median": 2.0, "help/std": 1.0,
                       "safe/mean": 0.0, "safe/median": 0.0, "safe/std": 0.0, "n": 2, "kl": None}
    assert rows[1]["safe/mean"] == 3.0 and rows[1]["kl"] == 0.25


def test_bootstrap_ci_brackets_the_mean():
    x = np.arange(20, dtype=float)
    lo, hi = bootstrap_ci(x, n_resamples=500, seed=1)
    assert lo < x.mean() < hi
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)


# ------------------------------------------------------------------------------------------ sign test
@pytest.mark.parametrize(("n_win", "n_loss", "p"), [
    (9, 1, 0.021484375),   # 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    (1, 9, 0.021484375),   # symmetric
    (10, 0, 0.001953125),  # 2 / 1024
    (0, 3, 0.25),          # 2 / 8
    (6, 2, 0.2890625),     # 2 * (1 + 8 + 28) / 256 = 74 / 256
    (5, 5, 1.0),           # 2 * P(X <= 5) > 1, capped
    (3, 3, 1.0),
    (1, 0, 1.0),           # one pair can never be significant: 2 * 1/2
    (0, 0, 1.0),           # no non-tied pair: no evidence
])
def test_sign_test_hand_values(n_win, n_loss, p):
    assert sign_test(n_win, n_loss) == pytest.approx(p, rel=1e-12)


def test_sign_test_matches_exact_integer_sum():
    """Oracle: 2 * sum_{k <= min} C(n, k) / 2^n with Python's exact integers."""
    for n_win, n_loss in [(60, 40), (37, 63), (500, 540), (12, 30)]:
        n, k = n_win + n_loss, min(n_win, n_loss)
        exact = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
        assert sign_test(n_win, n_loss) == pytest.approx(exact, rel=1e-9)
    with pytest.raises(ValueError):
        sign_test(-1, 3)
    with pytest.raises(ValueError):
        sign_test(1.5, 3)


# ------------------------------------------------------------------------------------------ bootstrap
def test_paired_bootstrap_constant_difference_is_a_point():
    # differences exactly 0.5 everywhere: every resample has mean 0.5
    assert paired_bootstrap_ci([1.5, 2.5, -0.5, 4.0], [1.0, 2.0, -1.0, 3.5]) == (0.5, 0.5, 0.5)
    assert paired_bootstrap_ci([3.0], [1.0]) == (2.0, 2.0, 2.0)  # one prompt


def test_paired_bootstrap_hand_case_and_seeds():
    # differences (1, 0): resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5 %
    # and 97.5 % quantiles of 2000 resamples are 0 and 1
    assert paired_bootstrap_ci([1.0, 0.0], [0.0, 0.0]) == (0.5, 0.0, 1.0)
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.2, 1, 50), rng.normal(0, 1, 50)
    first = paired_bootstrap_ci(a, b, seed=7)
    assert paired_bootstrap_ci(a, b, seed=7) == first  # a seed always gives the same interval
    assert paired_bootstrap_ci(a, b, seed=8) != first
    assert first[0] == pytest.approx(float(np.mean(a - b)))
    assert first[1] < first[0] < first[2]
    # the paired design: a shared per-prompt offset does not widen the interval
    offset = rng.normal(0, 100, 50)
    assert paired_bootstrap_ci(a + offset, b + offset, seed=7) == pytest.approx(first)


def test_paired_bootstrap_symmetric_case_brackets_zero_and_matches_normal_theory():
    d = np.tile([-2.0, -1.0, 1.0, 2.0], 5)
    mean, low, high = paired_bootstrap_ci(d, np.zeros_like(d))
    assert mean == 0.0 and low < 0 < high
    # large sample: close to mean +- 1.96 sd / sqrt(n)
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 1.0, 400)
    mean, low, high = paired_bootstrap_ci(x, np.zeros(400), n_resamples=4000, level=0.95, seed=1)
    half = 1.96 * x.std() / np.sqrt(400)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(mean, abs=0.02)
    narrower = paired_bootstrap_ci(x, np.zeros(400), n_resamples=4000, level=0.5, seed=1)
    assert low < narrower[1] < narrower[2] < high


def test_paired_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="one pair per prompt"):
        paired_bootstrap_ci([1, 2], [1])
    with pytest.raises(ValueError, match="no pairs"):
        paired_bootstrap_ci([], [])
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap_ci([1, 2], [0, 0], level=1.0)


# ------------------------------------------------------------------------------------------------ k3
def test_k3_kl_hand_values():
    lg = math.log
    got = k3_kl([[lg(0.5), lg(0.25)], [lg(0.2)], [], [lg(0.9), lg(0.9)]],
                [[lg(0.25), lg(0.25)], [lg(0.6)], [], [lg(0.9), lg(0.9)]])
    # response 0: d = log(0.25/0.5) = -log 2 -> 0.5 - 1 + log 2 = 0.193147; second token d = 0 -> 0
    # response 1: d = log 3 -> 3 - 1 - log 3 = 0.901388; no tokens -> 0; identical log-probs -> exactly 0
    assert got.tolist() == pytest.approx([0.5 - 1 + math.log(2), 2 - math.log(3), 0.0, 0.0], abs=1e-12)
    assert got[3] == 0.0


def test_k3_kl_is_non_negative_where_the_log_ratio_is_not():
    rng = np.random.default_rng(1)
    pol = [np.log(rng.uniform(0.05, 1, size=n)) for n in (3, 7, 1, 12)]
    ref = [np.log(rng.uniform(0.05, 1, size=n)) for n in (3, 7, 1, 12)]
    naive = np.array([p.sum() - r.sum() for p, r in zip(pol, ref)])
    assert (naive < 0).any()  # the plain per-response log-ratio can be negative
    k3 = k3_kl(pol, ref)
    assert (k3 >= 0).all() and k3.shape == (4,)
    with pytest.raises(ValueError, match="different tokenizers"):
        k3_kl([[-1.0, -2.0]], [[-1.0]])
    with pytest.raises(ValueError, match="responses"):
        k3_kl([[-1.0]], [])


def test_k3_kl_is_unbiased_for_samples_of_the_policy():
    """Tokens drawn from pi: the mean k3 approaches KL(pi || ref) = sum pi log(pi / ref)."""
    pi = np.array([0.5, 0.3, 0.15, 0.05])
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    exact = float(np.sum(pi * np.log(pi / ref)))
    rng = np.random.default_rng(0)
    tokens = rng.choice(4, size=(20000, 2), p=pi)  # 20000 two-token responses (independent positions)
    est = k3_kl(np.log(pi[tokens]), np.log(ref[tokens])).mean()
    assert est == pytest.approx(2 * exact, rel=0.03)


# ------------------------------------------------------------------------------ paired comparisons
def test_win_rates_paired_statistics_hand_values():
    r = win_rates([2, 3, 1], [1, 1, 1])  # differences 1, 2, 0: two wins, one tie
    assert (r["n_decisive"], r["win_excl_ties"], r["sign_p"]) == (2, 1.0, 0.5)
    # Wilson(2, 2): centre = (1 + 0.9604) / 2.9208 = 0.671186, half = 0.328814
    assert (r["excl_ci_low"], r["excl_ci_high"]) == pytest.approx((0.342372, 1.0), abs=1e-6)
    # mean difference 1; resampled means k/3 for k = 0..6, P(0) = P(2) = 1/27 > 2.5 %
    assert (r["mean_diff"], r["diff_ci_low"], r["diff_ci_high"], r["ci_level"]) == (1.0, 0.0, 2.0, 0.95)
    r = win_rates([1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 2.0, 4.0, 4.05, 1.0])  # 2 wins, 1 tie, 2 losses
    assert (r["n_decisive"], r["win_excl_ties"], r["sign_p"]) == (4, 0.5, 1.0)
    assert (r["excl_ci_low"], r["excl_ci_high"]) == pytest.approx(wilson_interval(2, 4))
    assert r["mean_diff"] == pytest.approx((1 + 0 - 1 - 0.05 + 4) / 5)
    assert r["diff_ci_low"] < r["mean_diff"] < r["diff_ci_high"]
    # 9 wins and 1 loss out of 12 (2 ties): the win share counts ties, the non-tied share does not
    a, b = [1.0] * 9 + [0.0] + [5.0, 5.0], [0.0] * 9 + [1.0] + [5.0, 5.0]
    r = win_rates(a, b)
    assert r["win"] == 0.75 and r["win_excl_ties"] == 0.9 and r["sign_p"] == pytest.approx(0.021484375)
    assert (r["excl_ci_low"], r["excl_ci_high"]) == pytest.approx(wilson_interval(9, 10))


def test_win_rates_all_ties_and_no_prompts():
    r = win_rates([1, 1], [1, 1])
    assert r["win_excl_ties"] is None and r["sign_p"] == 1.0 and r["n_decisive"] == 0
    assert (r["excl_ci_low"], r["excl_ci_high"]) == (0.0, 1.0)
    assert (r["mean_diff"], r["diff_ci_low"], r["diff_ci_high"]) == (0.0, 0.0, 0.0)
    r = win_rates([], [])
    assert r["n"] == 0 and r["mean_diff"] is None and r["sign_p"] == 1.0


def test_paired_comparison_counts_identical_text_ties():
    a, b = [1.0, 1.0, 2.0, 3.0, 0.5], [1.0, 1.0, 1.0, 3.0, 0.0]
    same = [True, False, True, True, False]  # ties at 0, 1, 3; identical text at 0, 2, 3
    r = paired_comparison(a, b, identical=same)
    assert r["n_identical_ties"] == 2  # prompts 0 and 3
    assert {k: v for k, v in r.items() if k != "n_identical_ties"} == win_rates(a, b)
    assert paired_comparison(a, b)["n_identical_ties"] is None
    assert paired_comparison(a, b, tol=1.0, identical=same)["n_identical_ties"] == 3
    with pytest.raises(ValueError, match="identical-text flags"):
        paired_comparison(a, b, identical=[True])


def test_hypervolume_bootstrap_ci_collapses_on_constant_rewards_and_covers_the_estimate():
    from molma.eval.stats import hypervolume_bootstrap_ci

    n = 30
    ref = np.zeros((n, 2))
    # constant rewards: every resample gives the same front, (2 x 3) + (4 x 1) - overlap (2 x 1) = 8
    pts = [np.tile([2.0, 3.0], (n, 1)), np.tile([4.0, 1.0], (n, 1))]
    assert hypervolume_bootstrap_ci(pts, ref) == pytest.approx((8.0, 8.0))
    # noisy rewards: the interval contains the full-sample hypervolume and is not degenerate
    rng = np.random.default_rng(1)
    noisy = [p + rng.normal(0, 0.5, p.shape) for p in pts]
    ref_noisy = rng.normal(0, 0.5, ref.shape)
    low, high = hypervolume_bootstrap_ci(noisy, ref_noisy, n_resamples=500)
    estimate = hypervolume(np.array([p.mean(axis=0) for p in noisy]), ref_noisy.mean(axis=0))
    assert low < estimate < high


def test_hypervolume_bootstrap_ci_is_zero_when_no_point_beats_the_reference_and_checks_shapes():
    from molma.eval.stats import hypervolume_bootstrap_ci

    ref = np.ones((10, 2))
    assert hypervolume_bootstrap_ci([np.zeros((10, 2))], ref) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same prompts"):
        hypervolume_bootstrap_ci([np.zeros((9, 2))], ref)
    with pytest.raises(ValueError, match="non-finite"):
        hypervolume_bootstrap_ci([np.full((10, 2), np.nan)], ref)


# ------------------------------------------------------------------------------------------ Holm's correction
def test_holm_adjusted_hand_computed():
    # sorted: 0.01 * 4 = 0.04; 0.03 * 3 = 0.09; 0.04 * 2 = 0.08 -> running max 0.09; 0.2 * 1 = 0.2
    np.testing.assert_allclose(holm_adjusted([0.01, 0.04, 0.03, 0.2]), [0.04, 0.09, 0.09, 0.2])
    # capped at 1, and one test is its own family
    np.testing.assert_allclose(holm_adjusted([0.5, 0.6]), [1.0, 1.0])
    assert holm_adjusted([0.03]).tolist() == [0.03]
    assert holm_adjusted([]).size == 0


def test_holm_adjusted_laws():
    rng = np.random.default_rng(0)
    for m in (2, 5, 40):
        p = rng.uniform(0, 0.2, m)
        adj = holm_adjusted(p)
        assert np.all(adj >= p) and np.all(adj <= 1)           # never more lenient than the raw test
        assert np.all(adj <= np.minimum(1, m * p) + 1e-15)     # never stricter than Bonferroni
        order = np.argsort(p)
        assert np.all(np.diff(adj[order]) >= 0)                 # keeps the order of the raw p-values
        perm = rng.permutation(m)
        np.testing.assert_allclose(holm_adjusted(p[perm]), adj[perm])  # depends on the set, not its order


@pytest.mark.parametrize("bad", [[0.1, float("nan")], [1.5], [-0.1]])
def test_holm_adjusted_rejects_bad_pvalues(bad):
    with pytest.raises(ValueError, match="holm_adjusted"):
        holm_adjusted(bad)
