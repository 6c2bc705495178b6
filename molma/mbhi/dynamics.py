"""Probabilistic dynamics ensemble (PETS-style) trained on real transitions.

Each of ``M`` members maps ``(standardised state, one-hot action)`` to a Gaussian over the
standardised state change, ``N(mu, exp(logvar))``, and is trained by Gaussian negative log-likelihood
on its own bootstrap resample. The log-variance is softly bounded by learned limits (as in PETS).
Aleatoric noise is each member's variance; epistemic uncertainty is the spread of the members' means.

Imagination uses the "TS-inf" scheme: member ``m`` propagates its own particles, optionally sampling
its predicted noise (``sample``), so disagreement between members turns into diverging trajectories.

:class:`SimulatorModel` exposes the true simulator through the same ``predict_members`` interface (an oracle
model for tests and ablations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from molma.config import check_range
from molma.mbhi.envs import SafetyEnv
from molma.mbhi.nets import EnsembleMLP, Standardizer, bootstrap_indices, check_finite, one_hot

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

    def __post_init__(self) -> None:
        check_range("members", self.members, 1)
        check_range("lr", self.lr, 0.0, low_open=True)
        for name in ("batch_size", "warmup", "train_every", "train_steps", "capacity"):
            check_range(name, getattr(self, name), 1)


class DynamicsEnsemble(nn.Module):
    """``M`` Gaussian MLPs predicting the state change, with a transition buffer of its own."""

    def __init__(self, obs_dim: int, n_actions: int, config: DynamicsConfig | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.config = cfg = config or DynamicsConfig()
        self.obs_dim, self.n_actions = obs_dim, n_actions
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = EnsembleMLP(cfg.members, obs_dim + n_actions, 2 * obs_dim, cfg.hidden)
        self.max_logvar = nn.Parameter(torch.full((obs_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((obs_dim,), -10.0))
        self.in_norm = Standardizer(obs_dim)
        self._eye = np.eye(n_actions, dtype=np.float32)
        self.out_norm = Standardizer(obs_dim, min_std=1e-4)
        self.opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(seed + 104729)
        self._obs = np.zeros((cfg.capacity, obs_dim), np.float32)
        self._act = np.zeros(cfg.capacity, np.int64)
        self._next = np.zeros((cfg.capacity, obs_dim), np.float32)
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
    def add(self, obs: np.ndarray, action: int, next_obs: np.ndarray) -> None:
        i = self._pos
        self._obs[i], self._act[i], self._next[i] = obs, action, next_obs
        self._pos = (i + 1) % self.config.capacity
        self.size = min(self.size + 1, self.config.capacity)

    def add_batch(self, obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray) -> None:
        for o, a, n in zip(obs, actions, next_obs):
            self.add(o, int(a), n)

    # ---------------------------------------------------------------- model
    def _gaussian(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised-delta ``(mu, logvar)`` for ``obs[M, B, d]``, ``actions[M, B]``."""
        x = torch.cat([self.in_norm(obs), one_hot(actions, self.n_actions)], dim=-1)
        out = self.net(x)
        mu, logvar = out[..., : self.obs_dim], out[..., self.obs_dim:]
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mu, logvar

    def _gaussian_np(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Numpy ``(mu, logvar)`` (standardised delta) for ``obs[M, B, d]``, ``actions[M, B]``."""
        mean, std = self.in_norm.numpy()
        x = np.concatenate([(obs - mean) / std, self._eye[actions]], -1)
        out = self.net.numpy_forward(x)
        mu, logvar = out[..., : self.obs_dim], out[..., self.obs_dim:]
        hi = self.max_logvar.detach().numpy()
        lo = self.min_logvar.detach().numpy()
        logvar = hi - np.logaddexp(0.0, hi - logvar)
        logvar = lo + np.logaddexp(0.0, logvar - lo)
        return mu, logvar

    def predict_members(self, obs: np.ndarray, actions: np.ndarray, sample: bool | None = None) -> np.ndarray:
        """Next states ``[M, B, d]`` for member-wise ``obs[M, B, d]`` and ``actions[M, B]`` (numpy)."""
        sample = self.config.sample if sample is None else sample
        obs = np.asarray(obs, np.float32)
        mu, logvar = self._gaussian_np(obs, np.asarray(actions, np.int64))
        if sample:
            mu = mu + self.rng.standard_normal(mu.shape, dtype=np.float32) * np.exp(0.5 * logvar)
        d_mean, d_std = self.out_norm.numpy()
        return obs + mu * d_std + d_mean

    def predict(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-member mean and variance of the next state: ``([M, B, d], [M, B, d])`` for ``obs[B, d]``."""
        M = self.config.members
        o = np.broadcast_to(np.asarray(obs, np.float32), (M, *np.shape(obs)))
        a = np.broadcast_to(np.asarray(actions, np.int64), (M, *np.shape(actions)))
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
        self.in_norm.fit(obs)
        self.out_norm.fit(delta)
        target = self.out_norm(delta)
        loss = torch.tensor(float("nan"))
        for _ in range(steps):
            idx = torch.as_tensor(bootstrap_indices(n, cfg.members, min(cfg.batch_size, n), self.rng,
                                                    cfg.bootstrap))
            mu, logvar = self._gaussian(obs[idx], act[idx])
            nll = ((mu - target[idx]) ** 2 * torch.exp(-logvar) + logvar).mean()
            loss = nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
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
