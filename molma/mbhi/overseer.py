"""Simulated human overseer: blocks proposed actions whose next state is catastrophic.

Like the scripted humans of Saunders et al. (2017), it consults the true simulator. It is *myopic*:
it judges where the proposed action lands (one step), which is how a person watching the screen
judges it. With slip noise it draws ``samples`` independent outcomes and blocks when the fraction
that are catastrophic reaches ``risk_threshold``. Every judgement is a label, counted against a
budget and logged as ``(state, action, blocked)`` for the blocker to learn from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from molma.config import COUNT, OPEN_UNIT, Range, check_ranges
from molma.mbhi.envs import SafetyEnv


@dataclass
class OverseerConfig:
    """How the simulated human judges and how many labels it may give."""

    label_budget: int = 4000  # labels before the human leaves (the blocker then takes over regardless)
    risk_threshold: float = 0.1  # block when P(next state catastrophic) >= this
    samples: int = 32  # true-simulator draws per judgement (1 suffices for deterministic tasks)

    # the valid range of every numeric field (each element of a tuple); NaN and inf never
    RANGES: ClassVar[dict[str, Range]] = {
        "label_budget": Range(0), "risk_threshold": OPEN_UNIT, "samples": COUNT,
    }

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class LabelLog:
    """Growing arrays of the overseer's labels."""

    states: list[np.ndarray] = field(default_factory=list)
    actions: list[int | float] = field(default_factory=list)
    blocked: list[bool] = field(default_factory=list)

    def add(self, state: np.ndarray, action: int | float, blocked: bool) -> None:
        self.states.append(np.asarray(state, dtype=np.float32))
        self.actions.append(action.item() if isinstance(action, np.generic) else action)
        self.blocked.append(bool(blocked))

    def __len__(self) -> int:
        return len(self.actions)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(states[N, d], actions[N], blocked[N])`` as numpy arrays."""
        if not self.actions:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
        acts = np.asarray(self.actions)
        acts = acts.astype(np.int64) if acts.dtype.kind in "iub" else acts.astype(np.float64)
        return np.stack(self.states), acts, np.asarray(self.blocked, bool)


class LabelBudgetError(RuntimeError):
    """The overseer has no labels left."""


class SimulatedOverseer:
    """A scripted human with a label budget that blocks actions leading to a catastrophe next step."""

    def __init__(self, env: SafetyEnv, config: OverseerConfig | None = None, seed: int = 0) -> None:
        self.env = env
        self.config = config or OverseerConfig()
        self.rng = np.random.default_rng(seed)
        self.log = LabelLog()

    @property
    def labels_used(self) -> int:
        return len(self.log)

    @property
    def labels_left(self) -> int:
        return max(0, self.config.label_budget - self.labels_used)

    def risk(self, state: np.ndarray, action: int | float) -> float:
        """Fraction of true-simulator outcomes of ``action`` in ``state`` that are catastrophic (no label)."""
        states = np.repeat(np.asarray(state, np.float64)[None], self.config.samples, axis=0)
        actions = np.full(self.config.samples, action)
        nxt = self.env.simulate(states, actions, self.rng)
        return float(np.mean(self.env.catastrophe_fn(nxt)))

    def judge(self, state: np.ndarray, action: int | float) -> bool:
        """Label one (state, action): True = blocked. Raises :class:`LabelBudgetError` when out of labels."""
        if self.labels_left <= 0:
            raise LabelBudgetError(f"label budget of {self.config.label_budget} used up")
        blocked = self.risk(state, action) >= self.config.risk_threshold
        self.log.add(state, action, blocked)
        return blocked

    def review(self, state: np.ndarray, action: int | float, candidates: int | np.ndarray,
               rng: np.random.Generator) -> tuple[int | float, bool]:
        """Judge ``action``; if blocked, judge the other ``candidates`` (each a label; an int ``n`` means
        the discrete actions ``0..n-1``) and pick a safe one at random.

        Returns ``(action to execute, blocked)``. When no action is safe the least risky is executed.
        With the budget spent mid-review, the least risky action judged so far is used.
        """
        if not self.judge(state, action):
            return action, False
        cands = np.arange(candidates) if isinstance(candidates, (int, np.integer)) else np.asarray(candidates)
        others = [a for a in cands[rng.permutation(len(cands))].tolist() if a != action]
        safe: list[int | float] = []
        risks: dict[int | float, float] = {}
        for a in others:
            if self.labels_left <= 0:
                break
            if self.judge(state, a):
                risks[a] = self.risk(state, a)
            else:
                safe.append(a)
        if safe:
            return safe[int(rng.integers(len(safe)))], True
        if risks:
            return min(risks, key=risks.__getitem__), True
        return action, True
