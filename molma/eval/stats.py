"""Statistics of the model-based evaluation: win rates with Wilson intervals (paper Figure 2a), paired
tests of one model against another (sign test on the non-tied prompts, paired bootstrap of the mean
reward difference), Holm's correction when many comparisons are read together, a non-negative
per-token KL estimator (k3), reward summaries (Figure 3,
mean/median table), Pareto dominance and hypervolume (preference sweeps).

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


def win_rates(scores_a: ArrayLike, scores_b: ArrayLike, tol: float = 0.0, z: float = 1.96,
              n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Share of prompts where model A's response scores higher than model B's (paper Figure 2a), and
    whether the difference is real.

    ``scores_a[i]`` and ``scores_b[i]`` are the two models' scores for the same prompt *i* under one
    objective. A prompt is a tie when ``|a - b| <= tol``, a win when ``a - b > tol``, otherwise a loss.
    Returns shares ``win``, ``tie``, ``loss`` (summing to 1), counts ``n_win``, ``n_tie``, ``n_loss``,
    ``n``, and the Wilson interval ``ci_low``/``ci_high`` of the win share (see :func:`wilson_interval`);
    then ``n_decisive`` (non-tied prompts), ``win_excl_ties`` (wins / non-tied; ``None`` when every
    prompt is a tie) with its Wilson interval ``excl_ci_low``/``excl_ci_high``, ``sign_p`` (exact
    two-sided sign test on the non-tied prompts, :func:`sign_test`), and ``mean_diff`` (mean of
    ``a - b``) with its paired percentile bootstrap interval ``diff_ci_low``/``diff_ci_high`` at
    ``ci_level`` = ``level`` (:func:`paired_bootstrap_ci` with ``n_resamples`` and ``seed``; all
    ``None`` when there are no prompts).
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
    out = {"win": share(n_win), "tie": share(n_tie), "loss": share(n_loss), "n": n,
           "n_win": n_win, "n_tie": n_tie, "n_loss": n_loss, "ci_low": low, "ci_high": high}
    n_dec = n_win + n_loss
    low, high = wilson_interval(n_win, n_dec, z)
    out.update({"n_decisive": n_dec, "win_excl_ties": n_win / n_dec if n_dec else None,
                "excl_ci_low": low, "excl_ci_high": high, "sign_p": sign_test(n_win, n_loss)})
    mean = dlow = dhigh = None
    if n:
        mean, dlow, dhigh = paired_bootstrap_ci(a, b, n_resamples, level, seed)
    out.update({"mean_diff": mean, "diff_ci_low": dlow, "diff_ci_high": dhigh, "ci_level": level})
    return out


def sign_test(n_win: int, n_loss: int) -> float:
    """Exact two-sided binomial sign test on the non-tied pairs: the p-value of ``n_win`` wins out of
    ``n = n_win + n_loss`` under H0 "wins and losses equally likely" (p = 0.5).

    By symmetry ``p = min(1, 2 P(X <= min(n_win, n_loss)))`` with ``X ~ Binomial(n, 1/2)``, e.g. 9 wins
    and 1 loss: ``2 (1 + 10) / 2^10 = 0.021484375``. Ties carry no information about the direction
    and are left out (the caller reports them separately); ``n = 0`` gives 1.0.
    """
    if isinstance(n_win, bool) or isinstance(n_loss, bool) or int(n_win) != n_win or int(n_loss) != n_loss:
        raise ValueError(f"sign_test: counts must be integers, got {n_win!r}, {n_loss!r}")
    n_win, n_loss = int(n_win), int(n_loss)
    if n_win < 0 or n_loss < 0:
        raise ValueError(f"sign_test: counts must be >= 0, got {n_win}, {n_loss}")
    n = n_win + n_loss
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(min(1.0, binomtest(n_win, n, 0.5, alternative="two-sided").pvalue))


def holm_adjusted(pvalues: ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control over all ``m`` tests, any dependence).

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``, returned in the input
    order; a test is significant at family-wise level alpha when its adjusted p is below alpha. E.g.
    ``[0.01, 0.04, 0.03, 0.2]`` -> ``[0.04, 0.09, 0.09, 0.2]``. Written here because scipy offers only the
    false-discovery-rate procedures (``scipy.stats.false_discovery_control``), and statsmodels is not a
    dependency.
    """
    p = _finite_vector(pvalues, "holm_adjusted")
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"holm_adjusted: p-values must be in [0, 1], got {p[(p < 0) | (p > 1)][:3].tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(stepped) if m else stepped
    return out


