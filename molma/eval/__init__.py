"""Evaluation (paper section 4.3-4.8): generate on test prompts, score with every objective, win rates
with Wilson intervals (Figure 2a), reward distributions (Figure 3), importance-weight sweeps (Figure 4),
Pareto fronts with hypervolume, reward-model accuracy and training-time tables (Tables 2-3), and a
self-contained HTML/Markdown report. See docs/eval.md."""

from molma.eval.generate import generate_responses, load_for_eval, response_logprobs, score_responses
from molma.eval.report import Report, build_report, environment_info
from molma.eval.responses import ResponseRecord, read_responses, score_matrix, write_responses
from molma.eval.runner import EvalConfig, EvalResult, evaluate_models, load_result, rescore
from molma.eval.stats import (
    bootstrap_ci,
    hypervolume,
    pareto_mask,
    reward_summary,
    summary_table,
    wilson_interval,
    win_rates,
)
from molma.eval.sweep import Front, analyse_fronts, read_sweep, sweep_from_result, write_sweep
from molma.eval.tables import (
    RunInfo,
    Table,
    format_win_rates,
    read_rm_records,
    read_run,
    reward_table,
    rm_accuracy_table,
    training_time_table,
    win_rate_table,
)

__all__ = [
    "EvalConfig", "EvalResult", "Front", "Report", "ResponseRecord", "RunInfo", "Table", "analyse_fronts",
    "bootstrap_ci", "build_report", "environment_info", "evaluate_models", "format_win_rates",
    "generate_responses", "hypervolume", "load_for_eval", "load_result", "pareto_mask", "read_responses",
    "read_rm_records", "read_run", "read_sweep", "rescore", "reward_summary", "reward_table",
    "rm_accuracy_table", "score_matrix", "score_responses", "response_logprobs", "summary_table",
    "sweep_from_result", "training_time_table", "wilson_interval", "win_rate_table", "win_rates",
    "write_responses", "write_sweep",
]
