"""Reward-model evaluation (section 4.2, Table 2): pairwise accuracy, eq. 3.2 loss and score
distributions on preference sets; tables across several models and benchmarks, as text, CSV and JSON.

:func:`evaluate_many` marks the pairs a reward-model folder was trained on (``train_overlap``; from the
hashes saved beside new checkpoints, else rebuilt from the data spec and settings in ``molma_rm.json``)
and reports the accuracy on the other pairs (``unseen``), or leaves them out (``exclude_train``);
:func:`format_table` keeps real and builtin sets apart (one average each, over pairs the model did not
train on)."""

from __future__ import annotations

import csv
import json
import logging
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
    return _evaluate(_as_objective(objective_or_model, **model_kwargs), pairs)[0]


def _evaluate(objective: Objective, pairs: Sequence[PreferencePair]
              ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """:func:`evaluate_reward_model`'s result and the chosen and rejected scores."""
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
    return result, chosen, rejected


# ------------------------------------------------------------------- overlap with the training data


def training_keys(model: str | Path) -> tuple[set[str], set[str], str] | None:
    """``(pair keys, prompt keys, how they were found)`` of the pairs a reward-model folder trained on
    (:func:`molma.rewards.data.pair_key`), or None when unknown (not a molma folder, trained on in-memory
    pairs, or its data cannot be read here).

    New checkpoints keep the hashes in ``molma_rm_train_pairs.json``; for older ones the training split is
    rebuilt from ``molma_rm.json`` (data spec, limit, held-out fraction and seed), as training made it."""
    from molma.rewards.data import TRAINING_PAIRS_FILE, pair_key, prompt_key
    from molma.rewards.model import METADATA_FILE

    folder = Path(str(model))
    saved = folder / TRAINING_PAIRS_FILE
    if saved.is_file():
        try:
            record = json.loads(saved.read_text(encoding="utf-8"))
            return set(record["pairs"]), set(record["prompts"]), TRAINING_PAIRS_FILE
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s: unreadable (%s); rebuilding the training split from %s", saved, err, METADATA_FILE)
    meta_file = folder / METADATA_FILE
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        config = meta.get("config") or {}
        data = meta.get("data")
        if not data or data == "<pairs>":
            return None
        from molma.rewards.train import _split

        skip = bool(config.get("skip_invalid", False))
        pairs = load_pairs(data, objective=config.get("objective", meta.get("objective")),
                           format=config.get("data_format", "auto"), skip_invalid=skip)
        pairs, _ = validate_pairs(pairs, skip_invalid=skip, where=data)
        if config.get("limit") is not None:
            pairs = pairs[:config["limit"]]
        if config.get("eval_data") is None:
            pairs, _ = _split(list(pairs), float(config.get("eval_fraction", 0.1)), int(config.get("seed", 0)))
    except Exception as err:  # noqa: BLE001 - any failure only means "unknown"
        log.warning("%s: cannot rebuild the training pairs from %s (%s); overlap with them unknown", folder, data,
                    err)
        return None
    return {pair_key(p) for p in pairs}, {prompt_key(p.prompt) for p in pairs}, f"rebuilt from {METADATA_FILE}"


def overlap_mask(pairs: Sequence[PreferencePair], keys: tuple[set[str], set[str], str]) -> list[bool]:
    """For each pair: is it one of the training pairs ``keys`` describes?"""
    from molma.rewards.data import pair_key

    return [pair_key(p) in keys[0] for p in pairs]


def evaluate_many(models: Sequence[Objective | str | Path], datasets: Sequence[str],
                  objective: str | None = None, limit: int | None = None, skip_invalid: bool = False,
                  exclude_train: bool = False, **model_kwargs: Any) -> list[dict[str, Any]]:
    """Every model on every data spec (each loaded once): a list of result rows with ``model`` and
    ``data`` labels added (see :func:`evaluate_reward_model` and :func:`molma.rewards.data.load_pairs`).

    For a reward-model folder whose training pairs are known (:func:`training_keys`), each row gets
    ``train_overlap`` (``pairs``: how many of the set's pairs it trained on, ``prompts``: how many pairs
    share a prompt with its training pairs) and ``unseen`` (accuracy and loss on the other pairs);
    ``exclude_train=True`` scores only those other pairs. Unknown overlap: ``train_overlap`` is None."""
    from molma.rewards.data import prompt_key
    from molma.rewards.metrics import pairwise_accuracy, preference_loss

    loaded = [(d, load_pairs(d, objective=objective, skip_invalid=skip_invalid, limit=limit))
              for d in datasets]
    labels = _unique_labels([m if isinstance(m, (str, Path)) else m.name for m in models])
    rows = []
    for label, model in zip(labels, models):
        folder = isinstance(model, (str, Path)) and Path(str(model)).is_dir()
        keys = training_keys(model) if folder else None
        obj = _as_objective(model, **model_kwargs)
        for spec, pairs in loaded:
            pairs = validate_pairs(pairs, skip_invalid=skip_invalid, where=spec)[0]
            overlap = None
            mask = [False] * len(pairs)
            if keys is not None:
                mask = overlap_mask(pairs, keys)
                overlap = {"pairs": sum(mask), "prompts": sum(prompt_key(p.prompt) in keys[1] for p in pairs),
                           "of": len(pairs), "source": keys[2], "excluded": exclude_train and any(mask)}
            scored = [p for p, m in zip(pairs, mask) if not m] if exclude_train else pairs
            if not scored:
                log.warning("%s on %s: every pair is a training pair of the model; nothing left to score", label, spec)
                continue
            log.info("evaluating %s on %s (%d pairs)", label, spec, len(scored))
            res, chosen, rejected = _evaluate(obj, scored)
            row = {"model": label, "data": data_label(spec), "data_spec": spec, **res}
            if folder:
                row["train_overlap"] = overlap
            if overlap is not None and not exclude_train:
                keep = torch.tensor([not m for m in mask])
                unseen: dict[str, Any] = {"n": int(keep.sum())}
                if keep.any():
                    unseen.update(pairwise_accuracy(chosen[keep], rejected[keep]))
                    unseen["loss"] = preference_loss(chosen[keep], rejected[keep]).item()
                row["unseen"] = unseen
            rows.append(row)
            log.info("%s on %s: accuracy %.1f %% (ties %d), margin %.3f +- %.3f%s", label, data_label(spec),
                     100 * res["accuracy"], res["ties"], res["margin"]["mean"], res["margin"]["std"],
                     f"; {overlap['pairs']} of {overlap['of']} pairs were training pairs" if overlap else "")
        del obj
    return rows


def _unique_labels(names: Sequence[str | Path]) -> list[str]:
    short = [Path(str(n)).name or str(n) for n in names]
    return [s if short.count(s) == 1 else str(n) for s, n in zip(short, names)]


def is_builtin_set(row: dict[str, Any]) -> bool:
    """Whether a result row is on molma's builtin data (its spec, else its label, starts with builtin)."""
    return str(row.get("data_spec") or row.get("data", "")).startswith("builtin")


def _unseen_accuracy(row: dict[str, Any]) -> float | None:
    """Accuracy (%) on the pairs the model did not train on: all of them when there is no known overlap
    (or it was excluded), None when it trained on every pair."""
    unseen = row.get("unseen")
    if not isinstance(unseen, dict):
        return 100 * row["accuracy"]
    return 100 * unseen["accuracy"] if unseen.get("n") else None


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Table-2-like text table: one row per model, one column per data set (accuracy %), and the
    average over the real sets and over the builtin sets apart ('Avg' when only one kind is present;
    '-' where not evaluated). A ``*`` marks a set holding pairs the model was trained on (its accuracy on
    all pairs is shown; the averages use its accuracy on the other pairs), ``?`` a folder whose training
    pairs are unknown; notes under the table say how many."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    sets = list(dict.fromkeys(r["data"] for r in rows))
    by_cell = {(r["model"], r["data"]): r for r in rows}
    builtin = {r["data"]: is_builtin_set(r) for r in rows}
    groups = [("real", [s for s in sets if not builtin[s]]), ("builtin", [s for s in sets if builtin[s]])]
    groups = [(name, members) for name, members in groups if members]
    avg_names = ["Avg"] if len(groups) == 1 else [f"Avg {name}" for name, _ in groups]
    header = ["model", *sets, *avg_names]
    body, notes = [], []
    unknown = False
    for m in models:
        cells = []
        for s in sets:
            row = by_cell.get((m, s))
            if row is None:
                cells.append("-")
                continue
            overlap = row.get("train_overlap")
            mark = ""
            if isinstance(overlap, dict) and overlap.get("pairs"):
                mark = "*"
                unseen = row.get("unseen") or {}
                if overlap.get("excluded"):
                    notes.append(f"* {m} on {s}: {overlap['pairs']} of {overlap['of']} pairs are training pairs of "
                                 f"the model and were left out; accuracy on the other {row['n']}")
                elif unseen.get("n"):
                    notes.append(f"* {m} on {s}: {overlap['pairs']} of {overlap['of']} pairs are training pairs of "
                                 f"the model; accuracy on the other {unseen['n']}: {100 * unseen['accuracy']:.1f}")
                else:
                    notes.append(f"* {m} on {s}: all {overlap['of']} pairs are training pairs of the model "
                                 "(left out of the averages)")
            elif "train_overlap" in row and overlap is None:
                mark = "?"
                unknown = True
            cells.append(f"{100 * row['accuracy']:.1f}{mark}")
        avgs = []
        for _, members in groups:
            vals = [v for s in members if (m, s) in by_cell and (v := _unseen_accuracy(by_cell[(m, s)])) is not None]
            avgs.append(f"{sum(vals) / len(vals):.1f}" if vals else "-")
        body.append([m, *cells, *avgs])
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    if len(groups) > 1:
        notes.append("real and builtin sets are averaged apart (builtin pairs are molma's own, authored for it)")
    if unknown:
        notes.append("? the model's training pairs are unknown (trained on in-memory pairs or data not readable "
                     "here): overlap not checked")
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body), *notes])


CSV_FIELDS = ("model", "data", "n", "accuracy", "correct", "ties", "incorrect", "loss")


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in CSV_FIELDS}
    for part in ("chosen", "rejected", "margin"):
        out.update({f"{part}_{k}": v for k, v in row[part].items()})
    if "train_overlap" in row:
        overlap = row["train_overlap"] or {}
        unseen = row.get("unseen") or {}
        out.update({"train_overlap_pairs": overlap.get("pairs"), "train_overlap_prompts": overlap.get("prompts"),
                    "unseen_n": unseen.get("n"), "unseen_accuracy": unseen.get("accuracy")})
    return out


def write_results(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.csv`` (one flat row per model x data set) and ``results.json`` (full rows) into
    ``out_dir``, atomically; returns both paths."""
    import io

    out = Path(out_dir)
    buf = io.StringIO()
    flat = [_flat(r) for r in rows]
    fields = list(dict.fromkeys(k for f in flat for k in f)) if flat else list(CSV_FIELDS)
    writer = csv.DictWriter(buf, fieldnames=fields)
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
