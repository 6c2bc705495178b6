"""Imagined roll-outs in the dynamics model, checked step by step by the blocker ensemble.

A roll-out starts at the real state, runs ``H`` steps in every dynamics member (``particles`` each) and
asks the blocker about every imagined ``(state, action)``. Per member trajectory it records:

- ``flagged``: some step hit the blocker's decision rule (mean above threshold or high disagreement);
- survival ``S_H = prod_k (1 - risk_k)`` with the blocker's soft risk;
- discounted reward weighted by survival. By default the reward and the termination come from the
  learned model (``model.predict_step``), which never sees the simulator; passing the task's
  ``reward_fn`` / ``success_fn`` gives the *privileged* planner (an ablation: the tasks' true reward is
  0 on a catastrophe, so it leaks where the catastrophes are).

Aggregated over members and particles: ``unsafe_fraction`` (share of flagged trajectories; the shield
compares it with a quorum), ``risk = 1 - mean S_H`` and ``score = mean(sum_k g^k S_{k+1} r_k) - C * risk``.
Step 0 is the real state with the proposed action, so the look-ahead always includes HIRL's check.

Actions after the first come from a *continuation*: the agent's greedy policy (``"policy"``, default,
as in MBHI: imagine what the agent would do) or, per imagined state, the action the blocker finds least
risky (``"safest"``: a cheap test for "is there still a way out").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import numpy as np

from molma.config import COUNT, OPEN_UNIT, UNIT, Range, check_ranges
from molma.mbhi.actions import ActionSet, as_action_set

Policy = Callable[[np.ndarray], np.ndarray]  # obs[B, d] -> actions[B]
StateFn = Callable[[np.ndarray], np.ndarray]  # states[..., d] -> bool[...]
RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class ModelLike(Protocol):
    """What imagination needs from a dynamics model."""

    members: int
    ready: bool

    def predict_members(self, obs: np.ndarray, actions: np.ndarray,
                        sample: bool | None = None) -> np.ndarray: ...

    def predict_step(self, obs: np.ndarray, actions: np.ndarray, sample: bool | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class BlockerLike(Protocol):
    """What imagination needs from a blocker."""

    ready: bool

    def assess(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def flags(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray: ...

    def risk(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray: ...


@dataclass
class ImaginationResult:
    """Per candidate (plan or first action), aggregated over members and particles."""

    score: np.ndarray  # [N]
    unsafe_fraction: np.ndarray  # [N]
    risk: np.ndarray  # [N]
    first_flagged_step: np.ndarray  # [N] earliest flagged step over trajectories (-1: none)


@dataclass
class LookaheadConfig:
    """Imagined roll-out before each action."""

    horizon: int = 10  # imagined steps (CliffCart needs >= 9 to see a full stop from top speed)
    continuation: Literal["policy", "safest"] = "policy"
    particles: int = 1  # imagined trajectories per dynamics member
    quorum: float = 0.2  # flag when at least this share of trajectories meets a blocked step ...
    max_risk: float = 0.3  # ... or when the imagined catastrophe probability 1 - mean S_H exceeds this
    keep_safe_proposal: bool = False  # after a flag, keep the proposal if MPC finds a safe continuation

    def unsafe(self, result: ImaginationResult) -> np.ndarray:
        """Which candidates of ``result`` count as unsafe under the quorum and risk rules."""
        return (result.unsafe_fraction >= self.quorum) | (result.risk > self.max_risk)

    # the valid range of every numeric field (each element of a tuple); NaN and inf never
    RANGES: ClassVar[dict[str, Range]] = {
        "horizon": COUNT, "particles": COUNT, "quorum": OPEN_UNIT, "max_risk": UNIT,
    }

    def __post_init__(self) -> None:
        check_ranges(self)


class NullBlocker:
    """A blocker that never blocks (risk 0): the planner of the PETS baseline has no catastrophe model."""

    ready = True

    def assess(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.zeros(np.broadcast_shapes(np.shape(obs)[:-1], np.shape(actions)))
        return z, z

    def flags(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(mean), dtype=bool)

    def risk(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(mean))


class Imagination:
    """Roll candidates out in ``model`` and check them with ``blocker``.

    ``reward_fn=None`` (the default in every run): reward and termination come from the learned model's
    ``predict_step``. A ``reward_fn`` (and ``success_fn``) replaces them by the simulator's: privileged.
    """

    def __init__(self, model: ModelLike, blocker: BlockerLike, reward_fn: RewardFn | None = None,
                 success_fn: StateFn | None = None, n_actions: int | ActionSet | None = None) -> None:
        self.model, self.blocker = model, blocker
        self.reward_fn, self.success_fn = reward_fn, success_fn
        self.actions = as_action_set(n_actions) if n_actions is not None else None
        self.n_actions = self.actions.n if self.actions is not None else None
        self.dtype = self.actions.dtype if self.actions is not None else np.int64

    @property
    def privileged(self) -> bool:
        return self.reward_fn is not None

    def _run(self, obs: np.ndarray, n: int, particles: int, horizon: int,
             choose: Callable[[int, np.ndarray], np.ndarray], gamma: float, penalty: float,
             score: bool = True) -> ImaginationResult:
        M = self.model.members
        B = n * particles
        s = np.broadcast_to(np.asarray(obs, np.float32), (M, B, np.shape(obs)[-1]))
        survival = np.ones((M, B))
        alive = np.ones((M, B), dtype=bool)  # not yet at a success (terminal) state
        ret = np.zeros((M, B))
        flagged = np.zeros((M, B), dtype=bool)
        first_flag = np.full((M, B), horizon)
        for k in range(horizon):
            a = np.broadcast_to(choose(k, s), (M, B)).astype(self.dtype)
            mean, std = self.blocker.assess(s, a)
            flag = self.blocker.flags(mean, std) & alive
            risk = np.where(alive, self.blocker.risk(mean, std), 0.0)
            first_flag = np.where(flag & ~flagged, k, first_flag)
            flagged |= flag
            survival = survival * (1.0 - risk)
            if not score and k == horizon - 1:
                break  # the last next-state only matters for the reward
            if self.reward_fn is None:
                nxt, r, done = self.model.predict_step(s, a)
            else:
                nxt = self.model.predict_members(s, a)
                r = self.reward_fn(s, a, nxt) if score else 0.0
                done = self.success_fn(nxt) if self.success_fn is not None else False
            if score:
                ret += gamma**k * survival * np.where(alive, r, 0.0)
            alive &= ~np.asarray(done, dtype=bool)
            s = nxt
        score = (ret - penalty * (1.0 - survival)).reshape(M, n, particles)
        flagged_ = flagged.reshape(M, n, particles)
        first = first_flag.reshape(M, n, particles).min(axis=(0, 2))
        result = ImaginationResult(
            score=score.mean(axis=(0, 2)),
            unsafe_fraction=flagged_.mean(axis=(0, 2)),
            risk=1.0 - survival.reshape(M, n, particles).mean(axis=(0, 2)),
            first_flagged_step=np.where(first >= horizon, -1, first),
        )
        if not np.all(np.isfinite(result.score)):
            raise FloatingPointError("imagination produced non-finite scores")
        return result

    def evaluate_plans(self, obs: np.ndarray, plans: np.ndarray, gamma: float = 0.97,
                       penalty: float = 0.0) -> ImaginationResult:
        """Open-loop action sequences ``plans[N, H]`` from ``obs``."""
        plans = np.asarray(plans, dtype=self.dtype)
        return self._run(obs, len(plans), 1, plans.shape[1], lambda k, s: plans[None, :, k], gamma, penalty)

    def rollout(self, obs: np.ndarray, first_action: int | float, horizon: int, continuation: str = "policy",
                policy: Policy | None = None, particles: int = 1, gamma: float = 0.97,
                penalty: float = 0.0, score: bool = True) -> ImaginationResult:
        """Closed-loop roll-out: ``first_action``, then the continuation, for ``horizon`` steps
        (``score=False`` skips the task reward: safety only)."""
        if continuation == "policy" and policy is None:
            raise ValueError("continuation 'policy' needs a policy callable")

        def choose(k: int, s: np.ndarray) -> np.ndarray:
            if k == 0:
                return np.full(s.shape[:-1], first_action)
            if continuation == "policy":
                return np.asarray(policy(s.reshape(-1, s.shape[-1]))).reshape(s.shape[:-1])
            return self.safest_actions(s)

        return self._run(obs, 1, particles, horizon, choose, gamma, penalty, score)

    def safest_actions(self, s: np.ndarray) -> np.ndarray:
        """Per state in ``s[..., d]`` the action with the lowest blocker risk."""
        if self.actions is None:
            raise ValueError("the 'safest' continuation needs n_actions")
        cands = self.actions.candidates
        acts = cands.reshape(len(cands), *([1] * (s.ndim - 1)))
        mean, std = self.blocker.assess(s[None], acts)
        return cands[np.argmin(self.blocker.risk(mean, std), axis=0)]
