"""The continuous-throttle task: gymnasium compliance, exact doom, the action set, the stratified
Gaussian CEM and the continuous shield blocking a doomed throttle that HIRL lets through."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from molma.config import from_dict
from molma.mbhi.actions import ActionSet
from molma.mbhi.dynamics import SimulatorModel
from molma.mbhi.envs import CLIFF_THROTTLE_ID, CliffThrottleEnv, register_envs, throttle_dynamics
from molma.mbhi.lookahead import LookaheadConfig
from molma.mbhi.mpc import MPCConfig, stratified_gaussian_cem
from molma.mbhi.overseer import OverseerConfig, SimulatedOverseer
from molma.mbhi.shield import HIRLShield, MBHIShield, ShieldWrapper
from molma.mbhi.train import RunConfig, run_experiment

register_envs()


def _doomed_state() -> tuple[np.ndarray, CliffThrottleEnv]:
    """A state from which full throttle lands safely but doomed (found by search on a grid)."""
    env = CliffThrottleEnv(noise=0.0)
    zero = np.zeros(1)
    for x in np.arange(6.0, 9.6, 0.05):
        s = np.array([x, 0.5])
        nxt = throttle_dynamics(s, np.array(1.0), zero, env.params)
        if (not env.catastrophe_fn(s) and not env.doomed_fn(s) and not env.catastrophe_fn(nxt)
                and env.doomed_fn(nxt)):
            return s.astype(np.float32), env
    raise AssertionError("no non-local state found")


class OracleBlocker:
    """Perfect myopic blocker for the throttle task: blocks iff the next state is catastrophic."""

    ready = True

    def __init__(self, env: CliffThrottleEnv) -> None:
        self.env = env

    def assess(self, obs, actions):
        obs = np.asarray(obs, np.float64)
        acts = np.broadcast_to(np.asarray(actions, np.float64), np.broadcast_shapes(obs.shape[:-1],
                                                                                    np.shape(actions)))
        obs = np.broadcast_to(obs, acts.shape + obs.shape[-1:])
        nxt = self.env.dynamics(obs, acts, np.zeros(acts.shape + (1,)))
        p = self.env.catastrophe_fn(nxt).astype(float)
        return p, np.zeros_like(p)

    def flags(self, mean, std):
        return mean > 0.5

    def risk(self, mean, std):
        return mean


def test_throttle_env_passes_the_gymnasium_checker_and_takes_arrays() -> None:
    env = gym.make(CLIFF_THROTTLE_ID)
    check_env(env.unwrapped)
    env.reset(seed=0, options={"state": [9.95, 0.3]})
    _, reward, terminated, _, info = env.step(np.array([1.0], np.float32))
    assert info["catastrophe"] and terminated and reward == 0.0
    with pytest.raises(ValueError):
        env.step(np.array([np.nan], np.float32))


def test_throttle_doom_matches_search_over_constant_throttles() -> None:
    env = CliffThrottleEnv(noise=0.0)
    rng = np.random.default_rng(0)
    states = np.column_stack([rng.uniform(5.0, 10.0, 300), rng.uniform(-0.6, 0.6, 300)])
    doomed = env.doomed_fn(states)
    zero = np.zeros((300, 1))
    saved = np.zeros(300, bool)
    for u in np.linspace(-1.0, 1.0, 9):  # full braking is optimal, so no constant throttle saves a doomed state
        s, crashed = states.copy(), env.catastrophe_fn(states)
        for _ in range(20):
            s = env.dynamics(s, np.full(300, u), zero)
            crashed |= env.catastrophe_fn(s)
        saved |= ~crashed
    assert doomed.any() and (~doomed).any()
    assert np.array_equal(doomed, ~saved)


def test_action_set_encodes_and_converts() -> None:
    cont = ActionSet.from_space(gym.spaces.Box(-1.0, 1.0, (1,), np.float32), grid=5)
    assert not cont.discrete and cont.candidates.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert cont.encode(np.array([[-1.0, 0.5]])).shape == (1, 2, 1)
    assert cont.to_env(0.25).tolist() == [0.25] and cont.scalar(np.array([2.0])) == 1.0
    assert cont.nearest(np.array([0.3, -0.9])).tolist() == [3, 0]
    disc = ActionSet.from_space(gym.spaces.Discrete(3))
    assert disc.encode(np.array([2])).tolist() == [[0.0, 0.0, 1.0]] and disc.to_env(np.int64(1)) == 1


def test_stratified_gaussian_cem_fixes_first_actions_and_finds_the_best() -> None:
    target = np.array([0.5, -0.3, 0.8])

    def score(seqs):
        return -((seqs - target) ** 2).sum(1)

    res = stratified_gaussian_cem(score, 3, -1.0, 1.0, [None, -1.0], population=128, elites=8,
                                  iterations=8, rng=np.random.default_rng(0))
    assert np.allclose(res.stratum_best[0], target, atol=0.1)
    assert res.stratum_best[1][0] == -1.0 and np.allclose(res.stratum_best[1][1:], target[1:], atol=0.1)
    assert res.stratum_score[0] > res.stratum_score[1]


def test_continuous_shield_blocks_a_doomed_throttle_that_hirl_lets_through() -> None:
    s, env = _doomed_state()
    actions = ActionSet(low=-1.0, high=1.0, grid=5)
    blocker = OracleBlocker(env)
    hirl = HIRLShield(env, actions, None, blocker)
    mbhi = MBHIShield(env, actions, None, blocker, SimulatorModel(env, sample=False),
                      lambda obs: np.ones(len(obs)), LookaheadConfig(horizon=12),
                      MPCConfig(horizon=12, population=32, iterations=4), seed=0)
    for sh in (hirl, mbhi):
        sh.deploy()
    assert not hirl.decide(s, 1.0).blocked
    d = mbhi.decide(s, 1.0)
    assert d.flagged and d.blocked and d.unsafe and d.source == "lookahead"
    assert isinstance(d.executed, float) and -1.0 <= d.executed < 1.0
    nxt = throttle_dynamics(s.astype(float), np.array(d.executed), np.zeros(1), env.params)
    assert not env.doomed_fn(nxt)
    # the myopic human does not see it coming either
    assert not SimulatedOverseer(env, OverseerConfig(samples=1)).judge(s, 1.0)


def test_shield_wrapper_passes_continuous_actions_to_the_env() -> None:
    from molma.mbhi.shield import NullShield

    env = ShieldWrapper(gym.make(CLIFF_THROTTLE_ID), NullShield())
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0.3], np.float32))
    assert info["shield"]["executed"] == pytest.approx(0.3)


@pytest.mark.parametrize("method", ["hirl", "mbhi", "pets"])
def test_runs_on_the_continuous_task(method: str) -> None:
    cfg = from_dict(RunConfig, {
        "env": CLIFF_THROTTLE_ID, "method": method, "seed": 0, "total_steps": 300, "eval_episodes": 1,
        "log_every": 50, "dqn": {"hidden": [32], "learning_starts": 100}, "overseer": {"label_budget": 200},
        "blocker": {"members": 2, "hidden": [32], "train_every": 100, "train_steps": 20},
        "dynamics": {"members": 2, "hidden": [32], "warmup": 100, "train_every": 100, "train_steps": 20},
        "lookahead": {"horizon": 4}, "mpc": {"horizon": 4, "population": 4, "iterations": 2}})
    r = run_experiment(cfg)
    assert r.steps[-1] == 300 and np.isfinite(r.summary["final_return"])
    if method != "pets":
        assert r.summary["labels_used"] > 0
