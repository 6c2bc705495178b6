"""Cross-entropy-method optimisers and the safe MPC planner used when MBHI blocks an action.

- :func:`categorical_cem`: CEM over sequences of discrete actions. Each step of the sequence has its
  own categorical distribution; elites' action frequencies, smoothed with the old distribution, become
  the next one. ``first_actions`` runs one CEM per fixed first action in the same batch
  ("stratified"), so the planner knows the best continuation of *every* first action, in particular of
  the one the agent proposed.
- :func:`gaussian_cem`: the classic continuous CEM (diagonal Gaussian).
- :func:`stratified_gaussian_cem`: Gaussian CEM over sequences of 1-D continuous actions, one CEM per
  stratum in one batch; a stratum may fix its first action (the agent's proposal), so the planner
  knows whether *that* proposal has a safe continuation. The continuous-action task uses it.
- :class:`SafeMPC`: scores action sequences in the model (see :mod:`molma.mbhi.lookahead`) by the
  discounted (learned, by default) reward weighted by the probability of no catastrophe so far, minus
  a catastrophe penalty times the blocker's trajectory risk; returns the best first action and which
  first actions have a safe continuation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from molma.config import COUNT, FRACTION, NON_NEGATIVE, UNIT, Range, check_ranges
from molma.mbhi.actions import ActionSet, as_action_set
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


def stratified_gaussian_cem(score_fn: ScoreFn, horizon: int, low: float, high: float,
                            first_actions: Sequence[float | None] = (None,), population: int = 32,
                            elites: int = 4, iterations: int = 4, rng: np.random.Generator | None = None,
                            alpha: float = 0.1, init_std: float | None = None) -> CEMResult:
    """Maximise ``score_fn(seqs[N, H]) -> scores`` (or ``(scores, safe)``) over sequences of 1-D actions
    in ``[low, high]``; one diagonal-Gaussian CEM per stratum, a stratum's first action fixed when given.
    """
    rng = rng or np.random.default_rng()
    S = len(first_actions)
    mean = np.full((S, horizon), (low + high) / 2)
    std = np.full((S, horizon), init_std if init_std is not None else (high - low) / 2)
    fixed = np.array([a is not None for a in first_actions])
    fixed_val = np.array([0.0 if a is None else float(a) for a in first_actions])
    best_seq = np.zeros((S, horizon))
    best_score = np.full(S, -np.inf)
    best_safe = np.zeros(S, dtype=bool)
    k = max(1, min(elites, population))
    for _ in range(iterations):
        seqs = np.clip(mean[:, None] + std[:, None] * rng.standard_normal((S, population, horizon)), low, high)
        seqs[fixed, :, 0] = fixed_val[fixed, None]
        seqs[:, 0] = mean  # the current mean is always a candidate
        seqs[fixed, 0, 0] = fixed_val[fixed]
        scores, safe = _split_score(score_fn(seqs.reshape(S * population, horizon)))
        scores, safe = scores.reshape(S, population), safe.reshape(S, population)
        order = np.argsort(-scores, axis=1)[:, :k]
        top = order[:, 0]
        rows = np.arange(S)
        improved = scores[rows, top] > best_score
        best_seq[improved] = seqs[rows, top][improved]
        best_score[improved] = scores[rows, top][improved]
        best_safe[improved] = safe[rows, top][improved]
        elite = np.take_along_axis(seqs, order[..., None], axis=1)  # [S, k, H]
        mean = alpha * mean + (1 - alpha) * elite.mean(1)
        std = alpha * std + (1 - alpha) * elite.std(1)
    i = int(np.argmax(best_score))
    return CEMResult(best_seq[i], float(best_score[i]), best_seq, best_score, best_safe, np.stack([mean, std], -1))


@dataclass
class MPCConfig:
    """CEM MPC used as the safe fallback policy (and as the PETS baseline's policy)."""

    horizon: int = 10
    population: int = 16  # sequences per first action (continuous: per stratum) per iteration
    elites: int = 4
    iterations: int = 3
    alpha: float = 0.1  # weight of the old distribution in the CEM update
    gamma: float = 0.97
    catastrophe_penalty: float = 20.0  # score penalty times the blocker's trajectory risk
    # where the planner's reward and termination come from: the dynamics ensemble's learned heads
    # ("learned", default), or the simulator's reward_fn / success_fn ("privileged": an ablation)
    reward: Literal["learned", "privileged"] = "learned"

    # the valid range of every numeric field (each element of a tuple); NaN and inf never
    RANGES: ClassVar[dict[str, Range]] = {
        "horizon": COUNT, "population": COUNT, "elites": COUNT, "iterations": COUNT, "alpha": FRACTION,
        "gamma": UNIT, "catastrophe_penalty": NON_NEGATIVE,
    }

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class MPCDecision:
    """Planner output: action to execute, per-first-action best score and safety."""

    action: int
    scores: np.ndarray  # [A]
    safe: np.ndarray  # [A] a safe continuation was found (continuous: per stratum)
    plan: np.ndarray  # [H] best sequence
    proposal_safe: bool = True  # the proposal passed to plan() has a safe continuation


class SafeMPC:
    """Stratified CEM over action sequences in an :class:`Imagination`: categorical for discrete
    actions (one stratum per first action), Gaussian for a continuous action (a free stratum and,
    when a proposal is given, one whose first action is the proposal)."""

    def __init__(self, imagination: Imagination, n_actions: int | ActionSet, config: MPCConfig | None = None,
                 safety: LookaheadConfig | None = None, seed: int = 0) -> None:
        self.imagination = imagination
        self.actions = as_action_set(n_actions)
        self.n_actions = self.actions.n
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

    def plan(self, obs: np.ndarray, proposed: int | float | None = None) -> MPCDecision:
        """Best first action from ``obs`` (first actions with a safe continuation preferred, then the
        best score); ``proposal_safe`` tells whether ``proposed`` has a safe continuation."""
        cfg = self.config
        self.calls += 1
        if not self.actions.discrete:
            firsts: list[float | None] = [None] if proposed is None else [None, float(proposed)]
            # the same number of sequences per iteration as the discrete planner with a grid of actions
            pop = max(cfg.elites, cfg.population * self.actions.n // len(firsts))
            res_c = stratified_gaussian_cem(
                self._score(np.asarray(obs, np.float32)), cfg.horizon, self.actions.low, self.actions.high,
                firsts, pop, cfg.elites, cfg.iterations, self.rng, cfg.alpha)
            ranked = np.where(res_c.stratum_safe, res_c.stratum_score, res_c.stratum_score - 1e9)
            s = int(np.argmax(ranked))
            plan = res_c.stratum_best[s]
            return MPCDecision(float(plan[0]), res_c.stratum_score, res_c.stratum_safe, plan,
                               bool(res_c.stratum_safe[-1]) if proposed is not None else True)
        res = categorical_cem(self._score(np.asarray(obs, np.float32)), cfg.horizon, self.n_actions,
                              cfg.population, cfg.elites, cfg.iterations, self.rng, cfg.alpha,
                              first_actions=range(self.n_actions))
        scores = res.stratum_score
        # prefer first actions with a safe continuation; among them the best score
        ranked = np.where(res.stratum_safe, scores, scores - 1e9)
        action = int(np.argmax(ranked))
        ok = bool(res.stratum_safe[int(proposed)]) if proposed is not None else True
        return MPCDecision(action, scores, res.stratum_safe, res.stratum_best[action], ok)
