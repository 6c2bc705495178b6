"""Statistics of the model-based evaluation: win rates with Wilson intervals (paper Figure 2a), reward
summaries (Figure 3, mean/median table), Pareto dominance and hypervolume (preference sweeps).

Every function here is pure (numbers in, numbers out) and is tested against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def _finite_vector(values: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{what}: non-finite value {arr[bad[0]]} at index {int(bad[0])}")
    return arr


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` (95 % for ``z = 1.96``).

    ``centre = (p + z²/2n) / (1 + z²/n)``, ``half = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)``.
    Unlike the normal (Wald) interval it stays inside [0, 1] and is not degenerate at p = 0 or 1,
    which matters for the small test sets of the CPU demo. ``n = 0`` carries no information and
    gives ``(0.0, 1.0)``.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}")
    if z <= 0:
        raise ValueError(f"wilson_interval: z must be > 0, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rates(scores_a: ArrayLike, scores_b: ArrayLike, tol: float = 0.0, z: float = 1.96) -> dict:
    """Share of prompts where model A's response scores higher than model B's (paper Figure 2a).

    ``scores_a[i]`` and ``scores_b[i]`` are the two models' scores for the same prompt *i* under one
    objective. A prompt is a tie when ``|a - b| <= tol``, a win when ``a - b > tol``, otherwise a loss.
    Returns shares ``win``, ``tie``, ``loss`` (summing to 1), counts ``n_win``, ``n_tie``, ``n_loss``,
    ``n``, and the Wilson interval ``ci_low``/``ci_high`` of the win share (see :func:`wilson_interval`).
    """
    a = _finite_vector(scores_a, "win_rates: scores_a")
    b = _finite_vector(scores_b, "win_rates: scores_b")
    if a.shape != b.shape:
        raise ValueError(f"win_rates: {a.size} scores for A but {b.size} for B (one per prompt each)")
    if tol < 0:
        raise ValueError(f"win_rates: tol must be >= 0, got {tol}")
    diff = a - b
    n = int(diff.size)
    n_tie = int(np.count_nonzero(np.abs(diff) <= tol))
    n_win = int(np.count_nonzero(diff > tol))
    n_loss = n - n_tie - n_win
    low, high = wilson_interval(n_win, n, z)
    share = (lambda c: c / n) if n else (lambda c: 0.0)
    return {"win": share(n_win), "tie": share(n_tie), "loss": share(n_loss), "n": n,
            "n_win": n_win, "n_tie": n_tie, "n_loss": n_loss, "ci_low": low, "ci_high": high}


def reward_summary(values: ArrayLike) -> dict[str, float]:
    """Mean, median, standard deviation (ddof=0), min, max and count of one model's rewards."""
    arr = _finite_vector(values, "reward_summary")
    if arr.size == 0:
        raise ValueError("reward_summary: no values")
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "std": float(arr.std()),
            "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size)}


