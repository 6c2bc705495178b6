"""PETS-style baseline: model-predictive control in the learned dynamics ensemble, no DQN, no human.

The agent is the planner: every step it runs the CEM of :class:`~molma.mbhi.mpc.SafeMPC` in the
dynamics ensemble (TS-inf, sampled noise) with the ensemble's *learned* reward and termination, and
executes the best first action (random actions until the model's first training). It learns the
reward it is given, i.e. the task reward minus the shaping penalty on a catastrophe, and that a
catastrophe ends the episode, from every real transition; it has no blocker (a never-blocking
:class:`~molma.mbhi.lookahead.NullBlocker`). It is the "planning alone" control for MBHI's sample
efficiency: whatever MBHI gains only from planning in a learned model, PETS should gain too.
"""

from __future__ import annotations

import numpy as np

from molma.mbhi.actions import ActionSet
from molma.mbhi.agents import Transition
from molma.mbhi.dynamics import DynamicsEnsemble
from molma.mbhi.lookahead import Imagination, LookaheadConfig, NullBlocker
from molma.mbhi.mpc import MPCConfig, SafeMPC


class PETSAgent:
    """Agent protocol (``act``, ``policy``, ``observe``, ``update``) around CEM-MPC in a learned model."""

    def __init__(self, model: DynamicsEnsemble, actions: ActionSet, mpc: MPCConfig | None = None,
                 seed: int = 0) -> None:
        self.model, self.actions = model, actions
        self.imagination = Imagination(model, NullBlocker(), None, None, actions)
        self.mpc = SafeMPC(self.imagination, actions, mpc or MPCConfig(), LookaheadConfig(), seed)
        self.rng = np.random.default_rng(seed + 777)
        self.steps = 0
        self.epsilon = 0.0  # for progress bars
        self.q = None

    def act(self, obs: np.ndarray, explore: bool = True) -> int | float:
        if not self.model.ready:
            if self.actions.discrete:
                return int(self.rng.integers(self.actions.n))
            return float(self.rng.uniform(self.actions.low, self.actions.high))
        return self.mpc.plan(np.asarray(obs, np.float32)).action

    def policy(self, obs: np.ndarray) -> np.ndarray:
        return self.actions.array([self.act(o, explore=False) for o in np.asarray(obs)])

    def observe(self, transition: Transition) -> None:
        if transition.virtual:
            return
        self.model.add(transition.obs, transition.action, transition.next_obs, transition.reward,
                       transition.terminated, 1.0)
        self.steps += 1

    def update(self) -> dict[str, float]:
        self.model.maybe_train(self.steps)
        return {}
