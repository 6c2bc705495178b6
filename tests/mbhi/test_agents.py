"""DQN agent: learns a toy task, numpy policy matches torch, checkpoints round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molma.mbhi.agents import DQNAgent, DQNConfig, Transition
from molma.mbhi.blocker import BlockerEnsemble
from molma.mbhi.nets import load_module, save_module


def test_dqn_learns_a_contextual_bandit() -> None:
    """Reward 1 for the action equal to the (random) sign of the observation, else 0."""
    cfg = DQNConfig(hidden=(32,), learning_starts=50, eps_decay_steps=300, target_update=50, lr=3e-3)
    agent = DQNAgent(np.array([-1.0]), np.array([1.0]), 2, cfg, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(800):
        obs = rng.uniform(-1, 1, size=1).astype(np.float32)
        a = agent.act(obs)
        agent.observe(Transition(obs, a, float(a == int(obs[0] > 0)), obs, True))
        agent.update()
    test = np.linspace(-0.95, 0.95, 40, dtype=np.float32)[:, None]
    assert np.mean(agent.policy(test) == (test[:, 0] > 0)) > 0.95
    assert agent.epsilon == pytest.approx(cfg.eps_end)


def test_virtual_transitions_do_not_count_as_env_steps() -> None:
    agent = DQNAgent(np.zeros(2), np.ones(2), 3, DQNConfig(), seed=0)
    obs = np.zeros(2, np.float32)
    agent.observe(Transition(obs, 1, 0.0, obs, False))
    agent.observe(Transition(obs, 2, -20.0, obs, True, virtual=True))
    assert agent.steps == 1 and agent.buffer.size == 2


def test_numpy_policy_matches_torch_after_updates() -> None:
    agent = DQNAgent(np.zeros(2), np.ones(2), 3, DQNConfig(learning_starts=1, batch_size=8), seed=0)
    rng = np.random.default_rng(0)
    obs = rng.random((64, 2)).astype(np.float32)
    agent.policy(obs)  # caches numpy views of the weights ...
    for o in obs:
        agent.observe(Transition(o, int(rng.integers(3)), float(rng.random()), o, False))
        agent.update()
    assert agent.updates > 0  # ... which must follow the in-place updates
    np.testing.assert_array_equal(agent.policy(obs), agent.q_values(obs).argmax(-1))


def test_checkpoints_round_trip(tmp_path) -> None:
    blocker = BlockerEnsemble(2, 3, seed=0)
    path = save_module(blocker, tmp_path / "sub" / "blocker.safetensors", {"kind": "blocker"})
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    other = load_module(BlockerEnsemble(2, 3, seed=1), path)
    for (k, a), (_, b) in zip(blocker.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
