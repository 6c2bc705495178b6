"""Probabilistic dynamics ensemble: fits a known linear system, separates noise from ignorance."""

from __future__ import annotations

import numpy as np
import pytest

from molma.mbhi.dynamics import DynamicsConfig, DynamicsEnsemble, SimulatorModel
from molma.mbhi.envs import CliffCartEnv

A = np.array([[1.0, 0.1], [-0.2, 0.9]])
B = np.array([[0.0, 0.05, 0.1], [0.2, 0.0, -0.2]])  # effect of each of 3 discrete actions
NOISE = 0.02


def _linear_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.uniform(-1, 1, size=(n, 2))
    a = rng.integers(0, 3, size=n)
    nxt = x @ A.T + B[:, a].T + NOISE * rng.standard_normal((n, 2))
    return x.astype(np.float32), a, nxt.astype(np.float32)


@pytest.fixture(scope="module")
def fitted() -> DynamicsEnsemble:
    rng = np.random.default_rng(0)
    model = DynamicsEnsemble(2, 3, DynamicsConfig(members=5, hidden=(64, 64), lr=3e-3), seed=0)
    model.add_batch(*_linear_data(4000, rng))
    model.fit(1500)
    return model


def test_fits_known_linear_system(fitted: DynamicsEnsemble) -> None:
    rng = np.random.default_rng(1)
    x, a, _ = _linear_data(500, rng)
    truth = x @ A.T + B[:, a].T
    mean, var = fitted.predict(x, a)
    assert mean.shape == var.shape == (5, 500, 2)
    rmse = np.sqrt(np.mean((mean.mean(0) - truth) ** 2))
    assert rmse < 0.3 * NOISE + 0.01
    # the learned aleatoric std matches the true noise level
    assert np.sqrt(var.mean()) == pytest.approx(NOISE, rel=0.5)


def test_epistemic_spread_grows_off_the_data(fitted: DynamicsEnsemble) -> None:
    inside = np.array([[0.0, 0.0], [0.5, -0.5]], np.float32)
    outside = np.array([[6.0, 6.0], [-6.0, 5.0]], np.float32)
    epi_in, _ = fitted.uncertainty(inside, np.array([0, 1]))
    epi_out, _ = fitted.uncertainty(outside, np.array([0, 1]))
    assert epi_out.mean() > 5 * epi_in.mean()


def test_member_rollouts_sample_noise(fitted: DynamicsEnsemble) -> None:
    obs = np.zeros((5, 64, 2), np.float32)
    acts = np.zeros((5, 64), np.int64)
    sampled = fitted.predict_members(obs, acts, sample=True)
    mean = fitted.predict_members(obs, acts, sample=False)
    assert sampled.std(1).mean() == pytest.approx(NOISE, rel=0.5)
    assert mean.std(1).max() < 1e-6


def test_warmup_and_schedule() -> None:
    model = DynamicsEnsemble(2, 3, DynamicsConfig(warmup=50, train_every=100, train_steps=5), seed=0)
    rng = np.random.default_rng(0)
    x, a, n = _linear_data(40, rng)
    model.add_batch(x, a, n)
    assert not model.maybe_train(40) and not model.ready
    model.add_batch(*_linear_data(20, rng))
    assert model.maybe_train(60) and model.ready
    assert not model.maybe_train(100)
    assert model.maybe_train(160)


def test_non_finite_data_raises() -> None:
    model = DynamicsEnsemble(2, 3, DynamicsConfig(warmup=1), seed=0)
    x, a, n = _linear_data(10, np.random.default_rng(0))
    n[0, 0] = np.nan
    model.add_batch(x, a, n)
    with pytest.raises(FloatingPointError):
        model.fit(2)


def test_simulator_model_is_exact() -> None:
    model = SimulatorModel(CliffCartEnv(), members=2, sample=False)
    nxt = model.predict_members(np.array([[[5.0, 0.3]], [[5.0, 0.3]]], np.float32), np.array([[2], [0]]))
    np.testing.assert_allclose(nxt[:, 0], [[5.4, 0.4], [5.2, 0.2]], atol=1e-6)
