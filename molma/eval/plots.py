"""Figures of the evaluation section (matplotlib, no display needed: figures are drawn on an Agg canvas
without pyplot, so nothing global changes). Each ``plot_*`` writes ``<stem>.png`` and ``<stem>.svg`` and
returns both paths.

- :func:`plot_win_rates`: win / tie / loss bars and the win share among non-tied prompts with Wilson
  intervals (paper Figure 2a).
- :func:`plot_reward_distributions`: (helpfulness, safety) reward density per model (Figure 3).
- :func:`plot_weight_sweep`: SO-weighted with a range of importance weights vs MOLMA (Figure 4).
- :func:`plot_pareto`: Pareto fronts of preference sweeps, dominated points hollow, hypervolume.
- :func:`plot_training_curves`: reward per objective and KL per iteration, one line per run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SCATTER_MAX = 300  # Figure 3 draws the points themselves up to this many responses per model

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` (parents created) and return the two paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    fig.savefig(paths[0], dpi=110)
    fig.savefig(paths[1])
    return paths


def _excl_ties(r: Mapping) -> tuple[float, float, float] | None:
    """Win share among non-tied prompts and its Wilson interval, in percent (from the counts when the
    dict predates these keys); ``None`` when every prompt is a tie."""
    from molma.eval.stats import wilson_interval

    n_win, n_loss = r.get("n_win"), r.get("n_loss")
    if n_win is None or n_loss is None or n_win + n_loss == 0:
        return None
    share = r.get("win_excl_ties")
    share = n_win / (n_win + n_loss) if share is None else share
    low, high = r.get("excl_ci_low"), r.get("excl_ci_high")
    if low is None or high is None:
        low, high = wilson_interval(int(n_win), int(n_win + n_loss))
    return 100 * share, 100 * low, 100 * high


def plot_win_rates(rates: Mapping[str, Mapping[str, Mapping]], versus: str, stem: str | Path,
                   objectives: Sequence[str] | None = None) -> list[Path]:
    """Figure 2a (:func:`win_rate_figure`) written to ``stem.png`` and ``stem.svg``."""
    return save_figure(win_rate_figure(rates, versus, objectives), stem)


def win_rate_figure(rates: Mapping[str, Mapping[str, Mapping]], versus: str,
                    objectives: Sequence[str] | None = None) -> Figure:
    """Figure 2a: for each opponent, one bar per objective split into the shares of all prompts that
    ``versus`` won (solid, from the bottom), tied (hatched, in the middle) and lost (grey, from the top),
    so every bar spans 100 %. A black diamond per bar marks the win share among the non-tied prompts
    with its 95 % Wilson interval: that marker, not the top of the win segment, is what the dashed 50 %
    line (no preference) is for. Tick labels are rotated from four opponents on, so that many opponents
    (15 and more) stay readable."""
    objectives = list(objectives or dict.fromkeys(o for r in rates.values() for o in r))
    others = list(rates)
    n_obj = max(1, len(objectives))
    fig_width = min(18.0, max(6.5, 0.55 * len(others) * n_obj + 2.5))
    fig = _figure(fig_width, 4.8)
    ax = fig.add_subplot()
    width = 0.8 / n_obj
    bar = 0.92 * width  # a gap between neighbouring bars keeps their grey loss segments apart
    x = np.arange(len(others))
    handles: list = []
    marker = None
    for j, o in enumerate(objectives):
        color = COLORS[j % len(COLORS)]
        pos = x - 0.4 + width * (j + 0.5)
        per = [rates[m].get(o) for m in others]
        win = np.array([100 * r["win"] if r else 0.0 for r in per])
        tie = np.array([100 * r["tie"] if r else 0.0 for r in per])
        loss = np.array([100 * r["loss"] if r else 0.0 for r in per])
        handles.append(ax.bar(pos, win, bar, color=color, edgecolor=color, lw=0.5, label=f"{o}: win"))
        handles.append(ax.bar(pos, tie, bar, bottom=win, color="white", hatch="///", edgecolor=color, lw=0.5,
                              label=f"{o}: tie"))
        loss_bars = ax.bar(pos, loss, bar, bottom=100 - loss, color="#c8c8c8", edgecolor=color, lw=0.5,
                           label="loss")
        for px, w in zip(pos, win):
            if w >= 9:
                ax.text(px, w / 2, f"{w:.0f}", ha="center", va="center", fontsize=7, color="white")
        excl = [_excl_ties(r) if r else None for r in per]
        keep = [i for i, e in enumerate(excl) if e is not None]
        if keep:
            share = np.array([excl[i][0] for i in keep])
            low = np.array([excl[i][1] for i in keep])
            high = np.array([excl[i][2] for i in keep])
            marker = ax.errorbar(pos[keep], share, yerr=[share - low, high - share], fmt="D", color="black",
                                 markerfacecolor="yellow", markersize=5, ecolor="black", elinewidth=1.2,
                                 capsize=3, zorder=4, label="win % among non-tied prompts, 95% Wilson CI")
    if objectives:
        handles.append(loss_bars)
    if marker is not None:
        handles.append(marker)
    handles.append(ax.axhline(50, color="black", ls="--", lw=1, zorder=3, label="50 % (no preference)"))
    ax.set_xticks(x, [f"vs {m}" for m in others], rotation=35 if len(others) > 3 else 0,
                  ha="right" if len(others) > 3 else "center", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.6, len(others) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"share of prompts, {versus}'s view (%)")
    ax.set_title(f"Model-based evaluation: {versus} vs each model\nwin (bottom), tie (hatched), loss (grey, "
                 "top); diamonds: win % among non-tied prompts", fontsize=9)
    ncols = len(handles) if fig_width >= 11 else min(len(handles), 4)
    fig.legend(handles=handles, fontsize=7, ncols=ncols, loc="outside lower center")
    return fig


def _limits(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def plot_reward_distributions(scores: Mapping[str, Mapping[str, np.ndarray]], stem: str | Path,
                              objectives: Sequence[str] | None = None,
                              reference: str | None = None) -> list[Path]:
    """Figure 3: one panel per model with the density of its responses' (x, y) rewards (the points
    themselves up to ``SCATTER_MAX`` responses, hexbin counts above; KDE contours when there are enough
    distinct points), its mean (star) and, dashed, the mean of the ``reference`` model. Axes are shared
    so the panels compare directly. With one objective the panels are histograms."""
    models = list(scores)
    objectives = list(objectives or next(iter(scores.values())).keys())
    ncols = min(3, len(models))
    nrows = math.ceil(len(models) / ncols)
    fig = _figure(3.3 * ncols, 3.0 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    if len(objectives) == 1:
        o = objectives[0]
        lo, hi = _limits(np.concatenate([scores[m][o] for m in models]))
        bins = np.linspace(lo, hi, 21)
        for ax, m in zip(axes.flat, models):
            ax.hist(scores[m][o], bins=bins, color=COLORS[0], alpha=0.7)
            ax.axvline(float(np.mean(scores[m][o])), color="red", lw=1.5)
            ax.set_title(m, fontsize=9)
            ax.set_xlabel(f"{o} reward")
        fig.suptitle("Reward distribution per model")
        return save_figure(fig, stem)
    xo, yo = objectives[:2]
    xlim = _limits(np.concatenate([scores[m][xo] for m in models]))
    ylim = _limits(np.concatenate([scores[m][yo] for m in models]))
    ref_mean = None
    if reference is not None and reference in scores:
        ref_mean = (float(np.mean(scores[reference][xo])), float(np.mean(scores[reference][yo])))
    for ax, m in zip(axes.flat, models):
        x, y = np.asarray(scores[m][xo], float), np.asarray(scores[m][yo], float)
        if len(x) <= SCATTER_MAX:
            ax.scatter(x, y, s=9, color=COLORS[0], alpha=0.45, linewidths=0)
        else:
            ax.hexbin(x, y, gridsize=25, extent=(*xlim, *ylim), mincnt=1, cmap="Blues", vmin=0,
                      linewidths=0.2)
        _kde_contours(ax, x, y, xlim, ylim)
        mx, my = float(x.mean()), float(y.mean())
        if ref_mean is not None:
            ax.axvline(ref_mean[0], color="grey", ls="--", lw=0.8)
            ax.axhline(ref_mean[1], color="grey", ls="--", lw=0.8)
        ax.plot([mx], [my], marker="*", color="red", markersize=13, markeredgecolor="black", ls="none")
        ax.set_title(f"{m}  (mean {mx:.2f}, {my:.2f})", fontsize=9)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
    for i, ax in enumerate(axes.flat[:len(models)]):
        if i + ncols >= len(models):  # lowest visible panel of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(f"{xo} reward")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{yo} reward")
    note = f"; dashed: mean of {reference}" if ref_mean is not None else ""
    fig.suptitle(f"Rewards of generated responses (star: mean{note})", fontsize=10)
    return save_figure(fig, stem)


def _kde_contours(ax, x: np.ndarray, y: np.ndarray, xlim, ylim) -> None:
    """KDE density contours; skipped for too few or degenerate (collinear) points."""
    if len(x) < 10 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return
    from scipy.stats import gaussian_kde

    try:
        kde = gaussian_kde(np.vstack([x, y]))
    except (np.linalg.LinAlgError, ValueError):
        return
    gx, gy = np.meshgrid(np.linspace(*xlim, 60), np.linspace(*ylim, 60))
    z = kde(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
    if np.all(np.isfinite(z)) and z.max() > 0:
        ax.contour(gx, gy, z, levels=4, colors="navy", linewidths=0.6, alpha=0.8)


def plot_weight_sweep(sweep: Mapping, stem: str | Path) -> list[Path]:
    """Figure 4: SO-weighted trained with a range of importance weights vs MOLMA (equal weights).

    Left: mean reward per objective against the weight of the first objective, the baseline model's
    means dashed. Right (when the sweep has win rates): the versus model's win rate against each
    weighted model, per objective, with Wilson intervals and 50 % dashed.
    """
    objectives = list(sweep["objectives"])
    points = sorted(sweep["points"], key=lambda p: (p.get("weights") or [0])[0])
    w = np.array([(p.get("weights") or [np.nan])[0] for p in points], dtype=float)
    if np.isnan(w).any():
        w = np.arange(len(points), dtype=float)
        xlabel = "sweep point"
    else:
        xlabel = f"importance weight of {objectives[0]}"
    with_means = [p for p in points if p.get("means") is not None]
    with_wins = [p for p in points if p.get("win_rates") is not None]
    panels = int(bool(with_means)) + int(bool(with_wins))
    fig = _figure(5.0 * panels, 3.8)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    k = 0
    method = sweep.get("method", "sweep")
    baseline = sweep.get("baseline") or {}
    if with_means:
        ax = axes[k]
        k += 1
        for j, o in enumerate(objectives):
            xs = [wi for wi, p in zip(w, points) if p.get("means") is not None]
            ys = [p["means"][o] for p in with_means]
            ax.plot(xs, ys, marker="o", color=COLORS[j % len(COLORS)], label=f"{method}: {o}")
            if baseline.get("means"):
                ax.axhline(baseline["means"][o], color=COLORS[j % len(COLORS)], ls="--", lw=1.2,
                           label=f"{baseline.get('label', 'baseline')}: {o}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean reward on test prompts")
        ax.set_title("Mean rewards")
        ax.legend(fontsize=8)
    if with_wins:
        ax = axes[k]
        versus = sweep.get("versus", "versus")
        for j, o in enumerate(objectives):
            xs, ys, lo, hi = [], [], [], []
            for wi, p in zip(w, points):
                r = (p.get("win_rates") or {}).get(o)
                if r is None:
                    continue
                r = r if isinstance(r, Mapping) else {"win": float(r)}
                xs.append(wi)
                ys.append(100 * r["win"])
                lo.append(100 * r.get("ci_low", r["win"]))
                hi.append(100 * r.get("ci_high", r["win"]))
            ys_a = np.array(ys)
            ax.errorbar(xs, ys_a, yerr=[ys_a - np.array(lo), np.array(hi) - ys_a], marker="o", capsize=3,
                        color=COLORS[j % len(COLORS)], label=o)
        ax.axhline(50, color="grey", ls="--", lw=1)
        ax.set_ylim(0, 100)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"win rate of {versus} (%)")
        ax.set_title(f"{versus} vs {method}(w)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{method} with a range of importance weights (Figure 4)", fontsize=10)
    return save_figure(fig, stem)


def plot_pareto(fronts: Sequence, stem: str | Path, reference: Sequence[float] | None = None,
                reference_label: str = "HV reference") -> list[Path]:
    """Pareto fronts of preference sweeps in the plane of the first two objectives: non-dominated points
    filled and joined by the front's staircase (its dominated region shaded), dominated points hollow
    and grey-edged, each point labelled; the hypervolume of each method in the legend."""
    fig = _figure(5.6, 4.4)
    ax = fig.add_subplot()
    objectives = fronts[0].objectives if fronts else ["x", "y"]
    ref = np.asarray(reference if reference is not None else (fronts[0].reference if fronts else [0, 0]))
    for i, f in enumerate(fronts):
        color = COLORS[i % len(COLORS)]
        pts, mask = f.points[:, :2], f.mask
        front = pts[mask]
        above = front[(front > ref[:2]).all(axis=1)]  # the part of the front that adds hypervolume
        if len(above):
            order = np.argsort(-above[:, 0])
            fx, fy = above[order, 0], above[order, 1]
            # staircase of the 2-D front down to the reference point
            sx = np.concatenate([[fx[0]], np.repeat(fx, 2)[1:], [ref[0]]])
            sy = np.concatenate([[ref[1]], np.repeat(fy, 2)[:-1], [fy[-1]]])
            ax.plot(sx, sy, color=color, lw=1, alpha=0.8)
            ax.fill_between(sx, ref[1], sy, color=color, alpha=0.08, step=None)
        ax.scatter(front[:, 0], front[:, 1], color=color, s=45, zorder=3,
                   label=f"{f.method} front (HV = {f.hypervolume:.3g})")
        dom = pts[~mask]
        if len(dom):
            ax.scatter(dom[:, 0], dom[:, 1], facecolors="none", edgecolors=color, s=45, zorder=3,
                       linewidths=1.2, linestyle="--", label=f"{f.method} dominated")
        for (px, py), label in zip(pts, f.labels):
            ax.annotate(label, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.scatter([ref[0]], [ref[1]], marker="+", color="black", s=80, zorder=4, label=reference_label)
    ax.set_xlabel(f"mean {objectives[0]} reward")
    ax.set_ylabel(f"mean {objectives[1]} reward" if len(objectives) > 1 else "")
    ax.set_title("Pareto fronts of preference sweeps")
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, stem)


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    head = np.array([y[: i + 1].mean() for i in range(window - 1)])
    return np.concatenate([head, np.convolve(y, kernel, mode="valid")])


def plot_training_curves(runs: Mapping[str, Sequence[Mapping]], stem: str | Path,
                         keys: Sequence[str] | None = None) -> list[Path]:
    """Training curves from ``metrics.jsonl`` logs: one panel per ``reward/raw/<objective>`` (and
    ``kl``), one line per run (raw values faint, moving average solid), iteration on the x-axis."""
    if keys is None:
        found = dict.fromkeys(k for rows in runs.values() for r in rows for k in r)
        # reward/raw/<objective> (not the per-tag reward/raw/<objective>/<tag>) and kl
        keys = [k for k in found if k.startswith("reward/raw/") and k.count("/") == 2]
        keys += ["kl"] if "kl" in found else []
        if not keys:
            keys = [k for k in found if k.startswith("reward/")][:4]
    keys = list(keys)
    ncols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig = _figure(4.0 * ncols, 3.0 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        for i, (name, rows) in enumerate(runs.items()):
            pts = [(r.get("iteration", j), r[key]) for j, r in enumerate(rows)
                   if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
            if not pts:
                continue
            x, y = np.array(pts, dtype=float).T
            color = COLORS[i % len(COLORS)]
            ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
            ax.plot(x, _moving_average(y, max(1, len(y) // 10)), color=color, lw=1.6, label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if keys:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle("Training curves", fontsize=10)
    return save_figure(fig, stem)
