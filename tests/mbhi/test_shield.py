"""Shield wrapper and HIRL: what executes, what the agent learns from, when the human leaves."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from molma.mbhi.blocker import BlockerConfig, BlockerEnsemble
from molma.mbhi.envs import CLIFF_CART_ID, register_envs, safety_env
from molma.mbhi.overseer import OverseerConfig, SimulatedOverseer
from molma.mbhi.shield import HIRLShield, NullShield, ShieldWrapper, agent_transitions

register_envs()


def _hirl_env(budget: int = 1000, **blocker_kw) -> tuple[ShieldWrapper, HIRLShield]:
    env = gym.make(CLIFF_CART_ID)
    sim = safety_env(env)
    overseer = SimulatedOverseer(sim, OverseerConfig(samples=1, label_budget=budget))
    blocker = BlockerEnsemble(2, 3, BlockerConfig(**blocker_kw), seed=0)
    shield = HIRLShield(sim, 3, overseer, blocker, seed=0)
    return ShieldWrapper(env, shield, catastrophe_penalty=5.0, block_penalty=20.0), shield


def test_null_shield_executes_and_shapes_catastrophes() -> None:
    env = ShieldWrapper(gym.make(CLIFF_CART_ID), NullShield(), catastrophe_penalty=5.0)
    env.reset(seed=0, options={"state": [9.9, 0.5]})
    _, reward, terminated, _, info = env.step(2)
    assert info["catastrophe"] and terminated
    assert reward == -5.0 and info["task_reward"] == 0.0
    assert info["shield"]["executed"] == 2 and not info["shield"]["blocked"]


def test_human_blocks_and_agent_gets_a_virtual_penalty_transition() -> None:
    env, shield = _hirl_env()
    obs, _ = env.reset(seed=0, options={"state": [9.5, 0.6]})
    nxt, reward, terminated, _, info = env.step(2)
    sh = info["shield"]
    assert sh["blocked"] and sh["unsafe"] and sh["source"] == "human"
    assert sh["executed"] == 0 and sh["penalty"] == 20.0
    assert not info["catastrophe"] and shield.labels_used == 3
    real, virtual = agent_transitions(obs, 2, reward, nxt, terminated, info)
    assert real.action == 0 and not real.virtual and real.reward == reward
    assert virtual.action == 2 and virtual.reward == -20.0 and virtual.terminated and virtual.virtual


def test_safe_steps_give_one_transition() -> None:
    env, _ = _hirl_env()
    obs, _ = env.reset(seed=0)
    nxt, reward, terminated, _, info = env.step(1)
    assert len(agent_transitions(obs, 1, reward, nxt, terminated, info)) == 1


def test_budget_exhaustion_hands_over_to_the_blocker() -> None:
    env, shield = _hirl_env(budget=20, train_every=10, train_steps=5)
    env.reset(seed=0)
    for t in range(1, 40):
        _, _, terminated, truncated, info = env.step(1)
        shield.on_step(t)
        if terminated or truncated:
            env.reset()
    assert not shield.human_active and shield.forced_handover
    assert shield.labels_used == 20 and shield.handover_step is not None
    assert shield.stats()["labels_used"] == 20


def test_blocker_review_after_handover_replaces_with_an_unblocked_action() -> None:
    class Stub:
        ready = True

        def assess(self, obs, actions):
            m = (np.asarray(actions) == 2).astype(float)
            return m, np.zeros_like(m)

        def flags(self, m, s):
            return m > 0.5

        def risk(self, m, s):
            return m

    env = gym.make(CLIFF_CART_ID)
    shield = HIRLShield(safety_env(env), 3, None, Stub(), seed=0)
    d = shield.decide(np.array([5.0, 0.0], np.float32), 2)
    assert d.blocked and d.unsafe and d.source == "blocker" and d.executed in (0, 1)
    assert not shield.decide(np.array([5.0, 0.0], np.float32), 1).blocked
