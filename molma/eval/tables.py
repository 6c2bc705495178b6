"""Tables of the evaluation section: reward-model accuracy (paper Table 2), training time per method
(Table 3), win rates (Figure 2a as numbers), mean/median rewards and KL per model; plus the readers of
the training logs they come from. Each table renders as plain text, Markdown and (escaped) HTML.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from molma.eval.responses import read_json_if_exists


@dataclass
class Table:
    """A titled table of already-formatted cells; ``notes`` are printed under it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        widths = [max(len(str(c)) for c in col) for col in zip(self.columns, *self.rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [self.title, line(self.columns), line(["-" * w for w in widths])]
        out += [line(r) for r in self.rows]
        out += self.notes
        return "\n".join(out)

    def to_markdown(self) -> str:
        esc = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        out = [f"**{esc(self.title)}**", "", "| " + " | ".join(esc(c) for c in self.columns) + " |",
               "|" + "|".join("---" for _ in self.columns) + "|"]
        out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in self.rows]
        if self.notes:
            out += [""] + [f"_{esc(n)}_" for n in self.notes]
        return "\n".join(out)

    def to_html(self) -> str:
        e = html.escape
        head = "".join(f"<th>{e(str(c))}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in self.rows)
        notes = "".join(f'<p class="note">{e(n)}</p>' for n in self.notes)
        return (f"<table><caption>{e(self.title)}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>{notes}")


def fmt(value, digits: int = 3) -> str:
    """A number for a table cell; ``None``/NaN become ``-``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}"


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


# ----------------------------------------------------------------------------------------- win rates
def win_rate_table(rates: Mapping[str, Mapping[str, Mapping]], versus: str,
                   objectives: Sequence[str] | None = None) -> Table:
    """Win rates of ``versus`` against each other model (paper Figure 2a as a table): per objective the
    win share with its 95 % Wilson interval and the tie share, in percent."""
    objectives = list(objectives or dict.fromkeys(o for r in rates.values() for o in r))
    columns = ["vs"]
    for o in objectives:
        columns += [f"{o} win %", f"{o} 95% CI", f"{o} tie %"]
    rows = []
    for other, per in rates.items():
        row = [other]
        for o in objectives:
            r = per.get(o)
            row += ["-", "-", "-"] if r is None else [
                pct(r["win"]), f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]", pct(r["tie"])]
        rows.append(row)
    n = next((r["n"] for per in rates.values() for r in per.values()), 0)
    notes = [f"{n} prompts; win = {versus}'s response scores higher; tie = |difference| <= tolerance; "
             "CI = Wilson score interval of the win share."]
    return Table(f"Win rates of {versus} (model-based evaluation, Figure 2a)", columns, rows, notes)


def format_win_rates(rates: Mapping[str, Mapping[str, Mapping]], versus: str,
                     objectives: Sequence[str] | None = None) -> str:
    """The win-rate table as plain text (what the demo prints)."""
    if not rates:
        return f"Win rates of {versus}: no other model evaluated"
    return win_rate_table(rates, versus, objectives).to_text()


def reward_table(summary: Sequence[Mapping], objectives: Sequence[str]) -> Table:
    """Mean / median reward per objective and KL to the reference, one row per model (paper Figure 3
    in numbers)."""
    columns = ["model", "n"]
    for o in objectives:
        columns += [f"{o} mean", f"{o} median"]
    columns.append("KL to ref")
    rows = []
    for s in summary:
        row = [s["model"], fmt(s.get("n"))]
        for o in objectives:
            row += [fmt(s.get(f"{o}/mean")), fmt(s.get(f"{o}/median"))]
        row.append(fmt(s.get("kl")))
        rows.append(row)
    notes = ["KL to ref: estimate of KL(model || reference) per response in nats; '-' = not measured."]
    return Table("Rewards of generated responses per model", columns, rows, notes)


# ------------------------------------------------------------------------------- reward-model accuracy
def read_rm_records(paths: Sequence[str | Path]) -> list[dict]:
    """Reward-model accuracy records ``{"model", "benchmark", "accuracy"}`` from JSON files.

    Each file holds one record, a list of records, or an object with a ``results`` list. ``accuracy``
    is a fraction in [0, 1]; ``data`` is accepted for ``benchmark``, so the ``results.json`` written by
    ``molma rm eval`` (:func:`molma.rewards.evaluate.write_results`) is read as is. Errors name the
    file and the record index.
    """
    out = []
    for path in paths:
        data = read_json_if_exists(path)
        if data is None:
            raise FileNotFoundError(path)
        items = data.get("results", [data]) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a record, a list of records or {{'results': [...]}}")
        for i, rec in enumerate(items):
            where = f"{path}: record {i}"
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected an object")
            if "benchmark" not in rec and "data" in rec:  # rows of molma.rewards.evaluate (results.json)
                rec = {**rec, "benchmark": rec["data"]}
            for key in ("model", "benchmark", "accuracy"):
                if key not in rec:
                    raise ValueError(f"{where}: missing field {key!r}")
            acc = rec["accuracy"]
            if isinstance(acc, bool) or not isinstance(acc, int | float) or not 0 <= acc <= 1:
                raise ValueError(f"{where}: field 'accuracy' must be a fraction in [0, 1], got {acc!r}")
            out.append({**rec, "model": str(rec["model"]), "benchmark": str(rec["benchmark"]),
                        "accuracy": float(acc), "source": str(path)})
    return out


def rm_accuracy_table(records: Sequence[Mapping]) -> Table:
    """Reward-model accuracy (paper Table 2): rows = reward model, columns = benchmark, plus the average
    over the benchmarks each model was evaluated on; ``-`` where a model was not evaluated. In percent.
    A repeated (model, benchmark) keeps the last record."""
    models = list(dict.fromkeys(r["model"] for r in records))
    benches = list(dict.fromkeys(r["benchmark"] for r in records))
    cell = {(r["model"], r["benchmark"]): float(r["accuracy"]) for r in records}
    rows = []
    for m in models:
        values = [cell.get((m, b)) for b in benches]
        have = [v for v in values if v is not None]
        rows.append([m, *[pct(v) for v in values], pct(sum(have) / len(have))])
    counts = {r["benchmark"]: r.get("n") for r in records if r.get("n") is not None}
    notes = ["Accuracy (%) = share of preference pairs where the reward model scores the chosen response "
             "higher; Avg over the benchmarks each model was evaluated on."]
    if counts:
        notes.append("Pairs per benchmark: " + ", ".join(f"{b}: {n}" for b, n in counts.items()))
    return Table("Reward-model accuracy (Table 2)", ["reward model", *benches, "Avg"], rows, notes)


# ------------------------------------------------------------------------------------- training runs
@dataclass
class RunInfo:
    """One training run's logs: ``metrics.jsonl`` rows, ``run.json`` and the ``config.yaml`` text."""

    name: str
    path: Path
    metrics: list[dict]
    run: dict
    config_text: str | None

    @property
    def algo(self) -> str:
        return str(self.run.get("algo") or self.name)

    def wall_time(self) -> float | None:
        """``run.json`` ``wall_time_s``; else the sum of ``time/total`` over iterations; else ``None``."""
        value = self.run.get("wall_time_s")
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
        return self.metric_sum("time/total")

    def metric_sum(self, key: str) -> float | None:
        values = [m[key] for m in self.metrics if isinstance(m.get(key), int | float)]
        return float(sum(values)) if values else None

    def iterations(self) -> int | None:
        value = self.run.get("iterations")
        if isinstance(value, int):
            return value
        return len(self.metrics) or None


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` log (one JSON object per iteration); errors name file and line.
    A truncated last line (a run killed while writing) is skipped."""
    path = Path(path)
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if lineno == len(lines):
                break
            raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object")
        rows.append(obj)
    return rows


def read_run(path: str | Path, name: str | None = None) -> RunInfo:
    """Read a run directory (``metrics.jsonl``, ``run.json``, ``config.yaml``; each optional)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist")
    metrics = read_metrics(path / "metrics.jsonl") if (path / "metrics.jsonl").exists() else []
    run = read_json_if_exists(path / "run.json") or {}
    if not isinstance(run, dict):
        raise ValueError(f"{path / 'run.json'}: expected a JSON object")
    cfg = path / "config.yaml"
    config_text = cfg.read_text(encoding="utf-8") if cfg.exists() else None
    return RunInfo(name or path.name, path, metrics, run, config_text)


def training_time_table(runs: Sequence[RunInfo]) -> Table:
    """Training time per method (paper Table 3): wall time, iterations, seconds per iteration and the
    split into generation / scoring / training summed from ``metrics.jsonl``."""
    rows = []
    for r in runs:
        wall, iters = r.wall_time(), r.iterations()
        per_iter = wall / iters if wall is not None and iters else None
        rows.append([r.name, r.algo, fmt(wall, 1), fmt(iters), fmt(per_iter, 2),
                     fmt(r.metric_sum("time/generation"), 1), fmt(r.metric_sum("time/scoring"), 1),
                     fmt(r.metric_sum("time/training"), 1)])
    notes = ["Time (s) from run.json wall_time_s (else the sum of time/total); the split sums the "
             "per-iteration metrics."]
    return Table("Training time per method (Table 3)", ["run", "algo", "time (s)", "iterations", "s / iter",
                                                         "generation (s)", "scoring (s)", "training (s)"],
                 rows, notes)


def final_metrics(run: RunInfo, keys_prefix: str = "reward/raw/") -> dict[str, float]:
    """Mean of the last up-to-5 logged values of each ``reward/raw/<objective>`` metric and ``kl``."""
    out = {}
    keys = list(dict.fromkeys(k for m in run.metrics for k in m
                              if (k.startswith(keys_prefix) and k.count("/") == 2) or k == "kl"))
    for k in keys:
        values = [m[k] for m in run.metrics if isinstance(m.get(k), int | float) and math.isfinite(m[k])]
        if values:
            tail = values[-5:]
            out[k] = sum(tail) / len(tail)
    return out


def config_yaml(obj) -> str:
    """YAML text of a config mapping (for the report)."""
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)
