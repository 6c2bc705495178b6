"""CEM finds the known optimum of small problems (discrete sequences, continuous quadratic)."""

from __future__ import annotations

import numpy as np
import pytest

from molma.mbhi.mpc import categorical_cem, gaussian_cem, sample_categorical

TARGET = np.array([2, 0, 1, 1, 2, 0, 2, 1])


def _match(seqs: np.ndarray) -> np.ndarray:
    return -(seqs != TARGET).sum(1).astype(float)


def test_categorical_cem_finds_the_unique_best_sequence() -> None:
    # 3**8 = 6561 sequences; CEM evaluates 64 x 6 = 384 of them
    res = categorical_cem(_match, horizon=8, n_actions=3, population=64, elites=8, iterations=6,
                          rng=np.random.default_rng(0))
    np.testing.assert_array_equal(res.best, TARGET)
    assert res.best_score == 0.0
    assert np.all(res.probs[0].argmax(-1) == TARGET)


def test_stratified_cem_gives_the_best_continuation_of_every_first_action() -> None:
    res = categorical_cem(_match, horizon=8, n_actions=3, population=64, elites=8, iterations=6,
                          rng=np.random.default_rng(1), first_actions=[0, 1, 2])
    assert res.stratum_best[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(res.stratum_score, [-1.0, -1.0, 0.0])
    np.testing.assert_array_equal(res.stratum_best[:, 1:], np.tile(TARGET[1:], (3, 1)))
    np.testing.assert_array_equal(res.best, TARGET)


def test_cem_carries_safety_flags_of_the_best_plans() -> None:
    def score(seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _match(seqs), seqs[:, 0] != 1  # any plan starting with action 1 is "unsafe"

    res = categorical_cem(score, 8, 3, 64, 8, 5, np.random.default_rng(2), first_actions=[0, 1, 2])
    assert res.stratum_safe.tolist() == [True, False, True]


def test_gaussian_cem_finds_quadratic_minimum() -> None:
    opt = np.array([0.7, -1.3, 2.0])
    best, score = gaussian_cem(lambda x: -((x - opt) ** 2).sum(1), mean=np.zeros(3), std=np.full(3, 2.0),
                               population=64, elites=8, iterations=25, rng=np.random.default_rng(0))
    np.testing.assert_allclose(best, opt, atol=0.05)
    assert score > -0.01


def test_sample_categorical_respects_probabilities() -> None:
    probs = np.array([[[0.1, 0.9, 0.0], [1.0, 0.0, 0.0]]])
    draws = sample_categorical(probs, 4000, np.random.default_rng(0))
    assert draws.shape == (1, 4000, 2)
    assert np.mean(draws[0, :, 0] == 1) == pytest.approx(0.9, abs=0.02)
    assert not np.any(draws[0, :, 0] == 2) and np.all(draws[0, :, 1] == 0)


def test_non_finite_scores_raise() -> None:
    with pytest.raises(FloatingPointError):
        categorical_cem(lambda s: np.full(len(s), np.nan), 3, 2, 8, 2, 1, np.random.default_rng(0))
