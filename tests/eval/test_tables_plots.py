"""Tables (Table 2, Table 3, win rates, rewards), run-log readers, sweeps and figure files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from molma.eval import plots
from molma.eval.stats import win_rates
from molma.eval.sweep import analyse_fronts, read_sweep, sweep_from_result, write_sweep
from molma.eval.tables import (
    format_win_rates,
    read_metrics,
    read_rm_records,
    read_run,
    rm_accuracy_table,
    training_time_table,
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
