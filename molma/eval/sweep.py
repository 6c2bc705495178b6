"""Preference / importance-weight sweeps: the SO-weighted weight sweep against MOLMA (paper Figure 4)
and Pareto fronts of preference sweeps (P-GAPO, MOLMA with importance weights w) with hypervolume.

A sweep is a JSON file (written by :func:`write_sweep`, usually from :func:`sweep_from_result`)::

    {"method": "SO-weighted", "objectives": ["help", "safe"], "versus": "molma",
     "points": [{"label": "w=0.2", "weights": [0.2, 0.8], "means": {"help": 0.1, "safe": 0.3},
                 "win_rates": {"help": {"win": 0.61, "tie": 0.0, "ci_low": 0.5, ...}, "safe": ...}}],
     "baseline": {"label": "molma", "weights": [0.5, 0.5], "means": {"help": 0.2, "safe": 0.2}}}

``weights`` are the importance weights / preference of that point (one per objective), ``means`` the
mean reward per objective on the test prompts, ``win_rates`` (optional) those of ``versus`` against the
point's model (a win-rate dict or a bare win share), ``baseline`` (optional) the model compared with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from molma.eval.responses import read_json_if_exists, write_json
from molma.eval.stats import hypervolume, pareto_mask


def _check_sweep(data, where: str) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object")
    for key in ("method", "objectives", "points"):
        if key not in data:
            raise ValueError(f"{where}: missing field {key!r}")
    objectives = data["objectives"]
    if not isinstance(objectives, list) or not objectives or not all(isinstance(o, str) for o in objectives):
        raise ValueError(f"{where}: field 'objectives' must be a non-empty list of names")
    if not isinstance(data["points"], list):
        raise ValueError(f"{where}: field 'points' must be a list")
    for i, p in enumerate(data["points"]):
        w = f"{where}: points[{i}]"
        if not isinstance(p, dict):
            raise ValueError(f"{w}: expected an object")
        means = p.get("means")
        if means is not None:
            if not isinstance(means, dict) or any(o not in means for o in objectives):
                raise ValueError(f"{w}: field 'means' must give every objective {objectives}")
            if not all(isinstance(means[o], int | float) and np.isfinite(means[o]) for o in objectives):
                raise ValueError(f"{w}: field 'means' must hold finite numbers")
        weights = p.get("weights")
        if weights is not None and (not isinstance(weights, list) or len(weights) != len(objectives)):
            raise ValueError(f"{w}: field 'weights' must have one weight per objective")
        if means is None and p.get("win_rates") is None:
            raise ValueError(f"{w}: needs 'means' and/or 'win_rates'")
    return data


def read_sweep(path: str | Path) -> dict:
    """Read and validate a sweep JSON file (errors name the file and the point)."""
    data = read_json_if_exists(path)
    if data is None:
        raise FileNotFoundError(path)
    return _check_sweep(data, str(path))


def write_sweep(path: str | Path, sweep: Mapping) -> Path:
    """Validate and write a sweep JSON file atomically."""
    _check_sweep(dict(sweep), str(path))
    write_json(path, dict(sweep))
    return Path(path)


def sweep_from_result(result, weights: Mapping[str, Sequence[float]], method: str,
                      versus: str | None = None, baseline: str | None = None,
                      baseline_weights: Sequence[float] | None = None) -> dict:
    """Build a sweep from one :class:`~molma.eval.runner.EvalResult` that evaluated every sweep model.

    ``weights`` maps each evaluated sweep model's name to its importance weights. ``versus`` (default:
    the result's versus model, when it is not a sweep model) adds its win rates against each point;
    ``baseline`` (default ``versus``) adds that model's mean rewards as the comparison point of Figure 4.
    """
    from molma.eval.stats import win_rates

    objectives = list(result.objectives)
    versus = versus if versus is not None else (result.versus if result.versus not in weights else None)
    baseline = baseline if baseline is not None else versus
    points = []
    for name, w in weights.items():
        if name not in result.scores:
            raise ValueError(f"sweep model {name!r} was not evaluated (models: {result.models})")
        if len(w) != len(objectives):
            raise ValueError(f"weights of {name!r} must have one value per objective {objectives}")
        point = {"label": name, "weights": [float(x) for x in w],
                 "means": {o: float(np.mean(result.scores[name][o])) for o in objectives}}
        if versus is not None:
            point["win_rates"] = {o: win_rates(result.scores[versus][o], result.scores[name][o],
                                               float(result.config.get("tie_tol", 0.0)))
                                  for o in objectives}
        points.append(point)
    sweep = {"method": method, "objectives": objectives, "points": points}
    if versus is not None:
        sweep["versus"] = versus
    if baseline is not None:
        sweep["baseline"] = {"label": baseline,
                             "means": {o: float(np.mean(result.scores[baseline][o])) for o in objectives}}
        if baseline_weights is not None:
            sweep["baseline"]["weights"] = [float(x) for x in baseline_weights]
    return sweep


@dataclass
class Front:
    """One method's sweep points with Pareto analysis: ``points[n, d]`` (mean rewards), ``mask`` of the
    non-dominated ones, and the hypervolume against the common ``reference``."""

    method: str
    objectives: list[str]
    labels: list[str]
    points: np.ndarray
    mask: np.ndarray
    hypervolume: float
    reference: np.ndarray


def analyse_fronts(sweeps: Sequence[Mapping], reference: Sequence[float] | Mapping[str, float] | None = None,
                   objectives: Sequence[str] | None = None) -> tuple[list[Front], np.ndarray, str]:
    """Pareto fronts and hypervolumes of several preference sweeps over the same objectives.

    ``reference`` (the hypervolume reference point) is a point or ``{objective: value}``; by default
    the component-wise minimum over all points of all sweeps (so every method is measured from the same
    corner, and the worst point in each objective adds no volume). Returns the fronts, the reference
    point used and a sentence saying where it came from. Points without ``means`` are skipped.
    """
    objectives = list(objectives or (sweeps[0]["objectives"] if sweeps else []))
    fronts_data = []
    for s in sweeps:
        missing = [o for o in objectives if o not in s["objectives"]]
        if missing:
            raise ValueError(f"sweep {s['method']!r} lacks objectives {missing}")
        pts = [p for p in s["points"] if p.get("means") is not None]
        labels = [str(p.get("label") or p.get("weights") or i) for i, p in enumerate(pts)]
        arr = np.array([[p["means"][o] for o in objectives] for p in pts], dtype=float)
        arr = arr.reshape(-1, len(objectives))
        fronts_data.append((s["method"], labels, arr))
    if reference is None:
        allpts = np.concatenate([a for _, _, a in fronts_data] or [np.zeros((0, len(objectives)))])
        ref = allpts.min(axis=0) if len(allpts) else np.zeros(len(objectives))
        source = "component-wise minimum of all sweep points"
    else:
        ref = np.array([reference[o] for o in objectives] if isinstance(reference, Mapping) else reference,
                       dtype=float)
        source = "given reference point"
    if ref.size != len(objectives):
        raise ValueError(f"reference point has {ref.size} values for objectives {objectives}")
    fronts = [Front(method, objectives, labels, arr, pareto_mask(arr) if len(arr) else np.zeros(0, bool),
                    hypervolume(arr, ref) if len(arr) else 0.0, ref) for method, labels, arr in fronts_data]
    return fronts, ref, source