def paired_bootstrap_ci(a: ArrayLike, b: ArrayLike, n_resamples: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """Mean of the paired differences ``a[i] - b[i]`` over prompts and its percentile bootstrap interval.

    Prompts (index *i*, i.e. the pairs) are resampled with replacement ``n_resamples`` times (seeded by
    ``seed``, so the same inputs always give the same interval); the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means. Returns
    ``(mean_diff, low, high)``. A constant difference gives the zero-width interval at that value.
    """
    x = _finite_vector(a, "paired_bootstrap_ci: a")
    y = _finite_vector(b, "paired_bootstrap_ci: b")
    if x.shape != y.shape:
        raise ValueError(f"paired_bootstrap_ci: {x.size} values for a but {y.size} for b (one pair per prompt)")
    if x.size == 0:
        raise ValueError("paired_bootstrap_ci: no pairs")
    if not 0 < level < 1:
        raise ValueError(f"paired_bootstrap_ci: level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"paired_bootstrap_ci: n_resamples must be >= 1, got {n_resamples}")
    d = x - y
    mean = float(d.mean())
    if np.ptp(d) == 0:  # every resample is the same: no rounding noise around the value
        return float(d[0]), float(d[0]), float(d[0])
    rng = np.random.default_rng(seed)
    n = d.size
    chunk = max(1, 2_000_000 // n)  # bounded memory for large test sets
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return mean, float(low), float(high)


def k3_kl(logp_policy_tokens: Sequence[ArrayLike], logp_ref_tokens: Sequence[ArrayLike]) -> np.ndarray:
    """Per-response KL(policy || reference) estimates that are never negative (Schulman's k3).

    ``logp_policy_tokens[j]`` and ``logp_ref_tokens[j]`` are the log-probabilities of response *j*'s
    tokens (sampled from the policy) under the policy and the reference, one value per token. With
    ``d = log ref - log pi`` per token, ``k3 = exp(d) - 1 - d >= 0``; its expectation under the policy
    equals that of ``-d`` (because ``E_pi[exp(d)] = 1`` at each position), so the per-response sum is
    an unbiased estimate of the sequence KL, like the plain log-ratio sum, but non-negative and with
    lower variance. Returns the per-response sums (length = number of responses).
    """
    if len(logp_policy_tokens) != len(logp_ref_tokens):
        raise ValueError(f"k3_kl: {len(logp_policy_tokens)} responses under the policy but "
                         f"{len(logp_ref_tokens)} under the reference")
    out = np.empty(len(logp_policy_tokens))
    for j, (lp, lr) in enumerate(zip(logp_policy_tokens, logp_ref_tokens)):
        p = _finite_vector(lp, f"k3_kl: policy log-probs of response {j}")
        r = _finite_vector(lr, f"k3_kl: reference log-probs of response {j}")
        if p.shape != r.shape:
            raise ValueError(f"k3_kl: response {j} has {p.size} tokens under the policy but {r.size} under "
                             "the reference (different tokenizers?)")
        d = r - p
        # expm1 is accurate near d = 0 (k3(0) = 0 exactly); the clip only removes rounding below zero
        out[j] = float(np.sum(np.maximum(np.expm1(d) - d, 0.0)))
    return out


def paired_comparison(scores_a: ArrayLike, scores_b: ArrayLike, tol: float = 0.0, z: float = 1.96,
                      n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                      identical: ArrayLike | None = None) -> dict:
    """Model A against model B on the same prompts under one objective: everything :func:`win_rates`
    returns (win/tie/loss, Wilson intervals, win share among non-tied prompts, sign test, mean
    difference with its paired bootstrap interval) plus ``n_identical_ties``: the ties whose two
    responses are the same text, when ``identical[i]`` (one flag per prompt) is given, else ``None``.
    Many identical-text ties mean the two models often answer alike, not that they are equally good.
    """
    out = win_rates(scores_a, scores_b, tol, z, n_resamples, level, seed)
    if identical is None:
        out["n_identical_ties"] = None
        return out
    same = np.asarray(identical, dtype=bool).reshape(-1)
    if same.size != out["n"]:
        raise ValueError(f"paired_comparison: {same.size} identical-text flags for {out['n']} prompts")
    diff = np.asarray(scores_a, dtype=float).reshape(-1) - np.asarray(scores_b, dtype=float).reshape(-1)
    out["n_identical_ties"] = int(np.count_nonzero(same & (np.abs(diff) <= tol)))
    return out


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


def hypervolume_bootstrap_ci(point_scores: Sequence[ArrayLike], reference_scores: ArrayLike,
                             n_resamples: int = 1000, level: float = 0.95,
                             seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a front's :func:`hypervolume`, resampling prompts.

    ``point_scores[i]`` is the ``[n_prompts, d]`` matrix of per-prompt rewards of the front's i-th point
    (one model), ``reference_scores`` that of the reference model on the same prompts, whose mean rewards
    are the reference point. Each resample draws prompts with replacement and recomputes every mean (the
    points' and the reference point's) on the same draw, so the interval reflects which prompts were asked,
    paired across models as in :func:`paired_bootstrap_ci`.
    """
    ref = np.asarray(reference_scores, dtype=float)
    pts = [np.asarray(s, dtype=float) for s in point_scores]
    if ref.ndim != 2 or ref.shape[0] == 0:
        raise ValueError(f"hypervolume_bootstrap_ci: reference_scores must be [n_prompts, d], got {ref.shape}")
    for i, s in enumerate(pts):
        if s.shape != ref.shape:
            raise ValueError(f"hypervolume_bootstrap_ci: point {i} has scores of shape {s.shape}, the reference "
                             f"{ref.shape} (the same prompts and objectives are needed)")
    if not all(np.isfinite(s).all() for s in [ref, *pts]):
        raise ValueError("hypervolume_bootstrap_ci: non-finite reward")
    if not 0 < level < 1:
        raise ValueError(f"hypervolume_bootstrap_ci: level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"hypervolume_bootstrap_ci: n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    n = ref.shape[0]
    volumes = np.empty(n_resamples)
    for b in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        front = np.array([s[idx].mean(axis=0) for s in pts]).reshape(-1, ref.shape[1])
        volumes[b] = hypervolume(front, ref[idx].mean(axis=0))
    alpha = (1 - level) / 2
    return float(np.quantile(volumes, alpha)), float(np.quantile(volumes, 1 - alpha))


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
