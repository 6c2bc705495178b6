"""Reward-model evaluation (section 4.2, Table 2): pairwise accuracy, eq. 3.2 loss and score
distributions on preference sets; tables across several models and benchmarks, as text, CSV and JSON."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from molma.atomic import write_text_atomic
from molma.data.records import PreferencePair
from molma.rewards.data import data_label, load_pairs, validate_pairs
from molma.rewards.metrics import pairwise_accuracy, preference_loss, score_stats
from molma.rewards.objective import Objective

log = logging.getLogger(__name__)


def _as_objective(objective_or_model: Objective | str | Path, **model_kwargs: Any) -> Objective:
    if isinstance(objective_or_model, (str, Path)):
        from molma.rewards.objective import load_objective

        return load_objective(str(objective_or_model), **model_kwargs)
    if not hasattr(objective_or_model, "score"):
        raise TypeError(f"expected an Objective (with .score) or a checkpoint path, "
                        f"got {objective_or_model!r}")
    return objective_or_model


def evaluate_reward_model(objective_or_model: Objective | str | Path, pairs: Sequence[PreferencePair],
                          **model_kwargs: Any) -> dict[str, Any]:
    """Score every pair's chosen and rejected response and summarise.

    Returns ``objective``, ``n``, ``correct``, ``ties``, ``incorrect``, ``accuracy`` (= correct / n; exact
    ties are not correct), ``loss`` (eq. 3.2, mean), ``chosen``/``rejected``/``margin`` score statistics
    (mean, std, min, q05..q95, max) and ``seconds``. A path is loaded with :func:`load_objective`
    (``model_kwargs``: batch_size, max_length, device).
    """
    objective = _as_objective(objective_or_model, **model_kwargs)
    pairs, _ = validate_pairs(pairs)
    t0 = time.perf_counter()
    show = getattr(objective, "show_progress", None)
    if show is not None:
        objective.show_progress = True
    try:
        chosen, rejected = scores_tensor(objective, pairs)
    finally:
        if show is not None:
            objective.show_progress = show
    result: dict[str, Any] = {"objective": objective.name}
    result.update(pairwise_accuracy(chosen, rejected))
    result["loss"] = preference_loss(chosen, rejected).item()
    result["chosen"] = score_stats(chosen)
    result["rejected"] = score_stats(rejected)
    result["margin"] = score_stats(chosen - rejected)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def evaluate_many(models: Sequence[Objective | str | Path], datasets: Sequence[str],
                  objective: str | None = None, limit: int | None = None, skip_invalid: bool = False,
                  **model_kwargs: Any) -> list[dict[str, Any]]:
    """Every model on every data spec (each loaded once): a list of result rows with ``model`` and
    ``data`` labels added (see :func:`evaluate_reward_model` and :func:`molma.rewards.data.load_pairs`)."""
    loaded = [(d, load_pairs(d, objective=objective, skip_invalid=skip_invalid, limit=limit))
              for d in datasets]
    labels = _unique_labels([m if isinstance(m, (str, Path)) else m.name for m in models])
    rows = []
    for label, model in zip(labels, models):
        obj = _as_objective(model, **model_kwargs)
        for spec, pairs in loaded:
            log.info("evaluating %s on %s (%d pairs)", label, spec, len(pairs))
            res = evaluate_reward_model(obj, pairs)
            rows.append({"model": label, "data": data_label(spec), "data_spec": spec, **res})
            log.info("%s on %s: accuracy %.1f %% (ties %d), margin %.3f +- %.3f", label, data_label(spec),
                     100 * res["accuracy"], res["ties"], res["margin"]["mean"], res["margin"]["std"])
        del obj
    return rows


def _unique_labels(names: Sequence[str | Path]) -> list[str]:
    short = [Path(str(n)).name or str(n) for n in names]
    return [s if short.count(s) == 1 else str(n) for s, n in zip(short, names)]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Table-2-like text table: one row per model, one column per data set (accuracy %), and Avg over
    the sets each model was evaluated on ('-' where not evaluated)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    sets = list(dict.fromkeys(r["data"] for r in rows))
    acc = {(r["model"], r["data"]): 100 * r["accuracy"] for r in rows}
    header = ["model", *sets, "Avg"]
    body = []
    for m in models:
        vals = [acc.get((m, s)) for s in sets]
        present = [v for v in vals if v is not None]
        avg = sum(present) / len(present) if present else math.nan
        body.append([m, *("-" if v is None else f"{v:.1f}" for v in vals), f"{avg:.1f}"])
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


CSV_FIELDS = ("model", "data", "n", "accuracy", "correct", "ties", "incorrect", "loss")


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in CSV_FIELDS}
    for part in ("chosen", "rejected", "margin"):
        out.update({f"{part}_{k}": v for k, v in row[part].items()})
    return out


def write_results(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.csv`` (one flat row per model x data set) and ``results.json`` (full rows) into
    ``out_dir``, atomically; returns both paths."""
    import io

    out = Path(out_dir)
    buf = io.StringIO()
    flat = [_flat(r) for r in rows]
    writer = csv.DictWriter(buf, fieldnames=list(flat[0]) if flat else list(CSV_FIELDS))
    writer.writeheader()
    writer.writerows(flat)
    csv_path, json_path = out / "results.csv", out / "results.json"
    write_text_atomic(csv_path, buf.getvalue())
    write_text_atomic(json_path, json.dumps(list(rows), indent=2) + "\n")
    return csv_path, json_path


def scores_tensor(objective: Objective, pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores, rejected scores) for ``pairs``, in one ``score`` call."""
    prompts = [p.prompt for p in pairs]
    s = objective.score(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    return s[:len(pairs)], s[len(pairs):]
