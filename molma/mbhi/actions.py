"""Action sets: what the blocker, the dynamics model, the overseer and the planners need to know
about a task's actions, for discrete and 1-D continuous action spaces alike.

Inside ``molma.mbhi`` an action is a scalar: an integer for ``Discrete(n)``, a float for a
``Box(low, high, shape=(1,))`` (the environment receives ``[a]``). Batches of actions are arrays with the
same leading shape as the states they go with. An :class:`ActionSet` gives

- ``encode(a[...]) -> [..., dim]``: the network input (one-hot, or the action scaled to [-1, 1]);
- ``candidates``: the actions a human (or the HIRL blocker) considers as replacements: every discrete
  action, or a grid of ``grid`` evenly spaced values for a continuous action;
- ``to_env`` / ``from_env``: conversion to and from what the gymnasium environment takes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces


class ActionSet:
    """Discrete (``n`` actions) or 1-D continuous (``[low, high]``, replacement grid of ``grid``)."""

    def __init__(self, n: int | None = None, low: float | None = None, high: float | None = None,
                 grid: int = 5) -> None:
        if (n is None) == (low is None or high is None):
            raise ValueError("give either n (discrete) or low and high (continuous)")
        self.discrete = n is not None
        if self.discrete:
            assert n is not None
            if n < 1:
                raise ValueError("n must be >= 1")
            self.n = int(n)
            self.dim = self.n
            self.low, self.high = 0.0, float(n - 1)
            self.candidates = np.arange(self.n, dtype=np.int64)
            self.dtype: Any = np.int64
            self._eye = np.eye(self.n, dtype=np.float32)
        else:
            assert low is not None and high is not None
            if not high > low or grid < 2:
                raise ValueError("need high > low and grid >= 2")
            self.low, self.high = float(low), float(high)
            self.dim = 1
            self.candidates = np.linspace(self.low, self.high, int(grid))
            self.n = len(self.candidates)
            self.dtype = np.float64

    @classmethod
    def from_space(cls, space: spaces.Space, grid: int = 5) -> ActionSet:
        if isinstance(space, spaces.Discrete):
            return cls(n=int(space.n))
        if isinstance(space, spaces.Box) and int(np.prod(space.shape)) == 1:
            return cls(low=float(np.ravel(space.low)[0]), high=float(np.ravel(space.high)[0]), grid=grid)
        raise TypeError(f"unsupported action space {space} (Discrete or a 1-D Box)")

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Network input ``[..., dim]`` (float32) for actions ``[...]``."""
        if self.discrete:
            return self._eye[np.asarray(actions, np.int64)]
        a = np.asarray(actions, np.float32)
        mid, half = (self.high + self.low) / 2, (self.high - self.low) / 2
        return ((np.clip(a, self.low, self.high) - mid) / half)[..., None].astype(np.float32)

    def array(self, actions: Any) -> np.ndarray:
        """Actions as an array of this set's dtype (continuous ones clipped to the bounds)."""
        a = np.asarray(actions, dtype=self.dtype)
        return a if self.discrete else np.clip(a, self.low, self.high)

    def scalar(self, action: Any) -> int | float:
        """One action as a Python scalar (accepts an environment's ``[a]``)."""
        a = np.ravel(np.asarray(action))
        if a.size != 1:
            raise ValueError(f"expected one action, got {action!r}")
        return int(a[0]) if self.discrete else float(np.clip(a[0], self.low, self.high))

    def to_env(self, action: Any) -> Any:
        """What ``env.step`` takes: an int, or a float32 array of shape (1,)."""
        a = self.scalar(action)
        return a if self.discrete else np.array([a], dtype=np.float32)

    def nearest(self, actions: Any) -> np.ndarray:
        """Index of the nearest candidate for each action (discrete: the action itself)."""
        a = np.asarray(actions)
        if self.discrete:
            return a.astype(np.int64)
        return np.abs(a.astype(np.float64)[..., None] - self.candidates).argmin(-1)


def as_action_set(actions: ActionSet | int) -> ActionSet:
    """An :class:`ActionSet`; an int ``n`` means ``Discrete(n)``."""
    return actions if isinstance(actions, ActionSet) else ActionSet(n=int(actions))