def bootstrap_ci(values: ArrayLike, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (optional companion to the mean rewards)."""
    arr = _finite_vector(values, "bootstrap_ci")
    if arr.size == 0:
        raise ValueError("bootstrap_ci: no values")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_resamples, arr.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summary_table(scores: Mapping[str, Mapping[str, ArrayLike]],
                  kl: Mapping[str, float] | None = None) -> list[dict]:
    """One row per model: mean and median reward per objective, and KL to the reference if known.

    ``scores[model][objective]`` are the per-prompt rewards; ``kl[model]`` an estimate of
    KL(model || reference) from wherever it was measured (generation log-probs or training metrics).
    Row keys: ``model``, ``n``, ``<objective>/mean``, ``<objective>/median``, ``<objective>/std``, ``kl``
    (``None`` when unknown).
    """
    rows = []
    for model, per_objective in scores.items():
        row: dict = {"model": model}
        n = None
        for objective, values in per_objective.items():
            s = reward_summary(values)
            n = s["n"] if n is None else n
            row[f"{objective}/mean"] = s["mean"]
            row[f"{objective}/median"] = s["median"]
            row[f"{objective}/std"] = s["std"]
        row["n"] = n or 0
        value = None if kl is None else kl.get(model)
        row["kl"] = None if value is None or not math.isfinite(value) else float(value)
        rows.append(row)
    return rows


def _as_points(points: ArrayLike | Sequence[Sequence[float]], what: str) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.ndim == 1 and arr.size == 0:
        return arr.reshape(0, 0)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected an (n_points, n_objectives) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: non-finite coordinates")
    return arr


def _signs(maximize: bool | Sequence[bool], d: int) -> np.ndarray:
    if isinstance(maximize, bool | np.bool_):
        return np.full(d, 1.0 if maximize else -1.0)
    flags = list(maximize)
    if len(flags) != d:
        raise ValueError(f"maximize has {len(flags)} flags for {d} objectives")
    return np.array([1.0 if f else -1.0 for f in flags])


def pareto_mask(points: ArrayLike | Sequence[Sequence[float]],
                maximize: bool | Sequence[bool] = True) -> np.ndarray:
    """Boolean mask of the non-dominated points (the Pareto front) of ``points[n, d]``.

    Point *a* dominates *b* when it is at least as good in every objective and strictly better in one
    (better = larger where ``maximize``, smaller otherwise; one flag for all objectives or one per
    objective). Identical points do not dominate each other, so duplicates on the front are all kept.
    """
    arr = _as_points(points, "pareto_mask")
    if arr.size == 0:
        return np.zeros(0, dtype=bool)
    x = arr * _signs(maximize, arr.shape[1])
    geq = (x[:, None, :] >= x[None, :, :]).all(axis=2)  # geq[i, j]: i at least as good as j everywhere
    gt = (x[:, None, :] > x[None, :, :]).any(axis=2)
    dominated = (geq & gt).any(axis=0)
    return ~dominated


def _hv_max(points: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume for maximisation of points that are all strictly better than ``ref``."""
    n, d = points.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(points[:, 0].max() - ref[0])
    if d == 2:
        # Sweep along x from the right: each point adds the strip between its y and the best y so far.
        order = np.lexsort((-points[:, 1], -points[:, 0]))
        area, best_y = 0.0, ref[1]
        for x, y in points[order]:
            if y > best_y:
                area += (x - ref[0]) * (y - best_y)
                best_y = y
        return float(area)
    # Slicing along the last objective: between consecutive distinct levels the covered region is
    # the (d-1)-dimensional hypervolume of the points reaching at least the upper level.
    levels = np.unique(points[:, -1])[::-1]
    volume = 0.0
    for i, top in enumerate(levels):
        bottom = levels[i + 1] if i + 1 < len(levels) else ref[-1]
        active = points[points[:, -1] >= top, :-1]
        volume += (top - bottom) * _hv_max(active, ref[:-1])
    return float(volume)


def hypervolume(points: ArrayLike | Sequence[Sequence[float]], reference: ArrayLike,
                maximize: bool | Sequence[bool] = True) -> float:
    """Exact hypervolume of the region dominated by ``points`` and bounded by ``reference``.

    For maximisation this is the measure of ``{y : reference <= y <= p for some point p}``; a point
    that is not strictly better than the reference in every objective adds nothing. 2-D uses an exact
    sweep (O(n log n)); more objectives use exact slicing along the last objective (O(n^(d-1) log n),
    fine for the small fronts of a preference sweep). Dominated points may be included: they change
    nothing.

    The reference point should be a meaningful "worst acceptable" outcome; the report uses the
    reference model's mean rewards (see docs/eval.md).
    """
    ref = _finite_vector(reference, "hypervolume: reference")
    arr = _as_points(points, "hypervolume")
    if arr.size == 0:
        return 0.0
    if arr.shape[1] != ref.size:
        raise ValueError(f"hypervolume: points have {arr.shape[1]} objectives, reference {ref.size}")
    sign = _signs(maximize, ref.size)
    x, r = arr * sign, ref * sign
    x = x[(x > r).all(axis=1)]
    x = x[pareto_mask(x)] if len(x) else x
    return _hv_max(x, r)
