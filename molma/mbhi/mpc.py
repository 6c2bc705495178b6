"""Cross-entropy-method optimisers and the safe MPC planner used when MBHI blocks an action.

- :func:`categorical_cem`: CEM over sequences of discrete actions. Each step of the sequence has its
  own categorical distribution; elites' action frequencies, smoothed with the old distribution, become
  the next one. ``first_actions`` runs one CEM per fixed first action in the same batch
  ("stratified"), so the planner knows the best continuation of *every* first action, in particular of
  the one the agent proposed.
- :func:`gaussian_cem`: the classic continuous CEM (diagonal Gaussian), for continuous-action tasks.
- :class:`SafeMPC`: scores action sequences in the learned model (see :mod:`molma.mbhi.lookahead`) by
  discounted task reward weighted by the probability of no catastrophe so far, minus a catastrophe
  penalty times the blocker's trajectory risk; returns the best first action and which first actions
  have a safe continuation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from molma.config import check_range
from molma.mbhi.lookahead import Imagination, ImaginationResult, LookaheadConfig


@dataclass
class CEMResult:
    """Best sequence overall and per stratum (fixed first action), with optional safety flags."""

    best: np.ndarray  # [H]
    best_score: float
    stratum_best: np.ndarray  # [S, H]
    stratum_score: np.ndarray  # [S]
    stratum_safe: np.ndarray  # [S] bool (all True when the score function gives no safety)
    probs: np.ndarray  # final distributions [S, H, A]


ScoreFn = Callable[[np.ndarray], "np.ndarray | tuple[np.ndarray, np.ndarray]"]


def _split_score(out: np.ndarray | tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(out, tuple):
        scores, safe = out
    else:
        scores, safe = out, np.ones(len(out), dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise FloatingPointError("CEM: score function returned non-finite values")
    return scores, np.asarray(safe, dtype=bool)


def sample_categorical(probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws per leading index from ``probs[..., A]`` -> integers ``[*lead[:-1], n, lead[-1]]``.

    For ``probs[S, H, A]`` the result is ``[S, n, H]``.
    """
    cdf = np.cumsum(probs, axis=-1)  # [S, H, A]
    u = rng.random((probs.shape[0], n, probs.shape[1], 1))
    return np.minimum((u > cdf[:, None]).sum(-1), probs.shape[-1] - 1)


def categorical_cem(score_fn: ScoreFn, horizon: int, n_actions: int, population: int = 64,
                    elites: int = 8, iterations: int = 4, rng: np.random.Generator | None = None,
                    alpha: float = 0.1, first_actions: Sequence[int] | None = None,
                    init_probs: np.ndarray | None = None) -> CEMResult:
    """Maximise ``score_fn(seqs[N, H]) -> scores[N]`` (or ``(scores, safe)``) over action sequences."""
    rng = rng or np.random.default_rng()
    firsts = list(first_actions) if first_actions is not None else [None]
    S = len(firsts)
    probs = np.full((S, horizon, n_actions), 1.0 / n_actions)
    if init_probs is not None:
        probs[:] = init_probs
    for s, a in enumerate(firsts):
        if a is not None:
            probs[s, 0] = np.eye(n_actions)[a]
    best_seq = np.zeros((S, horizon), dtype=np.int64)
    best_score = np.full(S, -np.inf)
    best_safe = np.zeros(S, dtype=bool)
    k = max(1, min(elites, population))
    for _ in range(iterations):
        seqs = sample_categorical(probs, population, rng)  # [S, P, H]
        scores, safe = _split_score(score_fn(seqs.reshape(S * population, horizon)))
        scores, safe = scores.reshape(S, population), safe.reshape(S, population)
        order = np.argsort(-scores, axis=1)[:, :k]  # [S, k]
        top = order[:, 0]
        improved = scores[np.arange(S), top] > best_score
        best_seq[improved] = seqs[np.arange(S), top][improved]
        best_score[improved] = scores[np.arange(S), top][improved]
        best_safe[improved] = safe[np.arange(S), top][improved]
        elite = np.take_along_axis(seqs, order[..., None], axis=1)  # [S, k, H]
        freq = np.eye(n_actions)[elite].mean(1)  # [S, H, A]
        probs = alpha * probs + (1.0 - alpha) * freq
    i = int(np.argmax(best_score))
    return CEMResult(best_seq[i], float(best_score[i]), best_seq, best_score, best_safe, probs)


