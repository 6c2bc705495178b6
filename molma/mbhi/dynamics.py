"""Probabilistic dynamics ensemble (PETS-style) trained on real transitions.

Each of ``M`` members maps ``(standardised state, one-hot action)`` to a Gaussian over the
standardised state change, ``N(mu, exp(logvar))``, and is trained by Gaussian negative log-likelihood
on its own bootstrap resample. The log-variance is softly bounded by learned limits (as in PETS).
Aleatoric noise is each member's variance; epistemic uncertainty is the spread of the members' means.

The same networks also learn the **reward** (one more Gaussian output, standardised) and the
**termination** (a logit; "the episode ends here", e.g. the goal is reached) from the real transitions,
so that the planner needs nothing from the simulator (:meth:`DynamicsEnsemble.predict_step`). Each
transition carries a weight for these two heads: MBHI gives catastrophe transitions weight 0, so that
the learned reward and termination carry no catastrophe signal (catastrophes are known only through the
blocker); the PETS baseline learns them (with the shaping penalty) from every transition.

Imagination uses the "TS-inf" scheme: member ``m`` propagates its own particles, optionally sampling
its predicted noise (``sample``), so disagreement between members turns into diverging trajectories.

:class:`SimulatorModel` exposes the true simulator through the same ``predict_members`` interface (an oracle
model for tests and ablations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from molma.config import COUNT, NON_NEGATIVE, POSITIVE, Range, check_ranges
from molma.mbhi.actions import ActionSet, as_action_set
from molma.mbhi.envs import SafetyEnv
from molma.mbhi.nets import EnsembleMLP, Standardizer, bootstrap_indices, check_finite

log = logging.getLogger(__name__)


@dataclass
class DynamicsConfig:
    """Dynamics ensemble size, architecture and training schedule."""

    members: int = 5
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 2e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    warmup: int = 300  # real transitions before the first training (and before look-ahead)
    train_every: int = 1000  # env steps between (warm-started) retrainings
    train_steps: int = 300  # gradient steps per retraining (doubled the first time)
    bootstrap: bool = True
    sample: bool = True  # imagine with sampled aleatoric noise (else each member's mean)
    capacity: int = 200_000

    # the valid range of every numeric field (each element of a tuple); NaN and inf never
    RANGES: ClassVar[dict[str, Range]] = {
        "members": COUNT, "hidden": COUNT, "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "batch_size": COUNT,
        "warmup": COUNT, "train_every": COUNT, "train_steps": COUNT, "capacity": COUNT,
    }

    def __post_init__(self) -> None:
        check_ranges(self)


class DynamicsEnsemble(nn.Module):
    """``M`` Gaussian MLPs predicting the state change, with a transition buffer of its own."""

    def __init__(self, obs_dim: int, actions: ActionSet | int, config: DynamicsConfig | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.config = cfg = config or DynamicsConfig()
        self.actions = as_action_set(actions)
        self.obs_dim, self.n_actions = obs_dim, self.actions.n
        a_dim = self.actions.dim
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            # outputs: delta mean (d), delta log-variance (d), standardised reward (1), termination logit (1)
            self.net = EnsembleMLP(cfg.members, obs_dim + a_dim, 2 * obs_dim + 2, cfg.hidden)
        self.max_logvar = nn.Parameter(torch.full((obs_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((obs_dim,), -10.0))
        self.in_norm = Standardizer(obs_dim)
        self.out_norm = Standardizer(obs_dim, min_std=1e-4)
        self.rew_norm = Standardizer(1, min_std=1e-3)
        self.opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(seed + 104729)
        self._obs = np.zeros((cfg.capacity, obs_dim), np.float32)
        self._act = np.zeros((cfg.capacity, a_dim), np.float32)
        self._next = np.zeros((cfg.capacity, obs_dim), np.float32)
        self._rew = np.zeros(cfg.capacity, np.float32)
        self._done = np.zeros(cfg.capacity, np.float32)
        self._weight = np.zeros(cfg.capacity, np.float32)
        self.size = 0
        self._pos = 0
        self._last_step = 0
        self.trainings = 0

    @property
    def ready(self) -> bool:
        return self.trainings > 0

    @property
    def members(self) -> int:
        return self.config.members

    # ---------------------------------------------------------------- data
    def add(self, obs: np.ndarray, action: int | float, next_obs: np.ndarray, reward: float = 0.0,
            done: bool = False, weight: float = 1.0) -> None:
        """One real transition; ``weight`` (0 or 1) says whether the reward/termination heads learn from it."""
        i = self._pos
        self._obs[i], self._act[i], self._next[i] = obs, self.actions.encode(action), next_obs
        self._rew[i], self._done[i], self._weight[i] = reward, float(done), weight
        self._pos = (i + 1) % self.config.capacity
        self.size = min(self.size + 1, self.config.capacity)

    def add_batch(self, obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray,
                  rewards: np.ndarray | None = None, dones: np.ndarray | None = None) -> None:
        n = len(actions)
        rewards = np.zeros(n) if rewards is None else rewards
        dones = np.zeros(n, bool) if dones is None else dones
        for o, a, nx, r, d in zip(obs, actions, next_obs, rewards, dones):
            self.add(o, a, nx, float(r), bool(d), 1.0 if rewards is not None else 0.0)

    # ---------------------------------------------------------------- model
    def _gaussian(self, obs: torch.Tensor, actions: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Standardised-delta ``(mu, logvar)``, standardised reward and termination logit for
        ``obs[M, B, d]`` and encoded ``actions[M, B, a]``."""
        d = self.obs_dim
        out = self.net(torch.cat([self.in_norm(obs), actions], dim=-1))
        mu, logvar = out[..., :d], out[..., d:2 * d]
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mu, logvar, out[..., 2 * d], out[..., 2 * d + 1]

    def _forward_np(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        mean, std = self.in_norm.numpy()
        x = np.concatenate([(obs - mean) / std, self.actions.encode(actions)], -1)
        return self.net.numpy_forward(x)

    def _gaussian_np(self, obs: np.ndarray, actions: np.ndarray,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Numpy ``(mu, logvar)`` (standardised delta) for ``obs[M, B, d]``, ``actions[M, B]``."""
        out = self._forward_np(obs, actions) if out is None else out
        mu, logvar = out[..., : self.obs_dim], out[..., self.obs_dim:2 * self.obs_dim]
        hi = self.max_logvar.detach().numpy()
        lo = self.min_logvar.detach().numpy()
        logvar = hi - np.logaddexp(0.0, hi - logvar)
        logvar = lo + np.logaddexp(0.0, logvar - lo)
        return mu, logvar

    def _next_np(self, obs: np.ndarray, mu: np.ndarray, logvar: np.ndarray, sample: bool) -> np.ndarray:
        if sample:
            mu = mu + self.rng.standard_normal(mu.shape, dtype=np.float32) * np.exp(0.5 * logvar)
        d_mean, d_std = self.out_norm.numpy()
        return obs + mu * d_std + d_mean

    def predict_members(self, obs: np.ndarray, actions: np.ndarray, sample: bool | None = None) -> np.ndarray:
        """Next states ``[M, B, d]`` for member-wise ``obs[M, B, d]`` and ``actions[M, B]`` (numpy)."""
        sample = self.config.sample if sample is None else sample
        obs = np.asarray(obs, np.float32)
        mu, logvar = self._gaussian_np(obs, actions)
        return self._next_np(obs, mu, logvar, sample)

    def predict_step(self, obs: np.ndarray, actions: np.ndarray, sample: bool | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Learned ``(next states [M, B, d], rewards [M, B], terminal [M, B] bool)``, member-wise."""
        sample = self.config.sample if sample is None else sample
        obs = np.asarray(obs, np.float32)
        out = self._forward_np(obs, actions)
        mu, logvar = self._gaussian_np(obs, actions, out)
        r_mean, r_std = self.rew_norm.numpy()
        reward = out[..., 2 * self.obs_dim] * r_std[0] + r_mean[0]
        return self._next_np(obs, mu, logvar, sample), reward, out[..., 2 * self.obs_dim + 1] > 0.0

    def predict(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-member mean and variance of the next state: ``([M, B, d], [M, B, d])`` for ``obs[B, d]``."""
        M = self.config.members
        o = np.broadcast_to(np.asarray(obs, np.float32), (M, *np.shape(obs)))
        a = np.broadcast_to(self.actions.array(actions), (M, *np.shape(actions)))
        mu, logvar = self._gaussian_np(o, a)
        d_mean, d_std = self.out_norm.numpy()
        return o + mu * d_std + d_mean, np.exp(logvar) * d_std**2

    def uncertainty(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(epistemic, aleatoric)`` std per sample ``[B, d]``: spread of member means, mean noise std."""
        mean, var = self.predict(obs, actions)
        return mean.std(0), np.sqrt(var.mean(0))

    # ---------------------------------------------------------------- training
    def fit(self, steps: int) -> float:
        """Warm-started NLL training on the buffer; returns the last loss."""
        cfg = self.config
        n = self.size
        obs = torch.as_tensor(self._obs[:n])
        act = torch.as_tensor(self._act[:n])
        delta = torch.as_tensor(self._next[:n]) - obs
        rew = torch.as_tensor(self._rew[:n])
        done = torch.as_tensor(self._done[:n])
        weight = torch.as_tensor(self._weight[:n])
        self.in_norm.fit(obs)
        self.out_norm.fit(delta)
        if weight.sum() > 1:
            self.rew_norm.fit(rew[weight > 0][:, None])
        target = self.out_norm(delta)
        rew_t = self.rew_norm(rew[:, None])[:, 0]
        loss = torch.tensor(float("nan"))
        for _ in range(steps):
            idx = torch.as_tensor(bootstrap_indices(n, cfg.members, min(cfg.batch_size, n), self.rng,
                                                    cfg.bootstrap))
            mu, logvar, r_hat, d_logit = self._gaussian(obs[idx], act[idx])
            nll = ((mu - target[idx]) ** 2 * torch.exp(-logvar) + logvar).mean()
            w = weight[idx]
            heads = ((r_hat - rew_t[idx]) ** 2 + nn.functional.binary_cross_entropy_with_logits(
                d_logit, done[idx], reduction="none")) * w
            loss = (nll + heads.sum() / w.sum().clamp_min(1.0)
                    + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum()))
            check_finite("dynamics loss", loss)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.trainings += 1
        return float(loss.detach())

    def maybe_train(self, env_steps: int) -> bool:
        """Train after ``warmup`` transitions, then every ``train_every`` steps; True if it trained."""
        cfg = self.config
        if self.size < cfg.warmup:
            return False
        if self.trainings == 0:
            loss = self.fit(2 * cfg.train_steps)
        elif env_steps - self._last_step >= cfg.train_every:
            loss = self.fit(cfg.train_steps)
        else:
            return False
        self._last_step = env_steps
        log.debug("dynamics: trained on %d transitions, loss %.3f", self.size, loss)
        return True


class SimulatorModel:
    """The true simulator behind the dynamics-model interface (``M`` identical "members")."""

    def predict_step(self, obs: np.ndarray, actions: np.ndarray, sample: bool | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """True next states, reward and success termination (privileged: tests and ablations only)."""
        nxt = self.predict_members(obs, actions, sample)
        s = np.asarray(obs, np.float64)
        return nxt, self.env.reward_fn(s, np.asarray(actions), nxt), self.env.success_fn(nxt)

    def __init__(self, env: SafetyEnv, members: int = 1, seed: int = 0, sample: bool = True) -> None:
        self.env, self.members, self.sample = env, members, sample
        self.rng = np.random.default_rng(seed)
        self.ready = True

    def predict_members(self, obs: np.ndarray, actions: np.ndarray, sample: bool | None = None) -> np.ndarray:
        sample = self.sample if sample is None else sample
        s = np.asarray(obs, np.float64)
        shape = s.shape[:-1] + (self.env.noise_dim,)
        noise = self.rng.standard_normal(shape) if sample else np.zeros(shape)
        return self.env.dynamics(s, np.asarray(actions), noise).astype(np.float32)
