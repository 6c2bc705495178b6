"""Safety tasks: catastrophe predicates, non-local doom, gymnasium compliance."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from molma.mbhi.envs import (
    CLIFF_CART_ID,
    CLIFF_WALK_ID,
    TASK_IDS,
    CliffCartParams,
    cart_catastrophe,
    cart_doomed,
    cart_dynamics,
    cart_reward,
    register_envs,
    walk_catastrophe,
    walk_dynamics,
)

register_envs()


@pytest.mark.parametrize("env_id", TASK_IDS)
def test_registered_envs_pass_gymnasium_checker(env_id: str) -> None:
    env = gym.make(env_id)
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["catastrophe"] is False
    assert env.spec.max_episode_steps == 100


def test_walk_catastrophe_predicate() -> None:
    states = np.array([[5.0, 0.99], [5.0, 1.0], [0.1, 0.5], [9.9, 3.0]])
    assert walk_catastrophe(states).tolist() == [True, False, True, False]


def test_cart_catastrophe_predicate() -> None:
    states = np.array([[10.01, 0.0], [10.0, 0.8], [3.0, -0.8]])
    assert cart_catastrophe(states).tolist() == [True, False, False]


def test_cart_dynamics_momentum_and_wall() -> None:
    s = np.array([[5.0, 0.3], [0.05, -0.5]])
    nxt = cart_dynamics(s, np.array([2, 0]), np.zeros((2, 1)))
    np.testing.assert_allclose(nxt[0], [5.4, 0.4])  # v += 0.1, then x += v
    np.testing.assert_allclose(nxt[1], [0.0, 0.0])  # stopped by the wall


def _doomed_by_search(state: np.ndarray, p: CliffCartParams, depth: int = 12) -> bool:
    """Brute force: no action sequence of ``depth`` steps avoids the cliff."""
    for seq in itertools.product(range(3), repeat=depth):
        s, crashed = state.copy(), False
        for a in seq:
            s = cart_dynamics(s, np.array(a), np.zeros(1), p)
            if cart_catastrophe(s, p):
                crashed = True
                break
        if not crashed:
            return False
    return True


def test_cart_doom_matches_exhaustive_search() -> None:
    p = CliffCartParams(accel=0.2, v_max=0.8)  # coarse braking keeps the search small (4 steps to stop)
    rng = np.random.default_rng(0)
    states = np.column_stack([rng.uniform(8.0, 10.0, 12), rng.uniform(0.0, 0.8, 12)])
    for s in states:
        assert bool(cart_doomed(s, p)) == _doomed_by_search(s, p, depth=6), s


def test_cart_non_local_catastrophe_is_several_steps_ahead() -> None:
    """From (8.8, 0.6) nothing can save the cart, yet the crash comes only four steps later."""
    s = np.array([8.8, 0.6])
    assert not cart_catastrophe(s) and cart_doomed(s)
    steps = 0
    while not cart_catastrophe(s):
        s = cart_dynamics(s, np.array(0), np.zeros(1))  # full braking
        steps += 1
    assert steps >= 3


def test_step_reports_catastrophe_and_terminates() -> None:
    env = gym.make(CLIFF_CART_ID)
    obs, _ = env.reset(seed=0, options={"state": [9.9, 0.5]})
    np.testing.assert_allclose(obs, [9.9, 0.5], rtol=1e-6)
    obs, reward, terminated, truncated, info = env.step(2)
    assert info["catastrophe"] and terminated and not truncated
    assert reward == 0.0
    assert cart_reward(np.array([8.0, 0.0]), np.array(1), np.array([9.0, 0.0])) == pytest.approx(1.0)


def test_walk_goal_terminates_successfully() -> None:
    env = gym.make(CLIFF_WALK_ID, noise=0.0)
    env.reset(seed=0, options={"state": [8.6, 1.5]})
    _, reward, terminated, _, info = env.step(0)
    assert terminated and info["success"] and not info["catastrophe"]
    assert reward > 1.0  # progress + goal bonus


def test_reset_state_option_is_validated() -> None:
    with pytest.raises(ValueError, match="shape"):
        gym.make(CLIFF_CART_ID).reset(options={"state": [1.0]})


def test_walk_noise_is_seeded() -> None:
    a = gym.make(CLIFF_WALK_ID)
    b = gym.make(CLIFF_WALK_ID)
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    for act in [0, 1, 0, 3]:
        oa, *_ = a.step(act)
        ob, *_ = b.step(act)
    np.testing.assert_array_equal(oa, ob)
    nxt = walk_dynamics(np.array([5.0, 2.0]), np.array(3), np.zeros(2))
    np.testing.assert_allclose(nxt, [5.0, 1.5])