def gaussian_cem(score_fn: Callable[[np.ndarray], np.ndarray], mean: np.ndarray, std: np.ndarray,
                 population: int = 64, elites: int = 8, iterations: int = 10,
                 rng: np.random.Generator | None = None, alpha: float = 0.1,
                 low: float | np.ndarray | None = None, high: float | np.ndarray | None = None,
                 ) -> tuple[np.ndarray, float]:
    """Maximise ``score_fn(x[N, D]) -> [N]`` with a diagonal-Gaussian CEM; returns ``(best x, score)``."""
    rng = rng or np.random.default_rng()
    mean, std = np.array(mean, dtype=np.float64), np.array(std, dtype=np.float64)
    best_x, best = mean.copy(), -np.inf
    k = max(1, min(elites, population))
    for _ in range(iterations):
        x = mean + std * rng.standard_normal((population, mean.size))
        if low is not None or high is not None:
            x = np.clip(x, low, high)
        scores, _ = _split_score(score_fn(x))
        elite = x[np.argsort(-scores)[:k]]
        if scores.max() > best:
            best, best_x = float(scores.max()), x[int(np.argmax(scores))].copy()
        mean = alpha * mean + (1 - alpha) * elite.mean(0)
        std = alpha * std + (1 - alpha) * elite.std(0)
    return best_x, best


@dataclass
class MPCConfig:
    """Categorical-CEM MPC used as the safe fallback policy."""

    horizon: int = 10
    population: int = 16  # sequences per first action per iteration
    elites: int = 4
    iterations: int = 3
    alpha: float = 0.1  # weight of the old distribution in the CEM update
    gamma: float = 0.97
    catastrophe_penalty: float = 20.0  # score penalty times the blocker's trajectory risk

    def __post_init__(self) -> None:
        for name in ("horizon", "population", "elites", "iterations"):
            check_range(name, getattr(self, name), 1)
        check_range("alpha", self.alpha, 0.0, 1.0, high_open=True)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("catastrophe_penalty", self.catastrophe_penalty, 0.0)


@dataclass
class MPCDecision:
    """Planner output: action to execute, per-first-action best score and safety."""

    action: int
    scores: np.ndarray  # [A]
    safe: np.ndarray  # [A] a safe continuation was found
    plan: np.ndarray  # [H] best sequence


class SafeMPC:
    """Stratified categorical CEM over action sequences in an :class:`Imagination`."""

    def __init__(self, imagination: Imagination, n_actions: int, config: MPCConfig | None = None,
                 safety: LookaheadConfig | None = None, seed: int = 0) -> None:
        self.imagination = imagination
        self.n_actions = n_actions
        self.config = config or MPCConfig()
        self.safety = safety or LookaheadConfig()  # its quorum / max_risk decide what a safe plan is
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def _score(self, obs: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        cfg = self.config

        def score(seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            res: ImaginationResult = self.imagination.evaluate_plans(obs, seqs, cfg.gamma,
                                                                     cfg.catastrophe_penalty)
            return res.score, ~self.safety.unsafe(res)

        return score

    def plan(self, obs: np.ndarray) -> MPCDecision:
        """Best first action (safe continuations preferred through the penalty) from ``obs``."""
        cfg = self.config
        self.calls += 1
        res = categorical_cem(self._score(np.asarray(obs, np.float32)), cfg.horizon, self.n_actions,
                              cfg.population, cfg.elites, cfg.iterations, self.rng, cfg.alpha,
                              first_actions=range(self.n_actions))
        scores = res.stratum_score
        # prefer first actions with a safe continuation; among them the best score
        ranked = np.where(res.stratum_safe, scores, scores - 1e9)
        action = int(np.argmax(ranked))
        return MPCDecision(action, scores, res.stratum_safe, res.stratum_best[action])
