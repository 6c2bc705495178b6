"""Win rates, Wilson intervals, dominance and hypervolume against hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from molma.eval.stats import (
    bootstrap_ci,
    hypervolume,
    pareto_mask,
    reward_summary,
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
