"""The evaluation report: one self-contained HTML file (figures embedded as base64 PNG, no external
resources, all model/prompt text escaped, well-formed XHTML-style markup) and a Markdown twin, built
from a run directory (layout in docs/eval.md)::

    RUN_DIR/
      config.yaml                 optional: the experiment / demo config, shown verbatim
      eval/responses.jsonl        molma eval --out RUN_DIR/eval   (win rates, Figure 2a / 3, rewards)
      eval/summary.json           optional, written by molma eval (versus model, KL, timings, settings)
      runs/<name>/metrics.jsonl   training logs per method (curves, Table 3), with run.json, config.yaml
      rm/*.json                   reward-model accuracy records (Table 2)
      sweep/*.json                importance-weight sweeps (Figure 4)
      pareto/*.json               preference sweeps (Pareto fronts, hypervolume)
      report/                     output: report.html, report.md, figures/*.png|svg

Every part is optional; a missing part is reported as "not run" with the path that was looked for.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from molma.atomic import write_text_atomic
from molma.environment import environment_info
from molma.eval import plots
from molma.eval.tables import (
    KL_NOTE,
    Table,
    final_metrics,
    fmt,
    read_rm_records,
    read_run,
    reward_table,
    rm_accuracy_table,
    training_time_table,
    verdict_sentence,
    win_rate_table,
)

log = logging.getLogger(__name__)

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
caption { font-weight: bold; text-align: left; padding-bottom: 0.3em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.missing { color: #a33; font-style: italic; }
.note { font-size: 0.85em; color: #555; margin: 0.2em 0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; white-space: pre-wrap; }
.resp td { text-align: left; vertical-align: top; white-space: pre-wrap; }
"""


