"""Safe RLHF's PPO-Lagrangian (Dai et al. 2023, "Safe RLHF: Safe Reinforcement Learning from Human
Feedback", ICLR 2024, arXiv 2310.12773, section 3.3): maximise the expected reward subject to an expected
cost at most ``cost_limit``, through the Lagrangian ``min_theta max_{lambda >= 0} -J_R + lambda (J_C - d)``
with ``lambda`` updated by dual ascent between policy updates.

- :class:`LagrangeMultiplier`: lambda >= 0 and its update on (mean cost - cost_limit). ``"log"`` follows
  the paper and the PKU-Alignment/safe-rlhf PPO-Lag trainer (lambda = exp(log_lambda), a gradient step on
  ``-(mean_cost - limit) * exp(log_lambda)`` w.r.t. log_lambda, i.e. ``log_lambda += lr * lambda *
  (mean_cost - limit)``); ``"linear"`` is the projected update ``lambda = max(0, lambda + lr * (mean_cost
  - limit))`` of Lagrangian constrained RL (Ray et al. 2019 / Stooke et al. 2020).
- :func:`lagrangian_advantages`: the PPO-Lagrangian advantage ``(A_R - lambda A_C) / (1 + lambda)``
  (safe-rlhf's actor loss; the 1 + lambda keeps the advantage's scale, hence PPO's clip, as lambda grows),
  used with the ordinary clipped surrogate (:func:`molma.rl.losses.ppo_loss`).

Cost convention: higher cost = less safe. With a safety reward model instead of a cost model, use
``cost = -safety_reward`` (and ``A_C = -A_safe``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from molma.config import check_range

Parametrization = Literal["log", "linear"]

LAMBDA_CAP = 1e6
"""Upper bound on lambda when ``max_value`` is None. The log update multiplies the step by lambda, so a
cost kept above the limit makes lambda grow faster than exponentially (and overflow) without a cap."""


class LagrangeMultiplier:
    """The Lagrange multiplier lambda >= 0 of Safe RLHF, updated by dual ascent on the mean cost.

    Args:
        cost_limit: the threshold d on the expected cost (safe-rlhf's ``threshold``, default 0).
        lr: dual learning rate (safe-rlhf's ``lambda_lr``).
        init: initial lambda (safe-rlhf's ``lambda_init``, 1.0); > 0 for ``"log"``, >= 0 for ``"linear"``.
        max_value: upper bound on lambda (safe-rlhf's ``lambda_max``); None: :data:`LAMBDA_CAP`.
        parametrization: ``"log"`` (the paper's update of ln lambda) or ``"linear"`` (projected on >= 0).
        window: the update uses the mean of the last ``window`` per-response costs (safe-rlhf's
            ``episode_cost_window_size``, 128 there); None: the costs passed to this update only.
        update_delay: the first ``update_delay`` calls to :meth:`update` leave lambda unchanged
            (safe-rlhf's ``lambda_update_delay_steps``); their costs still enter the window.

    Usage per iteration: ``lam = multiplier.value`` for the advantages, then ``multiplier.update(costs)``
    with the iteration's per-response costs. ``state_dict()`` / ``load_state_dict()`` carry lambda, the
    step count and the cost window through checkpoints (plain Python numbers: ``torch.save`` /
    ``torch.load(weights_only=True)`` and JSON both take them).
    """

    def __init__(self, cost_limit: float = 0.0, lr: float = 0.1, init: float = 1.0, max_value: float | None = None,
                 parametrization: Parametrization = "log", window: int | None = None, update_delay: int = 0) -> None:
        if parametrization not in ("log", "linear"):
            raise ValueError(f"parametrization must be 'log' or 'linear', got {parametrization!r}")
        check_range("cost_limit", cost_limit)
        check_range("lr", lr, low=0.0, low_open=True)
        check_range("init", init, low=0.0, low_open=parametrization == "log")
        if max_value is not None:
            check_range("max_value", max_value, low=init)
        if window is not None:
            check_range("window", window, low=1)
        check_range("update_delay", update_delay, low=0)
        self.cost_limit = float(cost_limit)
        self.lr = float(lr)
        self.max_value = None if max_value is None else float(max_value)
        self.parametrization: Parametrization = parametrization
        self.window = None if window is None else int(window)
        self.update_delay = int(update_delay)
        self._log_lambda = math.log(init) if parametrization == "log" else None
        self._lambda = math.exp(self._log_lambda) if self._log_lambda is not None else float(init)
        self.steps = 0
        self._recent: deque[float] = deque(maxlen=self.window)

    @property
    def value(self) -> float:
        """The current lambda (>= 0)."""
        return self._lambda

    def mean_cost(self) -> float | None:
        """The mean of the costs the next update would use (None before any)."""
        return sum(self._recent) / len(self._recent) if self._recent else None

    def update(self, costs: float | Sequence[float] | Tensor) -> float:
        """One dual-ascent step on ``mean_cost - cost_limit``; returns the new lambda.

        ``costs``: this iteration's per-response costs (or their mean as one number). Cost above the
        limit raises lambda, below lowers it (never below 0). ``"log"``: lambda > 0 in exact arithmetic,
        but a long stretch below the limit can underflow it to 0.0, where the multiplicative update
        leaves it (as in safe-rlhf); ``"linear"`` recovers from 0 as soon as the cost exceeds the limit.
        """
        values = torch.as_tensor(costs, dtype=torch.float64).reshape(-1)
        if values.numel() == 0:
            raise ValueError("update() needs at least one cost")
        if not torch.isfinite(values).all():
            raise ValueError(f"costs must be finite, got {values.tolist()[:8]}")
        if self.window is None:
            self._recent.clear()
        self._recent.extend(values.tolist())
        self.steps += 1
        if self.steps <= self.update_delay:
            return self._lambda
        gap = self.mean_cost() - self.cost_limit
        if self.parametrization == "log":
            # d/d(log lam) of the dual loss -(mean_cost - limit) * exp(log lam) is -gap * lam: descend it
            log_lam = self._log_lambda + self.lr * self._lambda * gap
            cap = self.max_value if self.max_value is not None else LAMBDA_CAP
            log_lam = min(log_lam, math.log(cap))
            self._log_lambda = log_lam
            self._lambda = math.exp(log_lam)
        else:
            lam = max(0.0, self._lambda + self.lr * gap)
            self._lambda = min(lam, self.max_value if self.max_value is not None else LAMBDA_CAP)
        return self._lambda

    def state_dict(self) -> dict[str, Any]:
        """lambda (and log lambda), steps, the cost window, and the settings they were reached with."""
        return {"lambda": self._lambda, "log_lambda": self._log_lambda, "steps": self.steps,
                "recent_costs": list(self._recent), "parametrization": self.parametrization,
                "cost_limit": self.cost_limit, "lr": self.lr, "max_value": self.max_value, "window": self.window,
                "update_delay": self.update_delay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore lambda, the step count and the cost window. The settings (limit, lr, bounds, window
        length) stay those of this object, so a resumed run may change them; a different
        ``parametrization`` is refused."""
        if state.get("parametrization", self.parametrization) != self.parametrization:
            raise ValueError(f"checkpoint multiplier has parametrization {state.get('parametrization')!r}, this one "
                             f"{self.parametrization!r}")
        lam = float(state["lambda"])
        check_range("lambda", lam, low=0.0, low_open=self.parametrization == "log")
        if self.parametrization == "log":
            log_lam = state.get("log_lambda")
            self._log_lambda = float(log_lam) if log_lam is not None else math.log(lam)
            self._lambda = math.exp(self._log_lambda)
        else:
            self._lambda = lam
        self.steps = int(state.get("steps", 0))
        self._recent = deque((float(c) for c in state.get("recent_costs", [])), maxlen=self.window)

    def __repr__(self) -> str:
        return (f"LagrangeMultiplier(lambda={self._lambda:.4g}, cost_limit={self.cost_limit}, lr={self.lr}, "
                f"parametrization={self.parametrization!r}, steps={self.steps})")


def lagrangian_weights(multiplier: float) -> tuple[float, float]:
    """The weights ``(1 / (1 + lambda), -lambda / (1 + lambda))`` of (reward, cost) in the PPO-Lagrangian
    advantage: a scalarisation with these weights reproduces :func:`lagrangian_advantages`."""
    check_range("multiplier", multiplier, low=0.0)
    return 1.0 / (1.0 + multiplier), -multiplier / (1.0 + multiplier)


def lagrangian_advantages(reward_advantages: Tensor, cost_advantages: Tensor, multiplier: float) -> Tensor:
    """Safe RLHF's PPO-Lagrangian advantage ``(A_R - lambda A_C) / (1 + lambda)`` (any equal shapes;
    lambda taken as a constant: no gradient flows into the multiplier)."""
    if reward_advantages.shape != cost_advantages.shape:
        raise ValueError(f"reward and cost advantages differ in shape: {tuple(reward_advantages.shape)} vs "
                         f"{tuple(cost_advantages.shape)}")
    w_r, w_c = lagrangian_weights(float(multiplier))
    return w_r * reward_advantages + w_c * cost_advantages
