"""Compare runs: summary table, per-seed curves (CSV/JSON), target check and matplotlib plots.

Results are the JSON files written by :func:`molma.mbhi.train.run_many`
(``<root>/<task>/<method>/seed<k>.json``). Curves per seed are put on the runs' logging grid:
cumulative catastrophes, cumulative human labels and the mean task return of the last
``return_window`` episodes finished by that step.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from molma.atomic import write_text_atomic
from molma.mbhi.train import METHODS, RunResult, env_slug, json_safe

BASELINES = ("none", "shaping", "hirl")

# two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


def t_interval(values: Sequence[float | None]) -> dict[str, float]:
    """Mean and 95 % Student-t interval over seeds (finite values only): ``{mean, lo, hi, n, std}``."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(arr.size)
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "std": float("nan")}
    mean = float(arr.mean())
    if n == 1:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "n": 1, "std": float("nan")}
    sd = float(arr.std(ddof=1))
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "std": sd}


def steps_to_threshold(result: RunResult, threshold: float, window: int = 10) -> int | None:
    """First logged step at which the mean task return of the last ``window`` finished training episodes
    reaches ``threshold`` (None: never within the run)."""
    c = seed_curves(result, window)
    for step, ret in zip(c["step"], c["return"]):
        if ret is not None and ret >= threshold:
            return int(step)
    return None


def return_auc(result: RunResult, window: int = 10) -> float:
    """Area under the training-return curve divided by the run length: the mean, over the logging grid,
    of the last-``window``-episode mean task return (0 before the first finished episode)."""
    c = seed_curves(result, window)
    vals = [0.0 if v is None else v for v in c["return"]]
    return float(np.mean(vals)) if vals else float("nan")


def load_results(root: str | Path) -> list[RunResult]:
    """Every ``seed*.json`` run result under ``root`` (sorted by task, method, seed)."""
    results = [RunResult.load(p) for p in sorted(Path(root).glob("**/seed*.json"))]
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(results, key=lambda r: (r.env, order.get(r.method, 99), r.seed))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def summarize(results: Iterable[RunResult]) -> list[dict[str, Any]]:
    """One row per (task, method): means and stds over seeds of the run summaries."""
    groups: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        groups[(r.env, r.method)].append(r)
    rows = []
    for (env, method), runs in groups.items():
        row: dict[str, Any] = {"env": env, "method": method, "seeds": sorted(r.seed for r in runs)}
        for key in ("catastrophes", "final_return", "labels_used", "eval_catastrophes",
                    "train_return_last10pct", "wall_seconds", "cpu_seconds", "blocks"):
            mean, std = _mean_std([r.summary.get(key, float("nan")) for r in runs])
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        row["catastrophes_per_seed"] = [r.summary["catastrophes"] for r in runs]
        row["steps"] = runs[0].steps[-1] if runs[0].steps else 0
        rows.append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda x: (x["env"], order.get(x["method"], 99)))


def check_targets(rows: Sequence[dict[str, Any]], tolerance: float = 0.10) -> dict[str, dict[str, Any]]:
    """Per task: does MBHI cause fewer training catastrophes than every baseline, with a final return
    no worse than ``tolerance`` (relative) below the best baseline's?"""
    by_env: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_env[row["env"]][row["method"]] = row
    out: dict[str, dict[str, Any]] = {}
    for env, methods in by_env.items():
        if "mbhi" not in methods:
            continue
        mbhi = methods["mbhi"]
        base = {m: methods[m] for m in BASELINES if m in methods}
        fewer = {m: mbhi["catastrophes_mean"] < b["catastrophes_mean"] for m, b in base.items()}
        best = max((b["final_return_mean"] for b in base.values()), default=float("nan"))
        floor = best - tolerance * abs(best)
        ok_return = bool(mbhi["final_return_mean"] >= floor) if math.isfinite(best) else False
        out[env] = {"fewer_catastrophes_than": fewer, "best_baseline_return": best, "return_floor": floor,
                    "mbhi_return": mbhi["final_return_mean"], "return_ok": ok_return,
                    "met": bool(all(fewer.values()) and ok_return and len(base) == len(BASELINES))}
    return out


