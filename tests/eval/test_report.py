"""The HTML/Markdown report from a small fake run directory, and ``molma report``."""

from __future__ import annotations

import base64
import html
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest

from molma.eval.report import build_report
from molma.eval.runner import load_result
from molma.eval.stats import hypervolume
from molma.eval.tables import verdict_sentence

from .fakerun import EVIL, make_fake_run

VOID = {"meta", "img", "br", "hr", "link", "input"}
TABLES = ["Environment (report build)", "Environment (evaluation run)", "Reward-model accuracy (Table 2)",
          "Win rates of molma (model-based evaluation, Figure 2a)",
          "Rewards of generated responses per model",
          "SO-weighted importance-weight sweep (so-weighted.json)", "Pareto fronts and hypervolume",
          "Training time per method (Table 3)", "Evaluation time per model (s)"]
FIGURES = ["win_rates.png", "reward_distributions.png", "sweep_so-weighted.png", "pareto.png",
           "training_curves.png"]


class BalanceChecker(HTMLParser):
    """Every non-void tag is closed in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("run") / "exp")
    return run, build_report(run)


def test_report_has_every_table_and_figure(full_report):
    run, report = full_report
    page = report.html.read_text(encoding="utf-8")
    assert report.missing == []
    assert "Not run" not in page
    for title in TABLES:
        assert title in report.tables
        assert f"<caption>{title}</caption>" in page
    assert sorted(p.name for p in report.figures) == sorted(FIGURES)
    for png in report.figures:
        assert png.exists() and png.with_suffix(".svg").exists()
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"/>', page)
    assert len(images) == len(FIGURES)
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    for word in ("python", "torch", "transformers", "molma", "cpu_count", "platform"):
        assert f"<td>{word}</td>" in page
    assert "model: smollm2-135m-instruct" in page  # the experiment config
    md = report.markdown.read_text(encoding="utf-8")
    for title in TABLES:
        assert f"**{title}**" in md
    for name in FIGURES:
        assert f"(figures/{name})" in md


def test_report_is_well_formed_self_contained_and_escaped(full_report):
    _, report = full_report
    page = report.html.read_text(encoding="utf-8")
    root = ET.fromstring(page)  # well-formed XHTML-style markup
    assert root.tag.endswith("html")
    checker = BalanceChecker()
    checker.feed(page)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    for tag, attrs in checker.tags:  # no external resources
        assert tag not in {"script", "link", "iframe"}
        for key in ("src", "href"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), (tag, key, value)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page
    md = report.markdown.read_text(encoding="utf-8")
    assert EVIL not in md and "<script>" not in md


def test_report_numbers_match_the_saved_evaluation(full_report):
    run, report = full_report
    page = report.html.read_text(encoding="utf-8")
    result = load_result(run / "eval")
    r = result.win_rates["ref"]["help"]
    assert f"<td>{100 * r['win']:.1f}</td>" in page
    assert f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]" in page
    # hypervolume of the P-GAPO front from the reference model's mean rewards
    ref = [float(np.mean(result.scores["ref"]["help"])), float(np.mean(result.scores["ref"]["safe"]))]
    hv = hypervolume([(0.3, 0.9), (0.6, 0.6), (0.9, 0.2), (0.5, 0.5)], ref)
    assert f"<td>P-GAPO</td><td>4</td><td>3</td><td>{hv:.4g}</td><td>-</td><td>0.6</td>" in page
    assert "mean rewards of the reference model &#x27;ref&#x27;" in page
    # Table 2: the RM-help average over its two benchmarks, '-' where not evaluated
    assert "<td>RM-help</td><td>60.8</td><td>73.4</td><td>-</td><td>67.1</td>" in page
    # Table 3: 34 s over 20 iterations
    assert "<td>molma</td><td>molma</td><td>34.0</td><td>20</td><td>1.70</td>" in page


def test_report_shows_paired_tests_kl_estimator_and_intervals(full_report):
    run, report = full_report
    page = report.html.read_text(encoding="utf-8")
    md = report.markdown.read_text(encoding="utf-8")
    result = load_result(run / "eval")
    r = result.win_rates["ref"]["help"]
    # the win-rate row: win, its interval, tie, loss, no-tie win share [CI], mean difference [CI], sign p
    no_tie = f"{100 * r['win_excl_ties']:.1f} [{100 * r['excl_ci_low']:.1f}, {100 * r['excl_ci_high']:.1f}]"
    p = "&lt;0.001" if r["sign_p"] < 0.001 else f"{r['sign_p']:.3f}"
    # differences shown with two significant digits of the largest value in the objective's block
    top = max(abs(x[k]) for x in (v["help"] for v in result.win_rates.values())
              for k in ("mean_diff", "diff_ci_low", "diff_ci_high"))
    d = min(4, max(0, 1 - math.floor(math.log10(top))))
    assert (f"<td>{100 * r['tie']:.1f}</td><td>{100 * r['loss']:.1f}</td><td>{no_tie}</td>"
            f"<td>{r['mean_diff']:+.{d}f} [{r['diff_ci_low']:.{d}f}, {r['diff_ci_high']:.{d}f}]</td>"
            f"<td>{p}</td>") in page
    for head in ("no-tie win % [CI]", "mean diff [95% CI]", "sign p"):
        assert f"<th>{head}</th>" in page
    assert "<th>vs</th><th>safe win %</th>" in page  # the second objective's block
    # the verdict, escaped like every other text
    sentence = verdict_sentence(result)
    assert sentence.startswith("molma beat ref on help (82 % of non-tied prompts, p < 0.001")
    assert "In short: " + html.escape(sentence) in page
    assert "In short: " + sentence in md
    # identical-text ties: every response differs in the fake run
    assert "No tie comes from identical response text." in page
    # KL: the estimator in the reward table's note and its own table
    assert "KL to the reference: estimator" in report.tables
    assert "<td>molma</td><td>0.1200</td><td>0.0200</td><td>0.1000</td><td>40</td><td>800</td>" in page
    assert "exp(d) - 1 - d" in page and "never negative" in page
    # Table 2: pairs and a Wilson interval per accuracy (608 of 1000, 734 of 1000)
    assert ("RM-help: Anthropic Helpful 60.8 [57.7, 63.8] of 1000 pairs; PKU-SafeRLHF (helpfulness) 73.4 "
            "[70.6, 76.0] of 1000 pairs.") in page
    assert "RM-safe: Anthropic Harmless 60.6 (number of pairs not given)." in page
    assert "win (bottom), tie" in page  # the figure caption says how the bars are stacked


def test_missing_parts_are_stated(tmp_path):
    run = make_fake_run(tmp_path / "exp", parts=("eval",))
    report = build_report(run, tmp_path / "out")
    page = report.html.read_text(encoding="utf-8")
    assert set(report.missing) == {"reward-model evaluation", "importance-weight sweep", "preference sweep",
                                   "training runs"}
    for what in report.missing:
        assert f"Not run: {what}" in page
    assert "Win rates of molma" in page
    ET.fromstring(page)
    (tmp_path / "empty").mkdir()
    empty = build_report(tmp_path / "empty")
    assert "model-based evaluation" in empty.missing and "reward distributions" in empty.missing
    ET.fromstring(empty.html.read_text(encoding="utf-8"))


def test_molma_report_cli(tmp_path, capsys):
    from molma.cli.main import main

    run = make_fake_run(tmp_path / "exp", n_prompts=12)
    assert main(["report", str(run), "--hv-reference", "help=0,safe=0", "--title", "Demo <report>"]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "5 figures" in out
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "<title>Demo &lt;report&gt;</title>" in page
    assert "help=0, safe=0): given reference point" in page
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_pareto_table_gives_a_bootstrap_interval_for_fronts_whose_points_were_evaluated():
    from types import SimpleNamespace

    from molma.eval.report import _hypervolume_cis, _pareto_table
    from molma.eval.sweep import analyse_fronts

    rng = np.random.default_rng(0)
    n = 50
    scores = {"ref": {"help": rng.normal(0, 1, n), "safe": rng.normal(0, 1, n)},
              "p-0.2": {"help": rng.normal(0.2, 1, n), "safe": rng.normal(1.0, 1, n)},
              "p-0.8": {"help": rng.normal(1.0, 1, n), "safe": rng.normal(0.2, 1, n)}}
    result = SimpleNamespace(scores=scores)
    sweep = {"method": "P", "objectives": ["help", "safe"],
             "points": [{"label": lab, "means": {o: float(np.mean(scores[lab][o])) for o in ("help", "safe")}}
                        for lab in ("p-0.2", "p-0.8")]}
    unevaluated = {**sweep, "method": "Q", "points": [{**sweep["points"][0], "label": "not-in-eval"}]}
    reference = {o: float(np.mean(scores["ref"][o])) for o in ("help", "safe")}
    fronts, _, _ = analyse_fronts([sweep, unevaluated], reference)
    cis = _hypervolume_cis(fronts, result, "ref")
    assert set(cis) == {"P"}
    low, high = cis["P"]
    assert low <= fronts[0].hypervolume <= high and low < high
    table = _pareto_table(fronts, cis)
    assert "95 % CI" in table.columns and table.rows[1][4] == "-"