@dataclass
class _Doc:
    """Accumulates the report as HTML and Markdown side by side."""

    figures_dir: Path
    html_parts: list[str] = field(default_factory=list)
    md_parts: list[str] = field(default_factory=list)
    contents: list[tuple[str, str]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def section(self, title: str) -> None:
        anchor = f"s{len(self.contents) + 1}"
        self.contents.append((anchor, title))
        self.html_parts.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')
        self.md_parts.append(f"## {title}")

    def text(self, text: str) -> None:
        self.html_parts.append(f"<p>{html.escape(text)}</p>")
        self.md_parts.append(text)

    def not_run(self, what: str, looked_for: str) -> None:
        msg = f"Not run: {what} (no {looked_for} found)."
        self.missing.append(what)
        self.html_parts.append(f'<p class="missing">{html.escape(msg)}</p>')
        self.md_parts.append(f"_{msg}_")

    def table(self, table: Table) -> None:
        self.tables.append(table.title)
        self.html_parts.append(table.to_html())
        self.md_parts.append(table.to_markdown())

    def pre(self, summary: str, text: str) -> None:
        self.html_parts.append(f"<details><summary>{html.escape(summary)}</summary>"
                               f"<pre>{html.escape(text)}</pre></details>")
        self.md_parts.append(f"<details><summary>{html.escape(summary)}</summary>\n\n```\n{text}\n```\n"
                             "</details>")

    def figure(self, paths: list[Path], caption: str) -> None:
        png = paths[0]
        self.figures.append(png)
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.html_parts.append(f'<figure><img alt="{html.escape(caption, quote=True)}" '
                               f'src="data:image/png;base64,{data}"/>'
                               f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        rel_png = os.path.relpath(png, self.figures_dir.parent)
        rel_svg = os.path.relpath(paths[1], self.figures_dir.parent)
        self.md_parts.append(f"![{caption}]({rel_png})\n\n_{caption}_ (SVG: `{rel_svg}`)")

    def raw_html(self, text: str, markdown: str) -> None:
        self.html_parts.append(text)
        self.md_parts.append(markdown)


@dataclass
class Report:
    """Paths of a built report and what it contains (figure files, table titles, parts not run)."""

    html: Path
    markdown: Path
    figures: list[Path]
    tables: list[str]
    missing: list[str]


def _json_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def build_report(run_dir: str | Path, out_dir: str | Path | None = None,
                 title: str = "MOLMA evaluation report", versus: str | None = None,
                 hv_reference: dict[str, float] | None = None, reference_model: str | None = None,
                 n_examples: int = 3) -> Report:
    """Build ``report.html`` and ``report.md`` (default in ``RUN_DIR/report``) from a run directory.

    ``versus`` overrides the model whose win rates are shown (default: from ``eval/summary.json``, else
    ``molma``, else the first model). The hypervolume reference point is ``hv_reference`` if given, else
    the mean rewards of ``reference_model`` (default: a model named ``ref``, or the KL reference of the
    evaluation) when it was evaluated, else the component-wise minimum of all sweep points.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    doc = _Doc(figs)
    src = _sources(run_dir, figs, versus, reference_model)
    _setup_section(doc, src)
    _reward_model_section(doc, src)
    _win_rate_section(doc, src)
    _reward_section(doc, src, n_examples)
    _weight_sweep_section(doc, src)
    _pareto_section(doc, src, hv_reference)
    _training_section(doc, src)
    _timing_section(doc, src)
    doc.text(f"Report built in {time.perf_counter() - t_start:.1f} s.")

    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header_note = f"Built {generated} from {run_dir}."
    missing_note = ("Parts not run: " + ", ".join(doc.missing) + ".") if doc.missing else "All parts present."
    toc = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in doc.contents)
    page = (
        '<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml" lang="en">\n'
        '<head><meta charset="utf-8"/>'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1><p class=\"note\">{html.escape(header_note)}</p>"
        f"<p class=\"note\">{html.escape(missing_note)}</p><ol>{toc}</ol>\n"
        + "\n".join(doc.html_parts) + "\n</body>\n</html>\n"
    )
    md = "\n\n".join([f"# {title}", f"_{header_note}_", f"_{missing_note}_", *doc.md_parts]) + "\n"
    html_path, md_path = out / "report.html", out / "report.md"
    write_text_atomic(html_path, page)
    write_text_atomic(md_path, md)
    return Report(html_path, md_path, doc.figures, doc.tables, doc.missing)


@dataclass
class _Sources:
    """What the report's sections read from a run directory."""

    run_dir: Path
    eval_dir: Path
    runs_dir: Path
    figs: Path
    result: Any  # molma.eval.runner.EvalResult or None
    runs: list
    ref_model: str | None


def _sources(run_dir: Path, figs: Path, versus: str | None, reference_model: str | None) -> _Sources:
    result = None
    eval_dir = run_dir / "eval"
    if (eval_dir / "responses.jsonl").exists():
        from molma.eval.runner import load_result

        result = load_result(eval_dir, versus=versus)
    runs = []
    runs_dir = run_dir / "runs"
    if runs_dir.is_dir():
        runs = [read_run(p) for p in sorted(runs_dir.iterdir()) if p.is_dir()]
    ref_model = reference_model
    if ref_model is None and result is not None:
        ref_model = "ref" if "ref" in result.models else result.config.get("kl_reference")
    if result is not None and ref_model not in result.models:
        ref_model = None
    return _Sources(run_dir, eval_dir, runs_dir, figs, result, runs, ref_model)


def _setup_section(doc: _Doc, src: _Sources) -> None:
    """1. Setup: configuration, versions, hardware."""
    run_dir, eval_dir, result, runs = src.run_dir, src.eval_dir, src.result, src.runs
    env = environment_info()
    doc.section("Setup: configuration, versions, hardware")
    doc.table(Table("Environment (report build)", ["item", "value"],
                    [[k, ", ".join(v) if isinstance(v, list) else str(v)] for k, v in env.items()]))
    summary_env = _read_env(eval_dir) if result is not None else None
    if summary_env:
        doc.table(Table("Environment (evaluation run)", ["item", "value"],
                        [[k, ", ".join(v) if isinstance(v, list) else str(v)]
                         for k, v in summary_env.items()]))
    if (run_dir / "config.yaml").exists():
        doc.pre("Experiment config (config.yaml)", (run_dir / "config.yaml").read_text(encoding="utf-8"))
    if result is not None and result.config:
        from molma.eval.tables import config_yaml

        doc.pre("Evaluation settings (eval/summary.json)", config_yaml(result.config))
    for r in runs:
        if r.config_text is not None:
            doc.pre(f"Training config of run {r.name} (runs/{r.name}/config.yaml)", r.config_text)


def _reward_model_section(doc: _Doc, src: _Sources) -> None:
    """2. Reward-model accuracy (Table 2)."""
    run_dir = src.run_dir
    doc.section("Reward-model accuracy (Table 2)")
    rm_files = _json_files(run_dir / "rm")
    if rm_files:
        doc.table(rm_accuracy_table(read_rm_records(rm_files)))
    else:
        doc.not_run("reward-model evaluation", f"{run_dir / 'rm'}/*.json")


def _win_rate_section(doc: _Doc, src: _Sources) -> None:
    """3. Model-based evaluation: win rates (Figure 2a)."""
    eval_dir, figs, result = src.eval_dir, src.figs, src.result
    doc.section("Model-based evaluation: win rates (Figure 2a)")
    if result is None:
        doc.not_run("model-based evaluation", str(eval_dir / "responses.jsonl"))
    elif not result.prompt_ids:
        doc.text("The saved evaluation holds no prompt answered by every model.")
    else:
        doc.text(f"{len(result.prompt_ids)} test prompts, models: {', '.join(result.models)}; objectives: "
                 f"{', '.join(result.objectives)}. Every model answered the same prompts with the same "
                 "sampling seed; each reward model scored every response.")
        if result.win_rates:
            doc.text("In short: " + verdict_sentence(result, result.versus, result.objectives))
            doc.table(win_rate_table(result.win_rates, result.versus, result.objectives))
            doc.text("How to read it: win, tie and loss are shares of all prompts. Whether one model is "
                     "preferred is judged on the non-tied prompts: their win share (with its Wilson 95 % "
                     "interval) against 50 %, and the exact two-sided sign test (p). The mean reward "
                     "difference has a paired bootstrap 95 % interval (prompts resampled). Ties between "
                     "identical responses say the two models often answer the same text, not that they "
                     "are equally good.")
            doc.figure(plots.plot_win_rates(result.win_rates, result.versus, figs / "win_rates",
                                            result.objectives),
                       f"Outcomes of {result.versus} against each model per objective: win (bottom), tie "
                       "(hatched), loss (grey, top) as shares of all prompts; diamonds: win share among "
                       "non-tied prompts with its 95% Wilson interval, to compare with the dashed 50 % line "
                       "(Figure 2a).")
        else:
            doc.text("Only one model was evaluated: no win rates.")


def _reward_section(doc: _Doc, src: _Sources, n_examples: int) -> None:
    """4. Reward distributions and KL to the reference (Figure 3), with example responses."""
    eval_dir, figs, result, runs, ref_model = src.eval_dir, src.figs, src.result, src.runs, src.ref_model
    doc.section("Reward distributions and KL to the reference (Figure 3)")
    if result is None or not result.prompt_ids:
        doc.not_run("reward distributions", str(eval_dir / "responses.jsonl"))
    else:
        kl_source = "evaluation (teacher-forced log-probs)" if result.kl else None
        kl_note = KL_NOTE
        summary = result.summary
        if not result.kl and runs:
            by_name = {r.name: final_metrics(r).get("kl") for r in runs}
            if any(by_name.get(m) is not None for m in result.models):
                from molma.eval.stats import summary_table

                summary = summary_table(result.scores, {m: v for m, v in by_name.items() if v is not None})
                kl_source = "training metrics (mean of the last 5 logged kl values of runs/<model>)"
                kl_note = ("KL to ref: the training run's own KL estimate (mean of its last 5 logged kl "
                           "values, in the trainer's units), not measured on the test prompts; '-' = no run.")
        doc.table(reward_table(summary, result.objectives, kl_note))
        doc.text(f"KL source: {kl_source or 'not measured'}.")
        if result.kl_details:
            doc.table(_kl_table(result))
        doc.figure(plots.plot_reward_distributions(result.scores, figs / "reward_distributions",
                                                   result.objectives, reference=ref_model),
                   "Rewards of each model's responses to the test prompts: hexbin counts, KDE contours, "
                   "mean (star)" + (f", {ref_model}'s mean dashed" if ref_model else "") + " (Figure 3).")
        _examples(doc, result, n_examples)


def _weight_sweep_section(doc: _Doc, src: _Sources) -> None:
    """5. Importance-weight sweep (Figure 4)."""
    run_dir, figs = src.run_dir, src.figs
    doc.section("Importance-weight sweep (Figure 4)")
    sweep_files = _json_files(run_dir / "sweep")
    if not sweep_files:
        doc.not_run("importance-weight sweep", f"{run_dir / 'sweep'}/*.json")
    from molma.eval.sweep import read_sweep

    for path in sweep_files:
        sweep = read_sweep(path)
        doc.table(_sweep_table(sweep, path.name))
        doc.figure(plots.plot_weight_sweep(sweep, figs / f"sweep_{path.stem}"),
                   f"{sweep['method']} trained with a range of importance weights versus "
                   f"{(sweep.get('baseline') or {}).get('label', sweep.get('versus', 'the baseline'))} "
                   f"(Figure 4; {path.name}).")


def _pareto_section(doc: _Doc, src: _Sources, hv_reference: dict[str, float] | None) -> None:
    """6. Pareto fronts of preference sweeps and hypervolume."""
    run_dir, figs, result, ref_model = src.run_dir, src.figs, src.result, src.ref_model
    doc.section("Pareto fronts of preference sweeps and hypervolume")
    pareto_files = _json_files(run_dir / "pareto")
    if not pareto_files:
        doc.not_run("preference sweep", f"{run_dir / 'pareto'}/*.json")
    else:
        from molma.eval.sweep import analyse_fronts, read_sweep

        sweeps = [read_sweep(p) for p in pareto_files]
        objectives = sweeps[0]["objectives"]
        reference, source = hv_reference, "given reference point"
        if reference is None and result is not None and ref_model is not None and \
                all(o in result.objectives for o in objectives):
            reference = {o: float(np.mean(result.scores[ref_model][o])) for o in objectives}
            source = f"mean rewards of the reference model {ref_model!r} on the test prompts"
        fronts, ref_point, auto_source = analyse_fronts(sweeps, reference, objectives)
        source = source if reference is not None else auto_source
        doc.text("Hypervolume reference point: (" + ", ".join(f"{o}={v:.4g}" for o, v in
                                                             zip(objectives, ref_point)) + f"): {source}.")
        hv_cis = _hypervolume_cis(fronts, result, ref_model) if reference is not None and hv_reference is None \
            else {}
        doc.table(_pareto_table(fronts, hv_cis))
        doc.figure(plots.plot_pareto(fronts, figs / "pareto", ref_point),
                   "Pareto fronts: non-dominated points filled and joined, dominated points hollow; "
                   "hypervolume in the legend.")


def _training_section(doc: _Doc, src: _Sources) -> None:
    """7. Training curves and training time (Table 3)."""
    runs_dir, figs, runs = src.runs_dir, src.figs, src.runs
    doc.section("Training curves and training time (Table 3)")
    if not runs:
        doc.not_run("training runs", f"{runs_dir}/<name>/metrics.jsonl")
    else:
        doc.table(training_time_table(runs))
        with_metrics = {r.name: r.metrics for r in runs if r.metrics}
        if with_metrics:
            doc.figure(plots.plot_training_curves(with_metrics, figs / "training_curves"),
                       "Raw reward per objective and KL per iteration, one line per run (moving average "
                       "solid, raw values faint).")
        else:
            doc.not_run("training curves", "metrics.jsonl in any run")


def _timing_section(doc: _Doc, src: _Sources) -> None:
    """8. Evaluation timings."""
    eval_dir, result = src.eval_dir, src.result
    doc.section("Timings")
    rows = []
    if result is not None:
        for m in result.models:
            t = result.timings.get(m, {})
            rows.append([m, fmt(t.get("load_s"), 1), fmt(t.get("generation_s"), 1),
                         fmt(t.get("scoring_s"), 1), fmt(t.get("logprob_s"), 1)])
    if rows:
        doc.table(Table("Evaluation time per model (s)", ["model", "load", "generation", "scoring",
                                                          "log-probs"], rows,
                        ["'-' = reused from an earlier run or not measured."]))
    else:
        doc.not_run("evaluation timings", str(eval_dir / "summary.json"))


def _read_env(eval_dir: Path) -> dict | None:
    from molma.eval.responses import read_json_if_exists

    data = read_json_if_exists(eval_dir / "summary.json") or {}
    env = data.get("environment")
    return env if isinstance(env, dict) else None


def _examples(doc: _Doc, result, n: int) -> None:
    """A few prompts with every model's response and scores (all text escaped)."""
    if n <= 0:
        return
    by_key = {(r.model, r.prompt_id): r for r in result.records}
    html_rows, md_rows = [], []
    for pid in result.prompt_ids[:n]:
        first = by_key[(result.models[0], pid)]
        html_rows.append(f'<tr><th colspan="3">{html.escape(pid)}: {html.escape(first.prompt)}</th></tr>')
        md_rows.append(f"**{pid}**: {_md_quote(first.prompt)}\n")
        for m in result.models:
            rec = by_key[(m, pid)]
            scores = ", ".join(f"{o}={rec.scores[o]:.3f}" for o in result.objectives)
            html_rows.append(f"<tr><td>{html.escape(m)}</td><td>{html.escape(rec.response)}</td>"
                             f"<td>{html.escape(scores)}</td></tr>")
            md_rows.append(f"- {m} ({scores}): {_md_quote(rec.response)}")
        md_rows.append("")
    doc.raw_html('<details><summary>Example responses (first prompts)</summary><table class="resp">'
                 "<thead><tr><th>model</th><th>response</th><th>scores</th></tr></thead><tbody>"
                 + "".join(html_rows) + "</tbody></table></details>",
                 "<details><summary>Example responses (first prompts)</summary>\n\n" + "\n".join(md_rows)
                 + "\n</details>")


def _md_quote(text: str) -> str:
    """Inline-safe Markdown: HTML-escaped, one line, backticks neutralised."""
    return html.escape(" ".join(text.split())).replace("`", "&#96;").replace("|", "&#124;") or "(empty)"


def _sweep_table(sweep: dict, name: str) -> Table:
    objectives = sweep["objectives"]
    versus = sweep.get("versus")
    columns = ["point", "weights", *[f"{o} mean" for o in objectives]]
    if versus:
        columns += [f"{versus} win % ({o})" for o in objectives]
    rows = []
    for p in sweep["points"]:
        row = [str(p.get("label", "")), ", ".join(f"{w:g}" for w in p.get("weights") or []) or "-"]
        row += [fmt((p.get("means") or {}).get(o)) for o in objectives]
        if versus:
            for o in objectives:
                r = (p.get("win_rates") or {}).get(o)
                row.append("-" if r is None else f"{100 * (r['win'] if isinstance(r, dict) else r):.1f}")
        rows.append(row)
    base = sweep.get("baseline")
    if base and base.get("means"):
        rows.append([f"{base.get('label', 'baseline')} (baseline)",
                     ", ".join(f"{w:g}" for w in base.get("weights") or []) or "-",
                     *[fmt(base["means"].get(o)) for o in objectives],
                     *(["-"] * len(objectives) if versus else [])])
    return Table(f"{sweep['method']} importance-weight sweep ({name})", columns, rows)


def _kl_table(result) -> Table:
    """How the evaluation's KL to the reference was estimated, per model."""
    reference = result.config.get("kl_reference") or "the reference"
    rows = []
    for m in result.models:
        d = result.kl_details.get(m)
        if d is None:
            continue
        rows.append([m, fmt(result.kl.get(m), 4), fmt(d.get("kl_se"), 4), fmt(d.get("mean_log_ratio"), 4),
                     fmt(d.get("n_responses")), fmt(d.get("n_tokens")), str(d.get("estimator", "-"))])
    notes = [f"KL(model || {reference}) in nats per response. k3 = sum over the response's tokens of "
             "exp(d) - 1 - d with d = log p_ref(token) - log p_model(token), from teacher-forced log-probs "
             "of the model's own sampled responses: unbiased when sampling at temperature 1 without "
             "top-p/top-k truncation, and never negative. The mean log-ratio is the plain estimator "
             "(mean of log p_model - log p_ref): same expectation, but it can come out negative on few "
             "responses. SE = standard error of the k3 mean over responses. Responses are re-tokenised "
             "from text; the end-of-turn token is not counted."]
    return Table("KL to the reference: estimator", ["model", "KL (k3)", "SE", "mean log-ratio", "responses",
                                                    "tokens", "estimator"], rows, notes)


def _hypervolume_cis(fronts, result, ref_model) -> dict[str, tuple[float, float]]:
    """Bootstrap 95 % interval of each front's hypervolume (prompts resampled, the reference model's mean
    rewards recomputed on each draw), for the fronts whose every point was evaluated in ``result``."""
    from molma.eval.stats import hypervolume_bootstrap_ci

    if result is None or ref_model is None:
        return {}
    cis = {}
    for f in fronts:
        if not all(lab in result.scores for lab in f.labels) or len(f.labels) == 0:
            continue
        def matrix(model: str, objectives=f.objectives):
            return np.column_stack([np.asarray(result.scores[model][o], dtype=float) for o in objectives])
        cis[f.method] = hypervolume_bootstrap_ci([matrix(lab) for lab in f.labels], matrix(ref_model))
    return cis


def _pareto_table(fronts, hv_cis: dict[str, tuple[float, float]] | None = None) -> Table:
    hv_cis = hv_cis or {}
    rows = []
    for f in fronts:
        dominated = [lab for lab, keep in zip(f.labels, f.mask) if not keep]
        ci = hv_cis.get(f.method)
        rows.append([f.method, str(len(f.points)), str(int(f.mask.sum())), f"{f.hypervolume:.4g}",
                     f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "-", ", ".join(dominated) or "none"])
    notes = [f"Objectives: {', '.join(fronts[0].objectives)}; hypervolume of the region dominated "
             "by the points and bounded below by the reference point (larger is better)."] if fronts else []
    if hv_cis:
        notes.append("95 % CI: percentile bootstrap over the test prompts (1,000 resamples); each draw recomputes "
                     "every point's and the reference model's mean rewards on the same prompts. The interval "
                     "starts at 0 when on some draws no point beats the reference in every objective.")
    return Table("Pareto fronts and hypervolume", ["method", "points", "non-dominated", "hypervolume",
                                                   "95 % CI", "dominated points"], rows, notes)
