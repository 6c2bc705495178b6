"""Blocker ensemble: N small MLP classifiers imitating the overseer's (state, action) -> blocked labels.

Decision rule (conservative under uncertainty): with ``p_i`` the members' block probabilities,
block when ``mean(p) > threshold`` *or* ``std(p) > disagreement``. The soft risk handed to MPC is
``clip(mean + kappa * std, 0, 1)``. Each member trains on its own bootstrap resample of the labels
(plus its own initialisation) so that disagreement reflects how well the labels pin the boundary down.

A fixed random fraction of labels is held out. The blocker is *accurate* (ready to replace the human,
as in HIRL) when it has seen enough positives and, on the held-out labels, reaches the accuracy and
recall targets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from molma.config import COUNT, NON_NEGATIVE, POSITIVE, UNIT, Range, check_ranges
from molma.mbhi.actions import ActionSet, as_action_set
from molma.mbhi.nets import EnsembleMLP, Standardizer, bootstrap_indices, check_finite
from molma.mbhi.overseer import LabelLog

log = logging.getLogger(__name__)


@dataclass
class BlockerConfig:
    """Blocker ensemble size, training schedule, decision rule and hand-over criterion."""

    members: int = 5
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    train_every: int = 250  # new labels between (warm-started) retrainings
    train_steps: int = 200  # gradient steps per retraining
    bootstrap: bool = True
    max_pos_weight: float = 20.0  # positive-class weight = min(this, negatives / positives)
    threshold: float = 0.5  # block when the ensemble mean probability exceeds this ...
    disagreement: float = 0.25  # ... or when the std across members exceeds this
    kappa: float = 1.0  # soft risk for MPC: clip(mean + kappa * std, 0, 1)
    val_fraction: float = 0.2  # labels held out to decide the hand-over
    min_positives: int = 5  # positives needed before the blocker is consulted at all
    handover_min_labels: int = 2000
    handover_min_positives: int = 50
    handover_accuracy: float = 0.98
    handover_recall: float = 1.0

    # the valid range of every numeric field (each element of a tuple); NaN and inf never
    RANGES: ClassVar[dict[str, Range]] = {
        "members": COUNT, "hidden": COUNT, "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "batch_size": COUNT,
        "train_every": COUNT, "train_steps": COUNT, "max_pos_weight": POSITIVE, "threshold": UNIT,
        "disagreement": NON_NEGATIVE, "kappa": NON_NEGATIVE, "val_fraction": Range(0.0, 0.9),
        "min_positives": Range(0), "handover_min_labels": Range(0), "handover_min_positives": Range(0),
        "handover_accuracy": UNIT, "handover_recall": UNIT,
    }

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class BlockerMetrics:
    """Held-out performance of the blocker's decision rule."""

    labels: int = 0
    n_val: int = 0
    n_val_positive: int = 0
    accuracy: float = float("nan")
    recall: float = float("nan")
    false_positive_rate: float = float("nan")
    positives_seen: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def decision_rule(mean: np.ndarray, std: np.ndarray, cfg: BlockerConfig) -> np.ndarray:
    """Block where the mean is above the threshold or the members disagree too much."""
    return (mean > cfg.threshold) | (std > cfg.disagreement)


