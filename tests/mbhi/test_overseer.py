"""Simulated overseer: blocks exactly the unsafe actions, counts labels, respects its budget."""

from __future__ import annotations

import numpy as np
import pytest

from molma.mbhi.envs import CliffCartEnv, CliffWalkEnv, cart_catastrophe, cart_dynamics
from molma.mbhi.overseer import LabelBudgetError, OverseerConfig, SimulatedOverseer


def test_cart_overseer_blocks_exactly_the_actions_that_crash_next_step() -> None:
    env = CliffCartEnv()
    overseer = SimulatedOverseer(env, OverseerConfig(samples=1, label_budget=10_000))
    xs, vs = np.meshgrid(np.linspace(8.5, 10.0, 16), np.linspace(-0.8, 0.8, 17))
    n = 0
    for x, v in zip(xs.ravel(), vs.ravel()):
        for a in range(3):
            truth = bool(cart_catastrophe(cart_dynamics(np.array([x, v]), np.array(a), np.zeros(1))))
            assert overseer.judge(np.array([x, v]), a) == truth
            n += 1
    assert overseer.labels_used == n == len(overseer.log)
    states, actions, blocked = overseer.log.arrays()
    assert states.shape == (n, 2) and actions.shape == blocked.shape == (n,)
    assert 0 < blocked.sum() < n


def test_cart_overseer_is_myopic_about_non_local_catastrophes() -> None:
    overseer = SimulatedOverseer(CliffCartEnv(), OverseerConfig(samples=1))
    # throttle from (8.2, 0.5) lands on (8.8, 0.6): safe now, doomed later -> the human lets it pass
    assert not overseer.judge(np.array([8.2, 0.5]), 2)
    # hand-built local cases
    assert overseer.judge(np.array([9.5, 0.6]), 2)  # 9.5 + 0.7 > 10
    assert overseer.judge(np.array([9.5, 0.6]), 1)  # 9.5 + 0.6 > 10
    assert not overseer.judge(np.array([9.5, 0.6]), 0)  # 9.5 + 0.5 = 10.0, still on the edge


def test_walk_overseer_uses_risk_threshold_under_slip_noise() -> None:
    overseer = SimulatedOverseer(CliffWalkEnv(), OverseerConfig(samples=400, risk_threshold=0.1), seed=0)
    assert overseer.judge(np.array([5.0, 1.4]), 3)  # down lands at y = 0.9 on average
    assert not overseer.judge(np.array([5.0, 1.4]), 1)  # up is safe
    assert overseer.judge(np.array([5.0, 1.05]), 0)  # moving right at the edge: ~37 % slip risk
    assert not overseer.judge(np.array([5.0, 1.6]), 0)  # far enough from the edge
    assert overseer.risk(np.array([5.0, 1.05]), 0) == pytest.approx(0.37, abs=0.08)


def test_review_replaces_with_a_safe_action_and_counts_every_label() -> None:
    overseer = SimulatedOverseer(CliffCartEnv(), OverseerConfig(samples=1))
    rng = np.random.default_rng(0)
    action, blocked = overseer.review(np.array([9.5, 0.6]), 2, 3, rng)
    assert blocked and action == 0
    assert overseer.labels_used == 3  # the proposal and both alternatives were judged
    action, blocked = overseer.review(np.array([2.0, 0.0]), 2, 3, rng)
    assert (action, blocked) == (2, False) and overseer.labels_used == 4


def test_label_budget_is_enforced() -> None:
    overseer = SimulatedOverseer(CliffCartEnv(), OverseerConfig(samples=1, label_budget=2))
    overseer.judge(np.array([2.0, 0.0]), 1)
    overseer.judge(np.array([2.0, 0.0]), 1)
    assert overseer.labels_left == 0
    with pytest.raises(LabelBudgetError):
        overseer.judge(np.array([2.0, 0.0]), 1)


def test_config_range_checks() -> None:
    with pytest.raises(ValueError, match="risk_threshold"):
        OverseerConfig(risk_threshold=0.0)
