"""The experiment folder: one folder that every command writes into and ``molma report`` reads whole.

::

    EXP/
      rm/<objective>/        molma rm train --out EXP/rm/help          reward models
      rm/results.json        molma rm eval --out EXP/rm                Table 2
      runs/<name>/           molma train --out EXP/runs/molma          curves, Table 3 (metrics.jsonl, run.json)
      runs/<algo>-w<w>/      molma sweep --out EXP                     one run per weight
      sweeps.json            molma sweep --out EXP                     which runs form which sweep
      eval/                  molma eval --out EXP/eval                 win rates, Figures 2a and 3
      sweep/<algo>.json      molma eval (SO-weighted sweeps)           Figure 4
      pareto/<algo>.json     molma eval (preference sweeps)            Pareto fronts, hypervolume
      report/                molma report EXP

``molma sweep`` records its runs in ``sweeps.json``; ``molma eval --out EXP/eval`` then also evaluates
every recorded sweep run (named by its folder) on the same prompts and turns the result into the sweep
files that ``molma report`` draws (:func:`write_sweep_files`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from molma.atomic import write_text_atomic

log = logging.getLogger(__name__)

RUNS, EVAL, RM, SWEEP, PARETO, REPORT = "runs", "eval", "rm", "sweep", "pareto", "report"
MANIFEST = "sweeps.json"
#: algorithm -> how the report labels its sweep; SO-weighted is Figure 4, the others are Pareto fronts
METHOD_LABELS = {"so-weighted": "SO-weighted", "pgapo": "P-GAPO", "molma": "MOLMA", "gapo": "GAPO"}


def sweep_run_name(algo: str, weight: float) -> str:
    return f"{algo}-w{weight:g}"


def read_manifest(exp: str | Path) -> dict[str, Any]:
    """``EXP/sweeps.json`` (``{}`` when there is none): ``{algo: {"objectives": [...], "runs": {name:
    {"weights": [...]}}}}``."""
    path = Path(exp) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("runs"), dict)
                                             for v in data.values()):
        raise ValueError(f"{path}: expected {{algo: {{objectives: [...], runs: {{name: {{weights: [...]}}}}}}}}")
    return data


def record_sweep(exp: str | Path, algo: str, objectives: Sequence[str],
                 weights: Mapping[str, Sequence[float]]) -> Path:
    """Add (or replace) the sweep of ``algo`` in ``EXP/sweeps.json``: its runs ``EXP/runs/<name>`` and
    each run's weights, one per objective (in ``objectives``' order)."""
    data = read_manifest(exp)
    data[algo] = {"objectives": list(objectives),
                  "runs": {name: {"weights": [float(x) for x in w]} for name, w in weights.items()}}
    path = Path(exp) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return path


def experiment_of(eval_out: str | Path) -> Path:
    """The experiment folder of an evaluation written to ``eval_out`` (``EXP/eval`` -> ``EXP``)."""
    return Path(eval_out).parent


def sweep_models(exp: str | Path) -> dict[str, str]:
    """``{run name: model folder}`` of every recorded sweep run (its ``final/``)."""
    exp = Path(exp)
    out = {}
    for sweep in read_manifest(exp).values():
        for name in sweep["runs"]:
            out[name] = str(exp / RUNS / name / "final")
    return out


def write_sweep_files(exp: str | Path, result) -> list[Path]:
    """For every sweep in ``EXP/sweeps.json`` whose runs were all evaluated in ``result`` (an
    :class:`~molma.eval.runner.EvalResult`), write ``EXP/sweep/<algo>.json`` (SO-weighted: Figure 4) or
    ``EXP/pareto/<algo>.json`` (preference sweeps) with the mean rewards on the test prompts and, when
    the evaluation's versus model is not a sweep run, its win rates against each point."""
    from molma.eval.sweep import sweep_from_result, write_sweep

    exp = Path(exp)
    written = []
    for algo, sweep in read_manifest(exp).items():
        runs = sweep["runs"]
        missing = [n for n in runs if n not in result.scores]
        if missing:
            log.warning("sweep %s: runs %s were not evaluated; no sweep file written", algo, missing)
            continue
        names = list(sweep.get("objectives") or [])
        if sorted(names) != sorted(result.objectives):
            log.warning("sweep %s: trained on objectives %s but evaluated with %s; no sweep file written", algo,
                        names, list(result.objectives))
            continue
        weights = {name: [run["weights"][names.index(o)] for o in result.objectives] for name, run in runs.items()}
        versus = result.versus if result.versus is not None and result.versus not in runs else None
        data = sweep_from_result(result, weights, method=METHOD_LABELS.get(algo, algo), versus=versus)
        folder = SWEEP if algo == "so-weighted" else PARETO
        written.append(write_sweep(exp / folder / f"{algo}.json", data))
    return written