class BlockerEnsemble(nn.Module):
    """Ensemble of MLP classifiers on ``(standardised state, one-hot action)``."""

    def __init__(self, obs_dim: int, actions: ActionSet | int, config: BlockerConfig | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.config = config or BlockerConfig()
        self.actions = as_action_set(actions)
        self.obs_dim, self.n_actions = obs_dim, self.actions.n
        self.a_dim = self.actions.dim
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = EnsembleMLP(self.config.members, obs_dim + self.a_dim, 1, self.config.hidden)
        self.norm = Standardizer(obs_dim)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=self.config.lr,
                                     weight_decay=self.config.weight_decay)
        self.rng = np.random.default_rng(seed + 7919)
        self._val_mask = np.zeros(0, dtype=bool)
        self._trained_on = 0
        self.positives_seen = 0
        self.metrics = BlockerMetrics()

    # ---------------------------------------------------------------- inference
    @property
    def ready(self) -> bool:
        """Trained, with at least ``min_positives`` positive labels behind it."""
        return self._trained_on > 0 and self.positives_seen >= self.config.min_positives

    def probs_t(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Member probabilities ``[M, *batch]`` for ``obs[*batch, d]`` and ``actions[*batch]``."""
        batch = obs.shape[:-1]
        enc = torch.as_tensor(self.actions.encode(actions.reshape(-1).numpy()))
        x = torch.cat([self.norm(obs.reshape(-1, self.obs_dim).float()), enc], dim=-1)
        logits = self.net(x.unsqueeze(0).expand(self.config.members, -1, -1))
        return torch.sigmoid(logits.squeeze(-1)).reshape(self.config.members, *batch)

    def probs(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Member probabilities ``[M, *batch]`` in numpy (fast inference path)."""
        obs = np.asarray(obs, np.float32)
        actions = self.actions.array(actions)
        batch = np.broadcast_shapes(obs.shape[:-1], actions.shape)
        n = int(np.prod(batch))
        mean, std = self.norm.numpy()
        x = np.empty((n, self.obs_dim + self.a_dim), np.float32)
        x[:, : self.obs_dim] = ((np.broadcast_to(obs, batch + obs.shape[-1:]) - mean) / std).reshape(n, -1)
        x[:, self.obs_dim:] = self.actions.encode(np.broadcast_to(actions, batch).reshape(n))
        logits = self.net.numpy_forward(x)[..., 0]  # [M, N]
        return (0.5 * (1.0 + np.tanh(0.5 * logits))).reshape(self.config.members, *batch)

    def assess(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble ``(mean, std)`` block probability for ``obs[..., d]``, ``actions[...]``."""
        p = self.probs(obs, actions)
        mean = p.mean(0)
        return mean, np.sqrt(np.maximum((p * p).mean(0) - mean * mean, 0.0))

    def flags(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return decision_rule(mean, std, self.config)

    def risk(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return np.clip(mean + self.config.kappa * std, 0.0, 1.0)

    def blocks(self, obs: np.ndarray, action: int | float) -> bool:
        """Decision for one state and action (False until the blocker is ready)."""
        if not self.ready:
            return False
        mean, std = self.assess(np.asarray(obs)[None], np.array([action]))
        return bool(self.flags(mean, std)[0])

    # ---------------------------------------------------------------- training
    def _extend_split(self, n: int) -> None:
        new = n - len(self._val_mask)
        if new > 0:
            self._val_mask = np.concatenate([self._val_mask, self.rng.random(new) < self.config.val_fraction])

    def fit(self, states: np.ndarray, actions: np.ndarray, blocked: np.ndarray,
            steps: int | None = None) -> float:
        """Train (warm start) on the non-held-out part of the given labels; returns the last loss."""
        cfg = self.config
        self._extend_split(len(actions))
        train = ~self._val_mask[: len(actions)]
        if not train.any():
            return float("nan")
        s = torch.as_tensor(states[train], dtype=torch.float32)
        a = torch.as_tensor(self.actions.encode(actions[train]))
        y = torch.as_tensor(blocked[train], dtype=torch.float32)
        self.norm.fit(s)
        n_pos = float(y.sum())
        pos_weight = min(cfg.max_pos_weight, (len(y) - n_pos) / n_pos) if n_pos > 0 else 1.0
        x = torch.cat([self.norm(s), a], dim=-1)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
        loss = torch.tensor(float("nan"))
        for _ in range(steps or cfg.train_steps):
            idx = torch.as_tensor(bootstrap_indices(len(y), cfg.members, min(cfg.batch_size, len(y)),
                                                    self.rng, cfg.bootstrap))
            logits = self.net(x[idx]).squeeze(-1)
            loss = loss_fn(logits, y[idx])
            check_finite("blocker loss", loss)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self._trained_on = len(actions)
        self.positives_seen = int(np.sum(blocked))
        return float(loss.detach())

    def evaluate(self, states: np.ndarray, actions: np.ndarray, blocked: np.ndarray) -> BlockerMetrics:
        """Decision-rule accuracy, recall and false-positive rate on the held-out labels."""
        self._extend_split(len(actions))
        val = self._val_mask[: len(actions)]
        m = self.metrics
        m.positives_seen = int(np.sum(blocked))
        m.labels = len(actions)
        m.n_val = int(val.sum())
        m.n_val_positive = int(blocked[val].sum())
        if m.n_val == 0:
            return m
        mean, std = self.assess(states[val], actions[val])
        pred, y = self.flags(mean, std), blocked[val]
        m.accuracy = float(np.mean(pred == y))
        m.recall = float(np.mean(pred[y])) if y.any() else float("nan")
        m.false_positive_rate = float(np.mean(pred[~y])) if (~y).any() else float("nan")
        m.history.append({"labels": float(len(actions)), "accuracy": m.accuracy, "recall": m.recall,
                          "fpr": m.false_positive_rate})
        return m

    def accurate(self) -> bool:
        """HIRL hand-over criterion on the latest held-out metrics."""
        cfg, m = self.config, self.metrics
        return (m.labels >= cfg.handover_min_labels and m.positives_seen >= cfg.handover_min_positives
                and m.n_val_positive > 0
                and m.accuracy >= cfg.handover_accuracy and m.recall >= cfg.handover_recall)

    def _becomes_ready(self, labels: LabelLog) -> bool:
        if self.ready or not labels.blocked[-1:] or not labels.blocked[-1]:
            return False
        return sum(labels.blocked) >= self.config.min_positives

    def update(self, labels: LabelLog, force: bool = False) -> bool:
        """Retrain when ``train_every`` new labels arrived, when enough positives arrived to become
        ready, or on ``force``; True if it trained."""
        due = len(labels) - self._trained_on >= self.config.train_every
        if len(labels) == 0 or not (force or due or self._becomes_ready(labels)):
            return False
        states, actions, blocked = labels.arrays()
        self.fit(states, actions, blocked)
        m = self.evaluate(states, actions, blocked)
        log.debug("blocker: %d labels (%d positive), held-out acc %.3f recall %.3f", len(actions),
                  m.positives_seen, m.accuracy, m.recall)
        return True
