"""Tables of the evaluation section: reward-model accuracy (paper Table 2), training time per method
(Table 3), win rates with paired tests (Figure 2a as numbers) and a one-sentence verdict, mean/median
rewards and KL per model; plus the readers of the training logs they come from. Each table renders as
plain text, Markdown and (escaped) HTML.
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from molma.eval.responses import read_json_if_exists
from molma.eval.stats import sign_test, wilson_interval


@dataclass
class Table:
    """A titled table of already-formatted cells; ``notes`` are printed under it. ``subheaders[i]`` is a
    header row repeated before ``rows[i]`` (a table in blocks, e.g. one block per objective)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    subheaders: dict[int, list[str]] = field(default_factory=dict)

    def to_text(self, width: int = 100) -> str:
        """Aligned columns; notes wrapped at ``width`` characters."""
        widths = [max(len(str(c)) for c in col)
                  for col in zip(self.columns, *self.subheaders.values(), *self.rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [self.title, line(self.columns), line(["-" * w for w in widths])]
        for i, r in enumerate(self.rows):
            if i in self.subheaders and i > 0:
                out += ["", line(self.subheaders[i]), line(["-" * w for w in widths])]
            out.append(line(r))
        out += [wrapped for n in self.notes for wrapped in textwrap.wrap(n, width) or [""]]
        return "\n".join(out)

    def to_markdown(self) -> str:
        esc = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        out = [f"**{esc(self.title)}**", "", "| " + " | ".join(esc(c) for c in self.columns) + " |",
               "|" + "|".join("---" for _ in self.columns) + "|"]
        for i, r in enumerate(self.rows):
            if i in self.subheaders and i > 0:
                out.append("| " + " | ".join(f"**{esc(c)}**" for c in self.subheaders[i]) + " |")
            out.append("| " + " | ".join(esc(c) for c in r) + " |")
        if self.notes:
            out += [""] + [f"_{esc(n)}_" for n in self.notes]
        return "\n".join(out)

    def to_html(self) -> str:
        e = html.escape
        head = "".join(f"<th>{e(str(c))}</th>" for c in self.columns)
        body = []
        for i, r in enumerate(self.rows):
            if i in self.subheaders and i > 0:
                body.append("<tr>" + "".join(f"<th>{e(str(c))}</th>" for c in self.subheaders[i]) + "</tr>")
            body.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>")
        notes = "".join(f'<p class="note">{e(n)}</p>' for n in self.notes)
        return (f"<table><caption>{e(self.title)}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>{notes}")


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
def comparison_stats(r: Mapping) -> dict:
    """A win-rate dict with the paired statistics filled in from its counts where they are missing
    (win-rate dicts from older summaries or sweep files): ``n_decisive``, ``win_excl_ties`` with its
    Wilson interval and ``sign_p``. ``mean_diff`` and its interval stay ``None`` when absent (they need
    the scores)."""
    out = dict(r)
    n_win, n_loss = out.get("n_win"), out.get("n_loss")
    if n_win is None or n_loss is None:
        return out
    n_dec = int(n_win) + int(n_loss)
    out.setdefault("n_decisive", n_dec)
    if out.get("win_excl_ties") is None and n_dec:
        out["win_excl_ties"] = n_win / n_dec
    if out.get("excl_ci_low") is None or out.get("excl_ci_high") is None:
        out["excl_ci_low"], out["excl_ci_high"] = wilson_interval(int(n_win), n_dec)
    if out.get("sign_p") is None:
        out["sign_p"] = sign_test(int(n_win), int(n_loss))
    for key in ("win_excl_ties", "mean_diff", "diff_ci_low", "diff_ci_high", "n_identical_ties"):
        out.setdefault(key, None)
    return out


def fmt_p(p: float | None) -> str:
    """A p-value for a table cell: three decimals, ``<0.001`` below that."""
    if p is None or not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _pct_ci(share, low, high) -> str:
    return "-" if share is None else f"{pct(share)} [{pct(low)}, {pct(high)}]"


def _diff_decimals(values: Sequence[float | None]) -> int:
    """Decimals that show the largest magnitude with two significant digits (0 to 4)."""
    top = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0)
    if top == 0:
        return 2
    return min(4, max(0, 1 - math.floor(math.log10(top))))


def _diff_ci(r: Mapping, decimals: int) -> str:
    mean, low, high = r.get("mean_diff"), r.get("diff_ci_low"), r.get("diff_ci_high")
    if mean is None:
        return "-"
    if low is None or high is None:
        return f"{mean:+.{decimals}f}"
    return f"{mean:+.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"


def win_rate_table(rates: Mapping[str, Mapping[str, Mapping]], versus: str,
                   objectives: Sequence[str] | None = None, compact: bool = False) -> Table:
    """Win rates of ``versus`` against each other model (paper Figure 2a as a table) with the paired
    tests: one block per objective, one row per opponent. Columns: win % of all prompts with its 95 %
    Wilson interval, tie %, loss %, win % among the non-tied prompts with its Wilson interval, mean
    reward difference (``versus`` minus opponent) with its paired bootstrap 95 % interval, and the
    two-sided sign-test p-value on the non-tied prompts. ``compact`` puts the win share and its interval
    in one cell (the text layout, :func:`format_win_rates`: fits a 100-column terminal for model names up
    to about 12 characters); otherwise they are two columns."""
    objectives = list(objectives or dict.fromkeys(o for r in rates.values() for o in r))
    rows: list[list[str]] = []
    subheaders: dict[int, list[str]] = {}
    win_head = lambda o: [f"{o} win % [95% CI]"] if compact else [f"{o} win %", "95% CI"]  # noqa: E731
    header = lambda o: ["vs", *win_head(o), "tie %", "loss %", "no-tie win % [CI]",  # noqa: E731
                        "mean diff [95% CI]", "sign p"]
    win_cells = lambda r: ([_pct_ci(r["win"], r["ci_low"], r["ci_high"])] if compact  # noqa: E731
                           else [pct(r["win"]), f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]"])
    identical: dict[str, dict[str, int]] = {}
    for o in objectives:
        subheaders[len(rows)] = header(o)
        stats = {m: comparison_stats(per[o]) for m, per in rates.items() if per.get(o) is not None}
        decimals = _diff_decimals([v for r in stats.values()
                                   for v in (r["mean_diff"], r["diff_ci_low"], r["diff_ci_high"])])
        for other in rates:
            r = stats.get(other)
            if r is None:
                rows.append([other, *["-"] * (len(header(o)) - 1)])
                continue
            rows.append([other, *win_cells(r), pct(r["tie"]), pct(r["loss"]),
                         _pct_ci(r["win_excl_ties"], r["excl_ci_low"], r["excl_ci_high"]),
                         _diff_ci(r, decimals), fmt_p(r["sign_p"])])
            if r["n_identical_ties"] is not None:
                identical.setdefault(other, {})[o] = int(r["n_identical_ties"])
    columns = subheaders.pop(0) if rows else header(objectives[0] if objectives else "")
    n = next((r["n"] for per in rates.values() for r in per.values()), 0)
    notes = [f"{n} prompts; win = {versus}'s response scores higher; tie = |difference| <= tolerance; "
             "[95% CI] after a win share = Wilson score interval.",
             "no-tie win % = wins / (wins + losses), the share to compare with 50 %; sign p = exact "
             "two-sided sign test on the non-tied prompts (H0: win and loss equally likely); mean diff = "
             f"mean of ({versus} - opponent) reward with a paired bootstrap 95% interval over prompts."]
    same = []
    for m, per_objective in identical.items():
        counts = set(per_objective.values())
        if counts == {0}:
            continue
        same.append(f"{m} {counts.pop()}" if len(counts) == 1 else
                    f"{m} " + ", ".join(f"{k} ({o})" for o, k in per_objective.items()))
    if same:
        notes.append(f"Ties where both responses are the same text (of {n} prompts): " + ", ".join(same) + ".")
    elif identical:
        notes.append("No tie comes from identical response text.")
    return Table(f"Win rates of {versus} (model-based evaluation, Figure 2a)", columns, rows, notes, subheaders)


def format_win_rates(rates: Mapping[str, Mapping[str, Mapping]], versus: str,
                     objectives: Sequence[str] | None = None) -> str:
    """The win-rate table as plain text (what the demo prints)."""
    if not rates:
        return f"Win rates of {versus}: no other model evaluated"
    return win_rate_table(rates, versus, objectives, compact=True).to_text()


def _join(items: Sequence[str], word: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c`` (``word`` may carry a comma: ``", and"``)."""
    items = list(items)
    if len(items) == 1:
        return items[0]
    sep = word if word.startswith(",") else f" {word}"
    return ", ".join(items[:-1]) + f"{sep} " + items[-1]


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict_sentence(result_or_rates, versus: str | None = None, objectives: Sequence[str] | None = None,
                     alpha: float = 0.05, correction: str = "holm") -> str:
    """One plain sentence on what the model-based evaluation showed for ``versus``.

    ``result_or_rates`` is an :class:`~molma.eval.runner.EvalResult` or its ``win_rates`` mapping
    (``{opponent: {objective: win-rate dict}}``). Each opponent and objective is a two-sided sign test on the
    non-tied prompts; with ``correction="holm"`` (default) the p-values of all of them are adjusted as one family
    (:func:`molma.eval.stats.holm_adjusted`: a table of 8 comparisons gives about 0.34 chances in 1 of a raw
    p < 0.05 when no model differs). A difference counts only when its (adjusted) p < ``alpha``: then
    ``versus`` beat the opponent (more wins than losses) or lost to it; everything else is "no significant
    difference" - never a win. Comparisons with a raw p < ``alpha`` that the correction does not keep are named
    as such. ``correction="none"``: raw p-values. Example: "molma beat ref on safe (100 % of non-tied prompts,
    p = 0.002, Holm p = 0.012); and showed no significant difference from so-safe or gapo at this scale
    (p < 0.05 before Holm's correction only: ref on help, 90 %, p = 0.021; so-safe on safe, won 10 %,
    p = 0.021) [12 prompts; two-sided sign test on the non-tied prompts, Holm's correction over 5 comparisons,
    alpha = 0.05]."
    """
    if not 0 < alpha < 1:
        raise ValueError(f"verdict_sentence: alpha must be in (0, 1), got {alpha}")
    if correction not in ("holm", "none"):
        raise ValueError(f"verdict_sentence: correction must be 'holm' or 'none', got {correction!r}")
    rates = getattr(result_or_rates, "win_rates", result_or_rates)
    if versus is None:
        versus = getattr(result_or_rates, "versus", None) or "the model"
    if objectives is None:
        objectives = getattr(result_or_rates, "objectives", None)
    objectives = list(objectives or dict.fromkeys(o for r in rates.values() for o in r))
    if not rates:
        return f"{versus}: no other model evaluated, so nothing to compare."
    tests, sizes = [], set()  # (opponent, objective, p, n_win, n_loss, share) of every comparison with a p-value
    for other, per in rates.items():
        for o in objectives:
            if per.get(o) is None:
                continue
            r = comparison_stats(per[o])
            sizes.add(int(r.get("n", 0)))
            p, n_win, n_loss = r.get("sign_p"), r.get("n_win"), r.get("n_loss")
            if p is not None and n_win is not None and n_loss is not None:
                tests.append((other, o, p, n_win, n_loss, r.get("win_excl_ties")))
    if correction == "holm" and tests:
        from molma.eval.stats import holm_adjusted

        adjusted = [float(a) for a in holm_adjusted([t[2] for t in tests])]
    else:
        adjusted = [t[2] for t in tests]
    corrected = correction == "holm" and len(tests) > 1
    outcome: dict[str, tuple[list, list]] = {other: ([], []) for other in rates}
    nominal = []
    for (other, o, p, n_win, n_loss, share), p_adj in zip(tests, adjusted):
        if n_win == n_loss:
            continue
        share_text = f"{100 * share:.0f} %" if share is not None else "?"
        if p_adj < alpha:
            p_text = _p_text(p) + (f", Holm {_p_text(p_adj)}" if corrected else "")
            outcome[other][0 if n_win > n_loss else 1].append((o, share_text, p_text))
        elif p < alpha:  # significant on its own, not once the family is accounted for
            nominal.append(f"{other} on {o}, {'' if n_win > n_loss else 'won '}{share_text}, {_p_text(p)}")
    beaten = [(other, won) for other, (won, _) in outcome.items() if won]
    lost_to = [(other, lost) for other, (_, lost) in outcome.items() if lost]
    no_difference = [other for other, (won, lost) in outcome.items() if not won and not lost]

    def listing(groups, prefix: str) -> str:
        items, first = [], True
        for other, hits in groups:
            described = []
            for o, share, p_text in hits:
                what = f"{prefix}{share} of non-tied prompts" if first else f"{prefix}{share}"
                described.append(f"{o} ({what}, {p_text})")
                first = False
            items.append(f"{other} on {_join(described)}")
        oxford = len(items) > 2 or any(len(h) > 1 for _, h in groups)  # "a on x and y, and b on z"
        return _join(items, ", and" if oxford else "and")

    clauses = []
    if beaten:
        clauses.append("beat " + listing(beaten, ""))
    if lost_to:
        clauses.append("lost to " + listing(lost_to, "won "))
    if no_difference:
        clauses.append(f"showed no significant difference from {_join(no_difference, 'or')} at this scale")
    if nominal:
        clauses[-1] += f" (p < {alpha:g} before Holm's correction only: " + "; ".join(nominal) + ")"
    if len(clauses) > 1:
        clauses[-1] = "and " + clauses[-1]
    n = "/".join(str(k) for k in sorted(sizes)) if sizes else "0"
    family = f", Holm's correction over {len(tests)} comparisons" if corrected else ""
    return (f"{versus} " + "; ".join(clauses)
            + f" [{n} prompts; two-sided sign test on the non-tied prompts{family}, alpha = {alpha:g}].")


KL_NOTE = ("KL to ref: estimate of KL(model || reference) in nats per response; the evaluation's own estimate "
           "(molma eval --kl-reference) is k3: per token exp(d) - 1 - d with d = log p_ref - log p_model, "
           "summed over the response and averaged over responses, never negative; '-' = not measured.")


def reward_table(summary: Sequence[Mapping], objectives: Sequence[str], kl_note: str | None = None) -> Table:
    """Mean / median reward per objective and KL to the reference, one row per model (paper Figure 3
    in numbers). ``kl_note`` replaces the default note on the KL column (:data:`KL_NOTE`)."""
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
    notes = [kl_note or KL_NOTE]
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


def _pairs(rec: Mapping) -> int | None:
    n = rec.get("n")
    if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n) or n <= 0 or n != int(n):
        return None
    return int(n)


def rm_accuracy_interval(rec: Mapping, z: float = 1.96) -> tuple[float, float] | None:
    """95 % Wilson interval of a reward-model accuracy record with its number of pairs ``n`` (the count
    of correct pairs is ``correct`` when given, else ``round(accuracy * n)``); ``None`` without ``n``."""
    n = _pairs(rec)
    if n is None:
        return None
    correct = rec.get("correct")
    k = int(correct) if isinstance(correct, int) and not isinstance(correct, bool) and 0 <= correct <= n \
        else round(float(rec["accuracy"]) * n)
    return wilson_interval(k, n, z)


def rm_accuracy_table(records: Sequence[Mapping]) -> Table:
    """Reward-model accuracy (paper Table 2): rows = reward model, columns = benchmark, plus the average
    over the benchmarks each model was evaluated on; ``-`` where a model was not evaluated. In percent.
    Under the table, one note per reward model gives each accuracy's number of pairs and 95 % Wilson
    interval (:func:`rm_accuracy_interval`) when its record has ``n``. A repeated (model, benchmark)
    keeps the last record."""
    models = list(dict.fromkeys(r["model"] for r in records))
    benches = list(dict.fromkeys(r["benchmark"] for r in records))
    by_cell = {(r["model"], r["benchmark"]): r for r in records}
    rows = []
    for m in models:
        values = [float(by_cell[(m, b)]["accuracy"]) if (m, b) in by_cell else None for b in benches]
        have = [v for v in values if v is not None]
        rows.append([m, *[pct(v) for v in values], pct(sum(have) / len(have))])
    notes = ["Accuracy (%) = share of preference pairs where the reward model scores the chosen response "
             "higher; Avg over the benchmarks each model was evaluated on. Pairs and 95% Wilson interval "
             "of each accuracy:"]
    for m in models:
        cells = []
        for b in benches:
            rec = by_cell.get((m, b))
            if rec is None:
                continue
            ci = rm_accuracy_interval(rec)
            cells.append(f"{b} {pct(rec['accuracy'])} [{pct(ci[0])}, {pct(ci[1])}] of {_pairs(rec)} pairs"
                         if ci is not None else f"{b} {pct(rec['accuracy'])} (number of pairs not given)")
        notes.append(f"{m}: " + "; ".join(cells) + ".")
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
