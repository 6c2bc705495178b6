"""Base agents the shield wraps, and the protocol they follow.

The shield is agent-agnostic. An agent needs:

- ``act(obs) -> int`` (exploring) and ``policy(obs[B, d]) -> actions[B]`` (greedy; the look-ahead
  imagines with it);
- ``observe(transition)`` for each :class:`Transition` that :func:`molma.mbhi.shield.agent_transitions`
  derives from a step: the real one (with the *executed* action) and, when the proposal was blocked,
  a virtual terminal one ``(obs, proposed, -block_penalty)`` that teaches it not to propose that again.

:class:`DQNAgent` is a small CleanRL-style DQN (double-Q, Huber loss, hard target updates, linear
epsilon decay). DQN because the safety tasks have a few discrete actions, so MPC can search exact
discrete sequences, one replay buffer handles both real and virtual transitions (off-policy learning
from the MPC's and the overseer's replacement actions is what the buffer is for), and a 64x64 MLP trains
at about 1 ms per update on one CPU thread.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from molma.config import COUNT, POSITIVE, UNIT, Range, check_ranges
from molma.mbhi.actions import ActionSet
from molma.mbhi.nets import check_finite


@dataclass
class Transition:
    """One experience tuple for the agent."""

    obs: np.ndarray
    action: int | float
    reward: float
    next_obs: np.ndarray
    terminated: bool
    virtual: bool = False  # True for the blocked-proposal penalty transition


class Agent(Protocol):
    """What the shield and the training loop need from an agent."""

    def act(self, obs: np.ndarray) -> int: ...

    def policy(self, obs: np.ndarray) -> np.ndarray: ...

    def observe(self, transition: Transition) -> None: ...

    def update(self) -> dict[str, float]: ...


@dataclass
class DQNConfig:
    """CleanRL-style DQN hyper-parameters."""

    hidden: tuple[int, ...] = (64, 64)
    lr: float = 1e-3
    gamma: float = 0.97
    buffer_size: int = 50_000
    batch_size: int = 64
    learning_starts: int = 500
    train_freq: int = 1  # env steps per gradient step
    target_update: int = 250  # env steps between hard target-network copies
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_steps: int = 5000
    double_q: bool = True
    max_grad_norm: float = 10.0

    # the valid range of every numeric field (each element of a tuple); NaN and inf never
    RANGES: ClassVar[dict[str, Range]] = {
        "hidden": COUNT, "lr": POSITIVE, "gamma": UNIT, "buffer_size": COUNT, "batch_size": COUNT,
        "learning_starts": Range(0), "train_freq": COUNT, "target_update": COUNT, "eps_start": UNIT,
        "eps_end": UNIT, "eps_decay_steps": COUNT, "max_grad_norm": POSITIVE,
    }

    def __post_init__(self) -> None:
        check_ranges(self)


def q_network(obs_dim: int, n_actions: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """MLP ``obs -> Q[n_actions]`` with ReLU hidden layers."""
    dims = [obs_dim, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], n_actions))
    return nn.Sequential(*layers)


class ReplayBuffer:
    """Fixed-size ring buffer of transitions (numpy)."""

    def __init__(self, capacity: int, obs_dim: int) -> None:
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.dones = np.zeros(capacity, np.float32)
        self.capacity, self.size, self.pos = capacity, 0, 0

    def add(self, t: Transition) -> None:
        i = self.pos
        self.obs[i], self.next_obs[i] = t.obs, t.next_obs
        self.actions[i], self.rewards[i], self.dones[i] = t.action, t.reward, float(t.terminated)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(0, self.size, size=n)
        return tuple(torch.as_tensor(x[idx]) for x in
                     (self.obs, self.actions, self.rewards, self.next_obs, self.dones))


class DQNAgent:
    """Epsilon-greedy double DQN over a small MLP, inputs scaled by the observation bounds."""

    def __init__(self, obs_low: np.ndarray, obs_high: np.ndarray, n_actions: int,
                 config: DQNConfig | None = None, seed: int = 0) -> None:
        self.config = cfg = config or DQNConfig()
        self.n_actions = n_actions
        low, high = np.asarray(obs_low, np.float32), np.asarray(obs_high, np.float32)
        self._np_center = (low + high) / 2
        self._np_scale = np.maximum((high - low) / 2, 1e-6)
        self.center = torch.as_tensor(self._np_center)
        self.scale = torch.as_tensor(self._np_scale)
        self._np_layers: list[tuple[np.ndarray, np.ndarray]] | None = None
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.q = q_network(len(low), n_actions, cfg.hidden)
            self.target = q_network(len(low), n_actions, cfg.hidden)
        self.target.load_state_dict(self.q.state_dict())
        self.opt = torch.optim.Adam(self.q.parameters(), lr=cfg.lr)
        self.buffer = ReplayBuffer(cfg.buffer_size, len(low))
        self.rng = np.random.default_rng(seed + 31337)
        self.steps = 0  # real env steps seen
        self.updates = 0

    @property
    def epsilon(self) -> float:
        cfg = self.config
        frac = min(1.0, self.steps / cfg.eps_decay_steps)
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    def _scaled(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.center) / self.scale

    @torch.inference_mode()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return self.q(self._scaled(torch.as_tensor(np.asarray(obs, np.float32)))).numpy()

    def policy(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions for ``obs[B, d]`` (numpy forward on views of the live weights)."""
        if self._np_layers is None:
            self._np_layers = [(m.weight.detach().numpy().T, m.bias.detach().numpy())
                               for m in self.q if isinstance(m, nn.Linear)]
        x = (np.asarray(obs, np.float32) - self._np_center) / self._np_scale
        for i, (w, b) in enumerate(self._np_layers):
            x = x @ w + b
            if i < len(self._np_layers) - 1:
                x = np.maximum(x, 0.0)
        return x.argmax(-1)

    def act(self, obs: np.ndarray, explore: bool = True) -> int:
        if explore and self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.n_actions))
        return int(self.policy(np.asarray(obs)[None])[0])

    def observe(self, transition: Transition) -> None:
        self.buffer.add(transition)
        if not transition.virtual:
            self.steps += 1

    def update(self) -> dict[str, float]:
        """One gradient step every ``train_freq`` env steps after ``learning_starts``; target sync."""
        cfg = self.config
        if self.steps < cfg.learning_starts or self.steps % cfg.train_freq:
            return {}
        obs, act, rew, nxt, done = self.buffer.sample(cfg.batch_size, self.rng)
        with torch.no_grad():
            nxt_s = self._scaled(nxt)
            q_next_target = self.target(nxt_s)
            if cfg.double_q:
                best = self.q(nxt_s).argmax(-1, keepdim=True)
                q_next = q_next_target.gather(1, best).squeeze(1)
            else:
                q_next = q_next_target.max(-1).values
            target = rew + cfg.gamma * (1.0 - done) * q_next
        q = self.q(self._scaled(obs)).gather(1, act[:, None]).squeeze(1)
        loss = nn.functional.smooth_l1_loss(q, target)
        check_finite("DQN loss", loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), cfg.max_grad_norm)
        self.opt.step()
        self.updates += 1
        if self.updates % max(1, cfg.target_update // cfg.train_freq) == 0:
            self.target.load_state_dict(self.q.state_dict())
        return {"loss": float(loss.detach()), "q": float(q.detach().mean())}


class GridAgent:
    """A :class:`DQNAgent` over a grid of continuous action values (for a 1-D continuous task).

    It proposes grid values (``actions.candidates``); an executed action off the grid (MPC's) is stored
    in the replay buffer as the nearest grid point. The shield, the blocker, the dynamics model and MPC
    still work with the continuous action itself.
    """

    def __init__(self, dqn: DQNAgent, actions: ActionSet) -> None:
        if actions.n != dqn.n_actions:
            raise ValueError("the DQN needs one output per grid value")
        self.dqn, self.actions = dqn, actions
        self.q = dqn.q

    @property
    def epsilon(self) -> float:
        return self.dqn.epsilon

    def act(self, obs: np.ndarray, explore: bool = True) -> float:
        return float(self.actions.candidates[self.dqn.act(obs, explore)])

    def policy(self, obs: np.ndarray) -> np.ndarray:
        return self.actions.candidates[self.dqn.policy(obs)]

    def observe(self, transition: Transition) -> None:
        self.dqn.observe(replace(transition, action=int(self.actions.nearest(transition.action))))

    def update(self) -> dict[str, float]:
        return self.dqn.update()