def seed_curves(result: RunResult, return_window: int = 10) -> dict[str, list[float | None]]:
    """Grid curves of one run: ``step``, ``catastrophes``, ``labels``, ``return`` (None before the
    first finished episode)."""
    ends = np.asarray([e["end_step"] for e in result.episodes], dtype=int)
    rets = np.asarray([e["return"] for e in result.episodes], dtype=float)
    avg: list[float | None] = []
    for step in result.steps:
        n = int(np.searchsorted(ends, step, side="right"))
        avg.append(float(rets[max(0, n - return_window):n].mean()) if n else None)
    return {"step": list(result.steps), "catastrophes": list(result.catastrophes),
            "labels": list(result.labels), "return": avg}


def curve_rows(results: Iterable[RunResult], return_window: int = 10) -> list[dict[str, Any]]:
    """Long-format rows (task, method, seed, step, catastrophes, labels, return) for CSV."""
    rows = []
    for r in results:
        c = seed_curves(r, return_window)
        for i, step in enumerate(c["step"]):
            rows.append({"env": r.env, "method": r.method, "seed": r.seed, "step": step,
                         "catastrophes": c["catastrophes"][i], "labels": c["labels"][i],
                         "return": c["return"][i]})
    return rows


def write_json(path: str | Path, data: Any) -> Path:
    return write_text_atomic(Path(path), json.dumps(json_safe(data), indent=1, allow_nan=False))


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    if not rows:
        return write_text_atomic(Path(path), "")
    fields = list(rows[0])
    lines: list[str] = []

    class _Sink:
        def write(self, s: str) -> None:
            lines.append(s)

    writer = csv.DictWriter(_Sink(), fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return write_text_atomic(Path(path), "".join(lines))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the summary rows."""
    head = ("| task | method | catastrophes (train) | final return | human labels | eval catastrophes "
            "| wall s / run |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {env_slug(r['env'])} | {r['method']} "
            f"| {r['catastrophes_mean']:.1f} ± {r['catastrophes_std']:.1f} "
            f"| {r['final_return_mean']:.2f} ± {r['final_return_std']:.2f} | {r['labels_used_mean']:.0f} "
            f"| {r['eval_catastrophes_mean']:.1f} | {r['wall_seconds_mean']:.0f} |")
    return "\n".join(lines)


def plot_comparison(results: Sequence[RunResult], out_dir: str | Path, return_window: int = 10) -> list[Path]:
    """Per task a PNG with cumulative catastrophes, return and human labels vs environment steps
    (mean over seeds, shaded 95 % t-interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_env: dict[str, dict[str, list[RunResult]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by_env[r.env][r.method].append(r)
    paths = []
    for env, methods in sorted(by_env.items()):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for method in [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]:
            curves = [seed_curves(r, return_window) for r in methods[method]]
            n = min(len(c["step"]) for c in curves)
            steps = np.asarray(curves[0]["step"][:n])
            for ax, key in zip(axes, ("catastrophes", "return", "labels")):
                data = np.asarray([[np.nan if v is None else v for v in c[key][:n]] for c in curves], float)
                valid = ~np.all(np.isnan(data), axis=0)
                if not valid.any():
                    continue
                ci = [t_interval(col) for col in data[:, valid].T]
                mean = np.asarray([c["mean"] for c in ci])
                line, = ax.plot(steps[valid], mean, label=f"{method} ({len(curves)} seeds)")
                ax.fill_between(steps[valid], [c["lo"] for c in ci], [c["hi"] for c in ci],
                                color=line.get_color(), alpha=0.15)
        titles = ("cumulative catastrophes", f"task return (last {return_window} episodes)",
                  "human labels used")
        for ax, title in zip(axes, titles):
            ax.set_title(title)
            ax.set_xlabel("environment steps")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(env)
        fig.tight_layout()
        path = out / f"{env_slug(env)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def compare(root: str | Path, out_dir: str | Path | None = None, return_window: int = 10) -> dict[str, Any]:
    """Load runs under ``root``; write ``comparison.json``, ``summary.csv``, ``curves.csv`` and one PNG
    per task into ``out_dir`` (default ``root``); return the comparison dict."""
    results = load_results(root)
    if not results:
        raise FileNotFoundError(f"no run results (seed*.json) under {root}")
    out = Path(out_dir or root)
    rows = summarize(results)
    targets = check_targets(rows)
    plots = plot_comparison(results, out, return_window)
    curves = {f"{env_slug(r.env)}/{r.method}/seed{r.seed}": seed_curves(r, return_window) for r in results}
    data = {"summary": rows, "targets": targets, "curves": curves, "plots": [str(p) for p in plots]}
    write_json(out / "comparison.json", data)
    write_csv(out / "summary.csv", [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows])
    write_csv(out / "curves.csv", curve_rows(results, return_window))
    return data
