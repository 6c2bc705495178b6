"""Tables (Table 2, Table 3, win rates with paired tests, the verdict sentence, rewards), run-log
readers, sweeps and figure files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from molma.eval import plots
from molma.eval.stats import paired_comparison, win_rates
from molma.eval.sweep import analyse_fronts, read_sweep, sweep_from_result, write_sweep
from molma.eval.tables import (
    format_win_rates,
    read_metrics,
    read_rm_records,
    read_run,
    reward_table,
    rm_accuracy_table,
    training_time_table,
    verdict_sentence,
    win_rate_table,
)

from .fakerun import make_fake_run


def test_rm_accuracy_table_layout_and_average():
    recs = [{"model": "RM-help", "benchmark": "SHP", "accuracy": 0.615},
            {"model": "RM-help", "benchmark": "HH", "accuracy": 0.609},
            {"model": "RM-safe", "benchmark": "Harmless", "accuracy": 0.606}]
    t = rm_accuracy_table(recs)
    assert t.columns == ["reward model", "SHP", "HH", "Harmless", "Avg"]
    assert t.rows == [["RM-help", "61.5", "60.9", "-", "61.2"], ["RM-safe", "-", "-", "60.6", "60.6"]]
    assert "| RM-safe | - | - | 60.6 | 60.6 |" in t.to_markdown()
    assert t.to_text().splitlines()[1].startswith("reward model")


def test_read_rm_records_accepts_rm_eval_rows(tmp_path):
    path = tmp_path / "results.json"  # as written by molma.rewards.evaluate.write_results
    path.write_text(json.dumps([{"model": "rm-help", "data": "builtin:help", "data_spec": "builtin:help",
                                 "n": 40, "correct": 30, "ties": 0, "incorrect": 10, "accuracy": 0.75,
                                 "margin": {"mean": 0.5, "std": 1.0}}]))
    recs = read_rm_records([path])
    assert rm_accuracy_table(recs).rows == [["rm-help", "75.0", "75.0"]]
    assert rm_accuracy_table(recs).columns == ["reward model", "builtin:help", "Avg"]
    # 30 correct of 40 pairs: Wilson centre (0.75 + 0.048020) / 1.09604 = 0.728094, half 0.130037
    assert rm_accuracy_table(recs).notes[-1] == "rm-help: builtin:help 75.0 [59.8, 85.8] of 40 pairs."


def test_rm_accuracy_table_pairs_and_wilson_intervals():
    recs = [{"model": "RM-help", "benchmark": "HH", "accuracy": 0.608, "n": 1000},
            {"model": "RM-help", "benchmark": "SHP", "accuracy": 0.616},
            {"model": "RM-safe", "benchmark": "HH", "accuracy": 0.6, "n": 20, "correct": 12}]
    t = rm_accuracy_table(recs)
    assert t.rows == [["RM-help", "60.8", "61.6", "61.2"], ["RM-safe", "60.0", "-", "60.0"]]
    # 608 of 1000: centre (0.608 + 0.0019208) / 1.0038416 = 0.607587, half 0.030204
    assert t.notes[1] == "RM-help: HH 60.8 [57.7, 63.8] of 1000 pairs; SHP 61.6 (number of pairs not given)."
    # 12 of 20: centre (0.6 + 0.04802) / 1.19208 = 0.543608, half 0.196937
    assert t.notes[2] == "RM-safe: HH 60.0 [38.7, 78.1] of 20 pairs."


def test_read_rm_records_validates(tmp_path):
    path = tmp_path / "rm.json"
    path.write_text(json.dumps([{"model": "a", "benchmark": "b", "accuracy": 61.5}]))
    with pytest.raises(ValueError, match=r"rm\.json: record 0: field 'accuracy'"):
        read_rm_records([path])
    path.write_text(json.dumps({"model": "a", "accuracy": 0.6}))
    with pytest.raises(ValueError, match="missing field 'benchmark'"):
        read_rm_records([path])


def test_runs_metrics_and_training_time(tmp_path):
    root = make_fake_run(tmp_path / "exp", parts=("runs",))
    runs = [read_run(p) for p in sorted((root / "runs").iterdir())]
    assert [r.name for r in runs] == ["molma", "so-help"]
    assert runs[1].wall_time() == 54.0 and runs[1].iterations() == 20
    assert runs[0].metric_sum("time/training") == pytest.approx(10.0)
    table = training_time_table(runs)
    assert table.rows[1] == ["so-help", "so-help", "54.0", "20", "2.70", "20.0", "4.0", "30.0"]
    (root / "runs" / "molma" / "run.json").unlink()  # falls back to the sum of time/total
    assert read_run(root / "runs" / "molma").wall_time() == pytest.approx(20 * 1.7)
    # a run killed while writing: the truncated last line is skipped, other bad lines are errors
    metrics = root / "runs" / "molma" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"iteration": 21, "kl"')
    assert len(read_metrics(metrics)) == 20
    metrics.write_text('{"iteration": 1}\nnot json\n{"iteration": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        read_metrics(metrics)


def test_win_rate_text():
    rates = {"ref": {"help": win_rates([2, 3, 1], [1, 1, 1]), "safe": win_rates([0, 0, 0], [1, 1, 1])}}
    text = format_win_rates(rates, "molma", ["help", "safe"])
    lines = text.splitlines()
    assert lines[0] == "Win rates of molma (model-based evaluation, Figure 2a)"
    assert lines[3].split()[:3] == ["ref", "66.7", "[20.8,"]  # Wilson(2, 3) = [0.208, 0.939]
    assert "0.0" in lines[3]
    assert format_win_rates({}, "molma") == "Win rates of molma: no other model evaluated"


def test_win_rate_text_paired_columns_hand_values():
    rates = {"ref": {"help": win_rates([2, 3, 1], [1, 1, 1]), "safe": win_rates([0, 0, 0], [1, 1, 1])}}
    lines = format_win_rates(rates, "molma", ["help", "safe"]).splitlines()
    assert lines[1].split() == ["vs", "help", "win", "%", "[95%", "CI]", "tie", "%", "loss", "%", "no-tie", "win",
                                "%", "[CI]", "mean", "diff", "[95%", "CI]", "sign", "p"]
    # help: 2 wins, 1 tie -> win 66.7 [Wilson(2, 3)], tie 33.3, loss 0.0, no-tie 100.0 [Wilson(2, 2)],
    # mean difference +1.0 with bootstrap interval [0.0, 2.0], sign test p = 2 / 4 = 0.5
    assert lines[3].split() == ["ref", "66.7", "[20.8,", "93.9]", "33.3", "0.0", "100.0", "[34.2,", "100.0]",
                                "+1.0", "[0.0,", "2.0]", "0.500"]
    assert lines[4] == ""  # a block per objective, the header repeated
    assert "safe win % [95% CI]" in lines[5]
    # safe: 3 losses -> no-tie win 0.0 [Wilson(0, 3)], constant difference -1, p = 2 / 8 = 0.25
    assert lines[7].split() == ["ref", "0.0", "[0.0,", "56.2]", "0.0", "100.0", "0.0", "[0.0,", "56.2]",
                                "-1.0", "[-1.0,", "-1.0]", "0.250"]
    assert all(len(line) <= 100 for line in lines)


def test_win_rate_table_fits_100_columns_and_reads_old_dicts():
    rng = np.random.default_rng(0)
    a = rng.normal(0.3, 1, 64)
    names = ["ref", "so-help", "so-safe", "so-weighted", "so-piecewise", "gapo"]
    rates = {m: {o: paired_comparison(a, rng.normal(0, 1, 64), identical=np.arange(64) < 0) for o in ("help", "safe")}
             for m in names}
    text = format_win_rates(rates, "molma", ["help", "safe"])
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "No tie comes from identical response text." in text
    # the HTML/Markdown layout keeps the win share and its interval in two cells
    table = win_rate_table(rates, "molma", ["help", "safe"])
    assert table.columns[:3] == ["vs", "help win %", "95% CI"] and len(table.rows) == 12
    assert "<th>safe win %</th>" in table.to_html() and "| **vs** | **safe win %** |" in table.to_markdown()
    # a dict saved before the paired statistics existed: sign test and no-tie share from the counts
    old = {k: v for k, v in win_rates([1] * 9 + [0], [0] * 9 + [1]).items()
           if k in ("win", "tie", "loss", "n", "n_win", "n_tie", "n_loss", "ci_low", "ci_high")}
    row = win_rate_table({"ref": {"help": old}}, "molma").rows[0]
    assert row[1:3] == ["90.0", "[59.6, 98.2]"] and row[5] == "90.0 [59.6, 98.2]"
    assert row[6:] == ["-", "0.021"]


def _rates(n_win, n_tie, n_loss):
    a = [1.0] * n_win + [0.0] * n_tie + [0.0] * n_loss
    b = [0.0] * n_win + [0.0] * n_tie + [1.0] * n_loss
    return win_rates(a, b)


def test_verdict_sentence():
    rates = {"ref": {"help": _rates(9, 2, 1), "safe": _rates(10, 2, 0)},  # p = 0.0215 and 0.00195
             "so-safe": {"help": _rates(5, 2, 5), "safe": _rates(1, 2, 9)},  # lost on safe, p = 0.0215
             "gapo": {"help": _rates(6, 4, 2), "safe": _rates(0, 12, 0)}}  # p = 0.289; all ties
    assert verdict_sentence(rates, "molma", ["help", "safe"], correction="none") == (
        "molma beat ref on help (90 % of non-tied prompts, p = 0.021) and safe (100 %, p = 0.002); lost to "
        "so-safe on safe (won 10 % of non-tied prompts, p = 0.021); and showed no significant difference "
        "from gapo at this scale [12 prompts; two-sided sign test on the non-tied prompts, "
        "alpha = 0.05].")
    # by default the 6 comparisons are one family (Holm): 0.00195 x 6 = 0.012 stays, 0.0215 x 5 = 0.107 does not,
    # and the comparisons significant only on their own are named as such
    assert verdict_sentence(rates, "molma", ["help", "safe"]) == (
        "molma beat ref on safe (100 % of non-tied prompts, p = 0.002, Holm p = 0.012); and showed no significant "
        "difference from so-safe or gapo at this scale (p < 0.05 before Holm's correction only: ref on help, "
        "90 %, p = 0.021; so-safe on safe, won 10 %, p = 0.021) [12 prompts; two-sided sign test on the non-tied "
        "prompts, Holm's correction over 6 comparisons, alpha = 0.05].")
    with pytest.raises(ValueError, match="correction"):
        verdict_sentence(rates, "molma", correction="bonferroni")
    # never a win when p >= alpha, even when p equals alpha exactly
    for alpha in (0.01, 0.021484375):
        text = verdict_sentence({"ref": {"help": _rates(9, 0, 1)}}, "molma", alpha=alpha)
        assert "beat" not in text and "no significant difference from ref" in text
    assert "beat ref" in verdict_sentence({"ref": {"help": _rates(9, 0, 1)}}, "molma", alpha=0.0215)
    assert verdict_sentence({"a": {"h": _rates(3, 0, 3)}, "b": {"h": _rates(0, 6, 0)}}, "m") == (
        "m showed no significant difference from a or b at this scale [6 prompts; two-sided sign test "
        "on the non-tied prompts, Holm's correction over 2 comparisons, alpha = 0.05].")
    assert verdict_sentence({}, "molma") == "molma: no other model evaluated, so nothing to compare."
    with pytest.raises(ValueError):
        verdict_sentence(rates, "molma", alpha=0)


def test_verdict_sentence_from_a_result():
    from molma.eval.responses import ResponseRecord
    from molma.eval.runner import compute_result

    recs = [ResponseRecord(f"p{i}", "q", m, f"{m}{i}", scores={"help": float(m == "molma")})
            for i in range(10) for m in ("molma", "ref")]
    result = compute_result(recs, "molma")
    assert verdict_sentence(result) == result.verdict() == (
        "molma beat ref on help (100 % of non-tied prompts, p = 0.002) [10 prompts; two-sided sign test on "
        "the non-tied prompts, alpha = 0.05].")
    assert result.win_rate_text().endswith("alpha = 0.05].")


def test_reward_table_kl_note():
    t = reward_table([{"model": "m", "n": 2, "help/mean": 1.0, "help/median": 1.0, "kl": 0.25}], ["help"])
    assert t.rows == [["m", "2", "1.000", "1.000", "0.250"]]
    assert "k3" in t.notes[0] and "never negative" in t.notes[0]
    assert reward_table([], ["help"], kl_note="from training").notes == ["from training"]


def test_sweep_files_and_fronts(tmp_path):
    from molma.eval.responses import ResponseRecord
    from molma.eval.runner import compute_result

    recs = []
    for model, (h, s) in {"molma": (1.0, 1.0), "w0.2": (0.0, 2.0), "w0.8": (2.0, 0.0)}.items():
        for i in range(3):
            recs.append(ResponseRecord(f"p{i}", "q", model, "r", scores={"help": h + i, "safe": s}))
    result = compute_result(recs, "molma")
    sweep = sweep_from_result(result, {"w0.2": [0.2, 0.8], "w0.8": [0.8, 0.2]}, "SO-weighted")
    assert sweep["versus"] == "molma" and sweep["baseline"]["means"] == {"help": 2.0, "safe": 1.0}
    assert sweep["points"][0]["means"] == {"help": 1.0, "safe": 2.0}
    assert sweep["points"][0]["win_rates"]["help"]["win"] == 1.0
    path = write_sweep(tmp_path / "s.json", sweep)
    assert read_sweep(path) == json.loads(json.dumps(sweep))
    bad = dict(sweep, points=[{"weights": [1.0], "means": {"help": 1.0, "safe": 1.0}}])
    with pytest.raises(ValueError, match=r"points\[0\]: field 'weights'"):
        write_sweep(tmp_path / "bad.json", bad)
    fronts, ref, source = analyse_fronts([sweep, {"method": "other", "objectives": ["help", "safe"],
                                                  "points": [{"means": {"help": 0.5, "safe": 0.5}}]}])
    # sweep points (1, 2) and (3, 0), other method (0.5, 0.5): reference = component-wise min (0.5, 0)
    assert ref.tolist() == [0.5, 0.0] and "minimum" in source
    assert fronts[0].mask.tolist() == [True, True]
    # (3, 0) is not beyond the reference in safety; (1, 2) spans 0.5 x 2
    assert fronts[0].hypervolume == pytest.approx(1.0)
    assert fronts[1].hypervolume == 0.0


def test_plots_write_readable_png_and_svg(tmp_path):
    rng = np.random.default_rng(0)
    scores = {m: {"help": rng.normal(i, 1, 30), "safe": rng.normal(-i, 1, 30)} for i, m in
              enumerate(["molma", "ref", "so-help", "so-safe"])}
    rates = {m: {o: win_rates(scores["molma"][o], scores[m][o], tol=0.3) for o in ("help", "safe")}
             for m in ("ref", "so-help", "so-safe")}
    made = [
        plots.plot_win_rates(rates, "molma", tmp_path / "win"),
        plots.plot_reward_distributions(scores, tmp_path / "dist", reference="ref"),
        plots.plot_reward_distributions({m: {"help": v["help"]} for m, v in scores.items()},
                                        tmp_path / "hist"),
        plots.plot_training_curves(
            {"a": [{"iteration": i, "reward/raw/help": i, "kl": 0.1 * i} for i in range(9)],
             "b": [{"iteration": i, "reward/raw/help": -i} for i in range(9)]}, tmp_path / "curves"),
    ]
    for png, svg in made:
        img = imread(png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.01  # something is drawn
        assert svg.read_text().lstrip().startswith("<?xml")


def test_win_rate_figure_shows_win_tie_loss_and_readable_labels():
    from matplotlib.patches import Rectangle

    rng = np.random.default_rng(0)
    a = {o: np.round(rng.normal(0.3, 1, 40), 1) for o in ("help", "safe")}
    names = [f"so-weighted-w0.{i}" if i % 2 else f"m{i}" for i in range(15)]
    rates = {m: {o: win_rates(a[o], np.round(rng.normal(0, 1, 40), 1)) for o in a} for m in names}
    fig = plots.win_rate_figure(rates, "molma")
    fig.canvas.draw()
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 3 * 2 * 15  # win, tie and loss for each opponent and objective
    for m, i in zip(names, range(15)):
        for j, o in enumerate(("help", "safe")):
            win, tie, loss = bars[j * 45 + i], bars[j * 45 + 15 + i], bars[j * 45 + 30 + i]
            r = rates[m][o]
            assert (win.get_y(), win.get_height()) == pytest.approx((0, 100 * r["win"]))
            assert (tie.get_y(), tie.get_height()) == pytest.approx((100 * r["win"], 100 * r["tie"]))
            # losses drawn down from the top, so they are visible, not implied
            assert (loss.get_y() + loss.get_height(), loss.get_height()) == pytest.approx((100, 100 * r["loss"]))
    # diamonds at the win share among non-tied prompts
    markers = [line for line in ax.lines if line.get_marker() == "D"]
    assert len(markers) == 2
    assert markers[0].get_ydata() == pytest.approx([100 * rates[m]["help"]["win_excl_ties"] for m in names])
    # tick labels rotated and not overlapping
    labels = ax.get_xticklabels()
    assert all(lab.get_rotation() > 20 for lab in labels)
    boxes = [lab.get_window_extent() for lab in labels]
    assert not any(b1.overlaps(b2) for b1, b2 in zip(boxes, boxes[1:]))
