"""The planner has no privileged knowledge by default: its reward and termination are learned by the
dynamics ensemble (never from a catastrophe transition); the simulator's are only in the ablation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from molma.config import from_dict
from molma.mbhi.dynamics import DynamicsConfig, DynamicsEnsemble
from molma.mbhi.envs import CliffCartEnv, cart_catastrophe
from molma.mbhi.lookahead import Imagination, NullBlocker
from molma.mbhi.mpc import MPCConfig, SafeMPC
from molma.mbhi.train import RunConfig, run_experiment

POISONED_ID = "test/PoisonedCliffCart-v0"


class PoisonedCliffCart(CliffCartEnv):
    """CliffCart whose *batched* reward / success functions (what a planner would call on imagined
    states) raise; the environment's own one-state step still uses them as usual."""

    def reward_fn(self, state, action, next_state):
        if np.ndim(state) > 1:
            raise AssertionError("the planner read the simulator's reward")
        return super().reward_fn(state, action, next_state)

    def success_fn(self, state):
        if np.ndim(state) > 1:
            raise AssertionError("the planner read the simulator's termination")
        return super().success_fn(state)


if POISONED_ID not in gym.registry:
    gym.register(id=POISONED_ID, entry_point=PoisonedCliffCart, max_episode_steps=100)

TINY = {
    "env": POISONED_ID, "total_steps": 500, "eval_episodes": 1, "log_every": 50,
    "dqn": {"hidden": [32], "learning_starts": 100},
    "overseer": {"label_budget": 400},
    "blocker": {"members": 3, "hidden": [32], "train_every": 100, "train_steps": 30, "min_positives": 1},
    "dynamics": {"members": 3, "hidden": [32], "warmup": 100, "train_every": 200, "train_steps": 30},
    "lookahead": {"horizon": 5},
    "mpc": {"horizon": 5, "population": 8, "iterations": 2},
}


@pytest.mark.parametrize("method", ["mbhi", "mbhi_nohuman", "pets"])
def test_default_planners_never_call_the_simulators_reward(method: str) -> None:
    r = run_experiment(from_dict(RunConfig, {**TINY, "method": method, "seed": 3}))
    assert r.summary["mpc_calls"] > 0  # the planner did run, on learned reward and termination only


def test_the_privileged_ablation_does_call_it() -> None:
    cfg = from_dict(RunConfig, {**TINY, "method": "mbhi", "seed": 3, "mpc": {**TINY["mpc"], "reward": "privileged"}})
    with pytest.raises(AssertionError, match="planner read the simulator"):
        run_experiment(cfg)


def _cart_model(weight_catastrophes: bool) -> DynamicsEnsemble:
    """A model of CliffCart trained on random transitions whose catastrophe steps carry a huge reward
    (a reward that would lead a planner over the edge) with weight 1 or 0."""
    env = CliffCartEnv()
    rng = np.random.default_rng(0)
    states = np.column_stack([rng.uniform(6.0, 10.0, 2000), rng.uniform(-0.8, 0.8, 2000)])
    actions = rng.integers(0, 3, 2000)
    nxt = env.simulate(states, actions, rng)
    crash = cart_catastrophe(nxt)
    rewards = np.where(crash, 50.0, env.reward_fn(states, actions, nxt))
    model = DynamicsEnsemble(2, 3, DynamicsConfig(members=3, sample=False, lr=3e-3), seed=0)
    for s, a, n, r, c in zip(states, actions, nxt, rewards, crash):
        model.add(s, int(a), n, float(r), False, 1.0 if (weight_catastrophes or not c) else 0.0)
    model.fit(400)
    return model


def test_catastrophe_transitions_do_not_teach_the_reward_head() -> None:
    near_edge = np.array([[9.8, 0.5]], np.float32)
    throttle = np.array([2])
    leaky = _cart_model(weight_catastrophes=True)
    clean = _cart_model(weight_catastrophes=False)
    M = 3
    s = np.broadcast_to(near_edge, (M, 1, 2))
    a = np.broadcast_to(throttle, (M, 1))
    assert leaky.predict_step(s, a)[1].mean() > 10.0  # it learned the "crash reward"
    assert clean.predict_step(s, a)[1].mean() < 2.0  # never saw it: a cart-reward-sized value


def test_learned_planner_is_led_astray_by_a_misleading_reward_only_when_it_learned_it() -> None:
    """With a never-blocking blocker, MPC from (9.0, 0.5) on the model that learned the misleading
    crash reward throttles over the edge; the default (catastrophes excluded) model does not prefer it."""
    obs = np.array([9.0, 0.5], np.float32)
    plans = {}
    for name, model in (("leaky", _cart_model(True)), ("clean", _cart_model(False))):
        im = Imagination(model, NullBlocker(), None, None, 3)
        mpc = SafeMPC(im, 3, MPCConfig(horizon=5, population=32, iterations=3), seed=0)
        plans[name] = mpc.plan(obs)
    assert plans["leaky"].action == 2
    assert plans["clean"].scores[2] < plans["leaky"].scores[2]
