"""Look-ahead: blocks an action that is safe now but leads to an unavoidable crash (non-local), which
HIRL's one-step check lets through; MPC then picks an action that keeps the cart safe."""

from __future__ import annotations

import numpy as np
import pytest

from molma.mbhi.blocker import BlockerConfig, BlockerEnsemble
from molma.mbhi.dynamics import DynamicsConfig, DynamicsEnsemble, SimulatorModel
from molma.mbhi.envs import CliffCartEnv, cart_doomed, cart_dynamics
from molma.mbhi.lookahead import Imagination, LookaheadConfig
from molma.mbhi.mpc import MPCConfig
from molma.mbhi.overseer import OverseerConfig, SimulatedOverseer
from molma.mbhi.shield import HIRLShield, MBHIShield

THROTTLE, COAST, BRAKE = 2, 1, 0
# throttle from here lands on (8.8, 0.6): not a catastrophe, but doomed (crash 4 steps later)
NON_LOCAL = np.array([8.2, 0.5], np.float32)


class OracleBlocker:
    """A perfect imitation of the myopic human: blocks (s, a) iff the next state is catastrophic."""

    ready = True

    def __init__(self, env: CliffCartEnv) -> None:
        self.env = env

    def assess(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        obs, actions = np.broadcast_arrays(np.asarray(obs, np.float64), np.asarray(actions)[..., None])
        nxt = self.env.dynamics(obs, actions[..., 0], np.zeros(obs.shape[:-1] + (1,)))
        p = self.env.catastrophe_fn(nxt).astype(float)
        return p, np.zeros_like(p)

    def flags(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return mean > 0.5

    def risk(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return mean


def always_throttle(obs: np.ndarray) -> np.ndarray:
    return np.full(len(obs), THROTTLE)


def _shields(env, blocker, model, continuation="policy"):
    hirl = HIRLShield(env, 3, None, blocker)
    mbhi = MBHIShield(env, 3, None, blocker, model, always_throttle,
                      LookaheadConfig(horizon=10, continuation=continuation), MPCConfig(), seed=0)
    for s in (hirl, mbhi):
        s.deploy()
    return hirl, mbhi


def test_the_test_state_is_a_non_local_catastrophe() -> None:
    env = CliffCartEnv()
    nxt = cart_dynamics(NON_LOCAL.astype(float), np.array(THROTTLE), np.zeros(1))
    assert not env.catastrophe_fn(nxt) and cart_doomed(nxt)
    overseer = SimulatedOverseer(env, OverseerConfig(samples=1))
    assert not overseer.judge(NON_LOCAL, THROTTLE)  # the human does not see it coming


@pytest.mark.parametrize("continuation", ["policy", "safest"])
def test_lookahead_blocks_non_local_catastrophe_that_hirl_lets_through(continuation: str) -> None:
    env = CliffCartEnv()
    hirl, mbhi = _shields(env, OracleBlocker(env), SimulatorModel(env, sample=False), continuation)
    d_hirl = hirl.decide(NON_LOCAL, THROTTLE)
    assert not d_hirl.blocked and d_hirl.executed == THROTTLE
    d = mbhi.decide(NON_LOCAL, THROTTLE)
    assert d.flagged and d.blocked and d.unsafe and d.source == "lookahead"
    nxt = cart_dynamics(NON_LOCAL.astype(float), np.array(d.executed), np.zeros(1))
    assert not cart_doomed(nxt)


def test_lookahead_leaves_safe_actions_alone() -> None:
    env = CliffCartEnv()
    _, mbhi = _shields(env, OracleBlocker(env), SimulatorModel(env, sample=False), "safest")
    d = mbhi.decide(np.array([3.0, 0.2], np.float32), THROTTLE)
    assert not d.flagged and not d.blocked and d.executed == THROTTLE


def test_imagination_scores_and_flags_plans() -> None:
    env = CliffCartEnv()
    im = Imagination(SimulatorModel(env, sample=False), OracleBlocker(env), env.reward_fn)
    plans = np.array([[THROTTLE] * 10, [BRAKE] * 10])
    res = im.evaluate_plans(NON_LOCAL, plans, gamma=1.0, penalty=20.0)
    assert res.unsafe_fraction.tolist() == [1.0, 0.0]
    assert res.first_flagged_step[0] == 2 and res.first_flagged_step[1] == -1  # 8.8, 9.5, crash
    assert res.risk.tolist() == [1.0, 0.0]
    assert res.score[1] > res.score[0]


@pytest.fixture(scope="module")
def learned() -> tuple[BlockerEnsemble, DynamicsEnsemble]:
    """A dynamics ensemble on random transitions and a blocker on the human's labels near the edge."""
    env = CliffCartEnv()
    rng = np.random.default_rng(0)
    states = np.column_stack([rng.uniform(2.0, 10.0, 3000), rng.uniform(-0.8, 0.8, 3000)])
    actions = rng.integers(0, 3, 3000)
    model = DynamicsEnsemble(2, 3, DynamicsConfig(members=5, sample=False, lr=3e-3), seed=0)
    nxt = env.simulate(states, actions, rng)
    task_reward = env.reward_fn(states, actions, nxt)
    safe = ~env.catastrophe_fn(nxt)  # as in MBHI, the reward head never sees a catastrophe
    model.add_batch(states[safe], actions[safe], nxt[safe], task_reward[safe], np.zeros(int(safe.sum()), bool))
    model.fit(600)
    overseer = SimulatedOverseer(env, OverseerConfig(samples=1, label_budget=10_000))
    for s, a in zip(states[:2500], actions[:2500]):
        overseer.judge(s, int(a))
    blocker = BlockerEnsemble(2, 3, BlockerConfig(train_steps=500, val_fraction=0.0), seed=0)
    blocker.update(overseer.log, force=True)
    return blocker, model


def test_learned_models_block_the_non_local_catastrophe(learned) -> None:
    blocker, model = learned
    env = CliffCartEnv()
    hirl, mbhi = _shields(env, blocker, model)
    assert not hirl.decide(NON_LOCAL, THROTTLE).blocked
    d = mbhi.decide(NON_LOCAL, THROTTLE)
    assert d.blocked and d.unsafe and d.executed in (BRAKE, COAST)
    # far from the edge the same proposal passes
    assert not mbhi.decide(np.array([3.0, 0.2], np.float32), THROTTLE).blocked
