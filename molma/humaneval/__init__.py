"""Human evaluation web app: blinded ranking of model responses (MOLMA paper, section 4.5.2).

Evaluators see one prompt and the responses of all models in a random order without model names, and
rank them from 1st to Nth (ties allowed) once per objective (default: helpfulness and safety). A
response beats another in an objective if its average rank over evaluators is better.

Flow: :meth:`Study.create` imports ``responses.jsonl`` into SQLite once; :meth:`Study.invite` makes
secret per-evaluator links; :func:`serve` runs the web app (Flask on waitress); :func:`compute_results`
and :func:`write_results` report win rates, agreement (Kendall's W) and the figure. The CLI is
``molma human-eval`` (see docs/humaneval.md).
"""

from molma.humaneval.analysis import (
    PairResult,
    StudyResults,
    compute_results,
    kendall_w,
    mid_ranks,
    results_to_dict,
    summary_text,
    write_results,
)
from molma.humaneval.objectives import DEFAULT_OBJECTIVES, Objective, ObjectivesError, load_objectives
from molma.humaneval.records import ResponseRecord, ResponsesError, file_sha256, load_responses
from molma.humaneval.server import BackgroundServer, serve
from molma.humaneval.store import Account, Invite, Study, StudyError, SubmissionError
from molma.humaneval.web import create_app

__all__ = [
    "DEFAULT_OBJECTIVES",
    "Account",
    "BackgroundServer",
    "Invite",
    "Objective",
    "ObjectivesError",
    "PairResult",
    "ResponseRecord",
    "ResponsesError",
    "Study",
    "StudyError",
    "StudyResults",
    "SubmissionError",
    "compute_results",
    "create_app",
    "file_sha256",
    "kendall_w",
    "load_objectives",
    "load_responses",
    "mid_ranks",
    "results_to_dict",
    "serve",
    "summary_text",
    "write_results",
]
