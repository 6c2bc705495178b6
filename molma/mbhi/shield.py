"""Shields: decide, before each step, whether the agent's proposed action is executed or replaced.

- :class:`NullShield`: executes everything (baselines "none" and "shaping").
- :class:`HIRLShield` (Saunders et al. 2017): the simulated human reviews every proposed action and
  replaces unsafe ones by a random safe one; the blocker ensemble learns from those labels and, once
  accurate on held-out labels (or when the label budget is spent), replaces the human. No look-ahead.
- :class:`MBHIShield`: HIRL plus, before acting, an imagined roll-out of the current policy in the
  learned dynamics ensemble checked by the blocker at every step; when it meets a (predicted)
  catastrophe, a stratified categorical-CEM MPC plans a safe action. While the human is still
  present it reviews the action finally chosen. The planner's reward and termination are learned by
  the dynamics ensemble (``privileged=True``: the simulator's, an ablation).
- :class:`SelfLabelShield`: MBHI without the human: the blocker learns from the agent's own real
  transitions (label = "this step was a catastrophe"), so it knows a catastrophe only after causing it.

:class:`ShieldWrapper` is the gymnasium wrapper: the agent proposes through ``step(action)``; the
wrapper executes the shield's choice, subtracts the catastrophe penalty (reward shaping) and reports
``info["shield"] = {proposed, executed, blocked, source, flagged, penalty}``. What an agent learns from
a step is :func:`agent_transitions`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from molma.mbhi.actions import ActionSet, as_action_set
from molma.mbhi.agents import Transition
from molma.mbhi.blocker import BlockerEnsemble
from molma.mbhi.dynamics import DynamicsEnsemble
from molma.mbhi.envs import SafetyEnv
from molma.mbhi.lookahead import Imagination, LookaheadConfig, ModelLike, Policy
from molma.mbhi.mpc import MPCConfig, SafeMPC
from molma.mbhi.overseer import LabelBudgetError, LabelLog, SimulatedOverseer

log = logging.getLogger(__name__)


@dataclass
class ShieldDecision:
    """Outcome of reviewing one proposed action."""

    proposed: int | float
    executed: int | float
    blocked: bool = False  # a different action is executed
    unsafe: bool = False  # the proposal was judged unsafe (the agent is penalised when also blocked)
    source: str = "none"  # who decided: none | human | blocker | lookahead
    flagged: bool = False  # the look-ahead met a catastrophe in imagination


class Shield:
    """Base class: executes the proposal; counts decisions."""

    def __init__(self) -> None:
        self.blocks = 0
        self.blocks_by_source: dict[str, int] = {}
        self.flags = 0

    def decide(self, obs: np.ndarray, proposed: int | float) -> ShieldDecision:
        return ShieldDecision(proposed, proposed)

    def record(self, obs: np.ndarray, action: int | float, next_obs: np.ndarray, reward: float = 0.0,
               success: bool = False, catastrophe: bool = False) -> None:
        """A real transition was observed (data for learned models): task reward, whether the episode
        ended successfully, whether it was a catastrophe."""

    def on_step(self, env_steps: int) -> None:
        """Called once per training step: periodic training, hand-over."""

    def deploy(self) -> None:
        """Switch to deployment: no human, no more training."""

    @property
    def labels_used(self) -> int:
        return 0

    def _count(self, d: ShieldDecision) -> ShieldDecision:
        if d.blocked:
            self.blocks += 1
            self.blocks_by_source[d.source] = self.blocks_by_source.get(d.source, 0) + 1
        self.flags += int(d.flagged)
        return d

    def stats(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "blocks_by_source": dict(self.blocks_by_source),
                "lookahead_flags": self.flags, "labels_used": self.labels_used}


class NullShield(Shield):
    """No oversight."""


class HIRLShield(Shield):
    """Human reviews until the blocker is accurate; then the blocker alone (no look-ahead)."""

    def __init__(self, env: SafetyEnv, n_actions: int | ActionSet, overseer: SimulatedOverseer | None,
                 blocker: BlockerEnsemble, seed: int = 0) -> None:
        super().__init__()
        self.actions = as_action_set(n_actions)
        self.env, self.n_actions = env, self.actions.n
        self.overseer, self.blocker = overseer, blocker
        self.rng = np.random.default_rng(seed + 4242)
        self.human_active = overseer is not None
        self.handover_step: int | None = None
        self.forced_handover = False
        self._env_steps = 0

    @property
    def labels_used(self) -> int:
        return self.overseer.labels_used if self.overseer is not None else 0

    def handover(self, forced: bool = False) -> None:
        """The blocker replaces the human (final training on every label first)."""
        if not self.human_active:
            return
        self.human_active = False
        self.handover_step = self._env_steps
        self.forced_handover = forced
        if self.overseer is not None and len(self.overseer.log):
            self.blocker.update(self.overseer.log, force=forced)
        log.info("blocker replaces the human at step %d after %d labels%s", self._env_steps,
                 self.labels_used, " (label budget spent)" if forced else "")

    def human_review(self, obs: np.ndarray, action: int | float) -> tuple[int | float, bool] | None:
        """Human decision, or None when the budget runs out (hand-over happens)."""
        assert self.overseer is not None
        try:
            return self.overseer.review(np.asarray(obs, np.float64), action, self.actions.candidates, self.rng)
        except LabelBudgetError:
            self.handover(forced=True)
            return None

    def blocker_review(self, obs: np.ndarray, action: int | float) -> tuple[int | float, bool]:
        """Blocker decision; replacement = random candidate it does not block, else the least risky."""
        if not self.blocker.ready:
            return action, False
        cands = self.actions.candidates
        acts = np.concatenate([[action], cands]).astype(self.actions.dtype)
        mean, std = self.blocker.assess(np.repeat(np.asarray(obs, np.float32)[None], len(acts), 0), acts)
        flags = self.blocker.flags(mean, std)
        if not flags[0]:
            return action, False
        safe = np.flatnonzero(~flags[1:])
        if len(safe):
            return cands[int(self.rng.choice(safe))].item(), True
        return cands[int(np.argmin(self.blocker.risk(mean, std)[1:]))].item(), True

    def review(self, obs: np.ndarray, action: int | float) -> tuple[int | float, bool, str]:
        """Human while present, blocker afterwards: ``(executed, blocked, source)``."""
        if self.human_active:
            out = self.human_review(obs, action)
            if out is not None:
                return out[0], out[1], "human"
        executed, blocked = self.blocker_review(obs, action)
        return executed, blocked, "blocker"

    def decide(self, obs: np.ndarray, proposed: int | float) -> ShieldDecision:
        executed, unsafe, source = self.review(obs, proposed)
        return self._count(ShieldDecision(proposed, executed, executed != proposed, unsafe, source))

    def on_step(self, env_steps: int) -> None:
        self._env_steps = env_steps
        if not self.human_active or self.overseer is None:
            return
        if self.blocker.update(self.overseer.log) and self.blocker.accurate():
            self.handover()
        elif self.overseer.labels_left <= 0:
            self.handover(forced=True)

    def deploy(self) -> None:
        self.human_active = False

    def stats(self) -> dict[str, Any]:
        m = self.blocker.metrics
        return {**super().stats(), "handover_step": self.handover_step,
                "forced_handover": self.forced_handover, "blocker_val_accuracy": m.accuracy,
                "blocker_val_recall": m.recall, "blocker_positives": m.positives_seen}


class MBHIShield(HIRLShield):
    """HIRL + model-based look-ahead with an MPC fallback."""

    def __init__(self, env: SafetyEnv, n_actions: int | ActionSet, overseer: SimulatedOverseer | None,
                 blocker: BlockerEnsemble, model: DynamicsEnsemble | ModelLike, policy: Policy | None,
                 lookahead: LookaheadConfig | None = None, mpc: MPCConfig | None = None,
                 seed: int = 0) -> None:
        super().__init__(env, n_actions, overseer, blocker, seed)
        self.model = model
        self.policy = policy
        self.lookahead = lookahead or LookaheadConfig()
        mpc = mpc or MPCConfig()
        # default: the planner's reward and termination are the model's learned heads; the simulator's
        # reward_fn / success_fn only in the labelled "privileged" ablation
        privileged = mpc.reward == "privileged"
        self.imagination = Imagination(model, blocker, env.reward_fn if privileged else None,
                                       env.success_fn if privileged else None, self.actions)
        self.mpc = SafeMPC(self.imagination, self.actions, mpc, self.lookahead, seed)
        self.training = True

    @property
    def lookahead_active(self) -> bool:
        return bool(self.model.ready and self.blocker.ready)

    def imagine(self, obs: np.ndarray, proposed: int | float) -> tuple[int | float, bool, bool]:
        """Look ahead from ``obs`` with ``proposed``: ``(action to execute, flagged, proposal unsafe)``.

        Not flagged: the proposal runs. Flagged: MPC plans from ``obs``; its action runs (or the
        proposal, with ``keep_safe_proposal``, when it has a safe continuation). The proposal counts
        as unsafe (penalised) only when MPC finds no safe continuation for it.
        """
        cfg = self.lookahead
        res = self.imagination.rollout(obs, proposed, cfg.horizon, cfg.continuation, self.policy,
                                       cfg.particles, score=False)
        if not cfg.unsafe(res)[0]:
            return proposed, False, False
        plan = self.mpc.plan(obs, proposed)
        proposal_safe = plan.proposal_safe
        if cfg.keep_safe_proposal and proposal_safe:
            return proposed, True, False
        return plan.action, True, not proposal_safe

    def decide(self, obs: np.ndarray, proposed: int | float) -> ShieldDecision:
        candidate, flagged, unsafe, source = proposed, False, False, "none"
        if self.lookahead_active:
            candidate, flagged, unsafe = self.imagine(obs, proposed)
            source = "lookahead" if candidate != proposed else "none"
        if self.human_active:
            out = self.human_review(obs, candidate)
            if out is not None:
                if out[1]:
                    source = "human"
                    unsafe = unsafe or candidate == proposed
                candidate = out[0]
        if not self.human_active and not self.lookahead_active:
            candidate, unsafe = self.blocker_review(obs, proposed)
            source = "blocker" if unsafe else source
        blocked = candidate != proposed
        return self._count(ShieldDecision(proposed, candidate, blocked, unsafe, source, flagged))

    def record(self, obs: np.ndarray, action: int | float, next_obs: np.ndarray, reward: float = 0.0,
               success: bool = False, catastrophe: bool = False) -> None:
        # the reward / termination heads never learn from a catastrophe transition (weight 0): the
        # planner knows catastrophes only through the blocker
        if self.training and isinstance(self.model, DynamicsEnsemble):
            self.model.add(obs, action, next_obs, reward, success, 0.0 if catastrophe else 1.0)

    def on_step(self, env_steps: int) -> None:
        super().on_step(env_steps)
        if self.training and isinstance(self.model, DynamicsEnsemble):
            self.model.maybe_train(env_steps)

    def deploy(self) -> None:
        super().deploy()
        self.training = False

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "mpc_calls": self.mpc.calls}


class SelfLabelShield(MBHIShield):
    """MBHI without the human: the blocker learns from the agent's own transitions.

    Every real step is a label ``(state, executed action, catastrophe happened)``; no human labels are
    used. The blocker, look-ahead and MPC are MBHI's, so the difference to MBHI measures what the human's
    blocking labels contribute (a crash must happen before it can be predicted).
    """

    def __init__(self, env: SafetyEnv, n_actions: int | ActionSet, blocker: BlockerEnsemble,
                 model: DynamicsEnsemble | ModelLike, policy: Policy | None,
                 lookahead: LookaheadConfig | None = None, mpc: MPCConfig | None = None,
                 seed: int = 0) -> None:
        super().__init__(env, n_actions, None, blocker, model, policy, lookahead, mpc, seed)
        self.self_labels = LabelLog()

    def record(self, obs: np.ndarray, action: int | float, next_obs: np.ndarray, reward: float = 0.0,
               success: bool = False, catastrophe: bool = False) -> None:
        super().record(obs, action, next_obs, reward, success, catastrophe)
        if self.training:
            self.self_labels.add(obs, action, catastrophe)

    def on_step(self, env_steps: int) -> None:
        super().on_step(env_steps)
        if self.training and len(self.self_labels):
            self.blocker.update(self.self_labels)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "self_labels": len(self.self_labels)}


def agent_transitions(obs: np.ndarray, proposed: int | float, reward: float, next_obs: np.ndarray,
                      terminated: bool, info: dict[str, Any]) -> list[Transition]:
    """What the agent learns from one wrapped step.

    The real transition carries the executed action. A proposal that was judged unsafe and replaced
    adds a virtual terminal transition ``(obs, proposed, -penalty)``: the catastrophe it would have
    caused, as a penalty. (A safe proposal that MPC merely overrode adds nothing.)
    """
    sh = info.get("shield")
    executed = sh["executed"] if sh else proposed
    out = [Transition(obs, executed, float(reward), next_obs, bool(terminated))]
    if sh and sh["blocked"] and sh["unsafe"]:
        out.append(Transition(obs, proposed, -float(sh["penalty"]), obs, True, virtual=True))
    return out


class ShieldWrapper(gym.Wrapper):
    """Execute the shield's choice instead of the proposed action; shape the reward.

    ``catastrophe_penalty`` is subtracted from the reward of a catastrophic step; ``block_penalty``
    is reported in ``info["shield"]["penalty"]`` for proposals replaced as unsafe (see
    :func:`agent_transitions`).
    ``info["task_reward"]`` keeps the unshaped reward.
    """

    def __init__(self, env: gym.Env, shield: Shield, catastrophe_penalty: float = 0.0,
                 block_penalty: float = 0.0) -> None:
        super().__init__(env)
        self.shield = shield
        self.actions = ActionSet.from_space(env.action_space)
        self.catastrophe_penalty = catastrophe_penalty
        self.block_penalty = block_penalty
        self._obs: np.ndarray | None = None

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        d = self.shield.decide(self._obs, self.actions.scalar(action))
        obs, reward, terminated, truncated, info = self.env.step(self.actions.to_env(d.executed))
        catastrophe = bool(info.get("catastrophe", False))
        info["task_reward"] = float(reward)
        penalised = d.blocked and d.unsafe
        info["shield"] = {"proposed": d.proposed, "executed": d.executed, "blocked": d.blocked,
                          "unsafe": d.unsafe, "source": d.source, "flagged": d.flagged,
                          "penalty": self.block_penalty if penalised else 0.0}
        self.shield.record(self._obs, d.executed, obs, float(reward), bool(info.get("success", False)),
                           catastrophe)
        self._obs = obs
        return obs, float(reward) - self.catastrophe_penalty * catastrophe, terminated, truncated, info
