"""Results of a study: human win rates by the paper's rule, evaluator agreement, model-based win rates.

Win rates (paper, section 4.5.2): for each prompt and objective, every response gets its average rank
over the evaluators who ranked that prompt; response A wins over B if its average rank is better
(smaller number = better), loses if worse, ties if equal. The win rate of model A against B is the
share of prompts (with responses from both, ranked by at least one evaluator) that A wins; tie and
loss rates are reported separately, so win + tie + loss = 1.

Before averaging, each evaluator's ranks for a prompt are turned into mid-ranks (tied responses share
the mean of the positions they span): "1, 1, 2" and "1, 1, 3" both mean "two tied best, one last" and
become 1.5, 1.5, 3. Without this, evaluators who number ties differently would weigh differently.
Each evaluator's own order is unchanged, so with a single evaluator the result is identical.

Agreement: Kendall's coefficient of concordance W per (prompt, objective) among the m >= 2 evaluators
who ranked the prompt's n >= 2 responses, with the tie correction::

    R_i = sum over evaluators of the mid-rank of response i
    S   = sum_i (R_i - m (n + 1) / 2) ** 2
    T_j = sum over groups of tied responses of evaluator j of (t ** 3 - t)
    W   = 12 S / (m ** 2 (n ** 3 - n) - m sum_j T_j)

W is 1 for identical rankings and 0 for no agreement. It is undefined (reported as missing, and
counted) when the denominator is 0, i.e. every evaluator tied all responses. The study value per
objective is the mean of W over the prompts where it is defined.

Model-based win rates use the ``scores`` of ``responses.jsonl`` under the objective's key (higher score
wins), over all prompts of the study, for comparison with the human ones.

Uncertainty: every win rate comes with the 95 % Wilson interval of the win share, the win share among
the non-tied prompts (wins / (wins + losses), the number to compare with 50 %) with its own Wilson
interval, and the exact two-sided sign test on the non-tied prompts (``molma.eval.stats``).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from molma.atomic import write_text_atomic
from molma.eval.stats import sign_test, wilson_interval
from molma.humaneval.objectives import Objective
from molma.humaneval.store import StudyData

TIE_TOLERANCE = 1e-9


def mid_ranks(ranks: Sequence[float]) -> list[float]:
    """Replace ranks by mid-ranks: tied values share the mean of the sorted positions they occupy."""
    order = sorted(range(len(ranks)), key=lambda i: ranks[i])
    out = [0.0] * len(ranks)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and ranks[order[end + 1]] == ranks[order[start]]:
            end += 1
        shared = (start + end) / 2 + 1
        for pos in range(start, end + 1):
            out[order[pos]] = shared
        start = end + 1
    return out


def kendall_w(rankings: Sequence[Sequence[float]]) -> float | None:
    """Tie-corrected Kendall's W of ``m`` evaluators (rows) ranking the same ``n`` items (columns).

    Returns None when undefined (fewer than 2 evaluators or items, or all evaluators tie everything).
    """
    m = len(rankings)
    if m < 2:
        return None
    n = len(rankings[0])
    if n < 2 or any(len(row) != n for row in rankings):
        return None
    mids = [mid_ranks(row) for row in rankings]
    sums = [sum(row[i] for row in mids) for i in range(n)]
    mean = m * (n + 1) / 2
    s = sum((r - mean) ** 2 for r in sums)
    ties = 0.0
    for row in rankings:
        counts: dict[float, int] = defaultdict(int)
        for value in row:
            counts[value] += 1
        ties += sum(t**3 - t for t in counts.values())
    denominator = m**2 * (n**3 - n) - m * ties
    if denominator <= 0:
        return None
    return min(1.0, max(0.0, 12 * s / denominator))


@dataclass(frozen=True)
class PairResult:
    """Model ``model`` against ``opponent`` in one objective."""

    objective: str
    model: str
    opponent: str
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        """Prompts compared."""
        return self.wins + self.ties + self.losses

    def rate(self, count: int) -> float | None:
        """``count / n``, or None when nothing was compared."""
        return count / self.n if self.n else None

    @property
    def win_rate(self) -> float | None:
        """Share of compared prompts won (None if none compared)."""
        return self.rate(self.wins)

    @property
    def tie_rate(self) -> float | None:
        """Share of compared prompts tied."""
        return self.rate(self.ties)

    @property
    def loss_rate(self) -> float | None:
        """Share of compared prompts lost."""
        return self.rate(self.losses)

    @property
    def win_ci(self) -> tuple[float, float]:
        """95 % Wilson interval of the win share over all compared prompts ((0, 1) when n = 0)."""
        return wilson_interval(self.wins, self.n)

    @property
    def n_decisive(self) -> int:
        """Compared prompts that are not ties."""
        return self.wins + self.losses

    @property
    def win_excl_ties(self) -> float | None:
        """Share of the non-tied prompts won (None when every prompt is a tie)."""
        return self.wins / self.n_decisive if self.n_decisive else None

    @property
    def excl_ci(self) -> tuple[float, float]:
        """95 % Wilson interval of :attr:`win_excl_ties` ((0, 1) when there is no non-tied prompt)."""
        return wilson_interval(self.wins, self.n_decisive)

    @property
    def sign_p(self) -> float:
        """Exact two-sided sign-test p-value on the non-tied prompts (1.0 when there are none)."""
        return sign_test(self.wins, self.losses)

    def to_dict(self) -> dict[str, Any]:
        """Counts, rates and their uncertainty, JSON-ready (rates None when n = 0)."""
        return {
            **asdict(self),
            "n": self.n,
            "win_rate": self.win_rate,
            "tie_rate": self.tie_rate,
            "loss_rate": self.loss_rate,
            "win_ci_low": self.win_ci[0] if self.n else None,
            "win_ci_high": self.win_ci[1] if self.n else None,
            "win_excl_ties": self.win_excl_ties,
            "excl_ci_low": self.excl_ci[0] if self.n_decisive else None,
            "excl_ci_high": self.excl_ci[1] if self.n_decisive else None,
            "sign_p": self.sign_p,
        }


@dataclass(frozen=True)
class Agreement:
    """Kendall's W of one objective: mean over prompts where defined, plus per-prompt values."""

    objective: str
    mean_w: float | None
    n_prompts: int
    n_undefined: int
    per_prompt: tuple[tuple[str, int, int, float | None], ...]  # (prompt, m evaluators, n responses, W)


@dataclass
class StudyResults:
    """Everything `molma human-eval results` reports."""

    title: str
    objectives: tuple[Objective, ...]
    models: tuple[str, ...]
    n_prompts: int
    ranked_prompts: dict[str, int]
    evaluators: list[dict[str, Any]]
    human: dict[str, dict[tuple[str, str], PairResult]] = field(default_factory=dict)
    model_based: dict[str, dict[tuple[str, str], PairResult]] = field(default_factory=dict)
    agreement: dict[str, Agreement] = field(default_factory=dict)

    def objective_label(self, key: str) -> str:
        """Human-readable label of an objective key."""
        return next((o.label for o in self.objectives if o.key == key), key)

    def pairs(self, model: str, objective: str, *, model_based: bool = False) -> list[PairResult]:
        """``model`` against every other model in one objective, in model order."""
        table = (self.model_based if model_based else self.human).get(objective, {})
        return [table[(model, other)] for other in self.models if other != model and (model, other) in table]

    def default_model(self) -> str:
        """The model the figure focuses on by default: ``molma`` if present, else the first one."""
        return "molma" if "molma" in self.models else self.models[0]


def _compare(
    values: Mapping[str, float],
    models: Sequence[str],
    objective: str,
    better_low: bool,
    counts: dict[tuple[str, str], list[int]],
) -> None:
    for a in models:
        for b in models:
            if a == b or a not in values or b not in values:
                continue
            diff = values[a] - values[b]
            slot = counts[(a, b)]
            if abs(diff) <= TIE_TOLERANCE:
                slot[1] += 1
            elif (diff < 0) == better_low:
                slot[0] += 1
            else:
                slot[2] += 1


def _pair_table(
    objective: str, models: Sequence[str], counts: Mapping[tuple[str, str], list[int]]
) -> dict[tuple[str, str], PairResult]:
    return {
        (a, b): PairResult(objective, a, b, *counts.get((a, b), [0, 0, 0]))
        for a in models
        for b in models
        if a != b
    }


def compute_results(data: StudyData) -> StudyResults:
    """Win rates (human and model-based) and agreement from a study snapshot."""
    results = StudyResults(
        title=data.title,
        objectives=data.objectives,
        models=data.models,
        n_prompts=len(data.prompts),
        ranked_prompts={},
        evaluators=[
            {
                "label": p.label,
                "saved": p.saved,
                "total": p.total,
                "resubmissions": p.revisions,
                "last_saved_at": p.last_saved_at,
                "revoked": p.revoked,
            }
            for p in data.progress
            if p.role == "evaluator"
        ],
    )
    # (objective, prompt) -> evaluator -> model -> raw rank
    grouped: dict[tuple[str, str], dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for evaluator, prompt, model, objective, rank in data.ratings:
        grouped[(objective, prompt)][evaluator][model] = rank
    for obj in data.objectives:
        human_counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        rm_counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        per_prompt = []
        ranked = 0
        for prompt in data.prompts:
            models = data.available[prompt]
            scores = {
                m: data.scores[(prompt, m)][obj.key] for m in models if obj.key in data.scores[(prompt, m)]
            }
            _compare(scores, models, obj.key, False, rm_counts)
            by_evaluator = grouped.get((obj.key, prompt))
            if not by_evaluator:
                continue
            rows = [
                [ranks[m] for m in models] for ranks in by_evaluator.values() if set(ranks) == set(models)
            ]
            if not rows:
                continue
            ranked += 1
            mids = [mid_ranks(row) for row in rows]
            average = {m: sum(row[i] for row in mids) / len(mids) for i, m in enumerate(models)}
            _compare(average, models, obj.key, True, human_counts)
            if len(rows) >= 2:  # agreement needs two evaluators
                per_prompt.append((prompt, len(rows), len(models), kendall_w(rows)))
        results.ranked_prompts[obj.key] = ranked
        results.human[obj.key] = _pair_table(obj.key, data.models, human_counts)
        if any(sum(c) for c in rm_counts.values()):
            results.model_based[obj.key] = _pair_table(obj.key, data.models, rm_counts)
        defined = [w for *_, w in per_prompt if w is not None]
        results.agreement[obj.key] = Agreement(
            objective=obj.key,
            mean_w=sum(defined) / len(defined) if defined else None,
            n_prompts=len(defined),
            n_undefined=len(per_prompt) - len(defined),
            per_prompt=tuple(per_prompt),
        )
    return results


def results_to_dict(results: StudyResults) -> dict[str, Any]:
    """A JSON-ready view of the results (missing values are null, never NaN)."""

    def table(src: dict[str, dict[tuple[str, str], PairResult]]) -> dict[str, list[dict[str, Any]]]:
        return {obj: [p.to_dict() for p in pairs.values()] for obj, pairs in src.items()}

    return {
        "title": results.title,
        "rule": (
            "per prompt, a response wins over another if its average (mid-)rank across evaluators is better"
        ),
        "objectives": [asdict(o) for o in results.objectives],
        "models": list(results.models),
        "n_prompts": results.n_prompts,
        "ranked_prompts": results.ranked_prompts,
        "evaluators": results.evaluators,
        "win_rates": table(results.human),
        "model_based_win_rates": table(results.model_based),
        "agreement": {
            key: {
                "measure": "Kendall's W (tie-corrected), mean over prompts",
                "mean_w": a.mean_w,
                "n_prompts": a.n_prompts,
                "n_undefined": a.n_undefined,
            }
            for key, a in results.agreement.items()
        },
    }


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


class _Lines:
    """A csv.writer target collecting text."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def text(self) -> str:
        return "".join(self.parts)


def win_rates_csv(results: StudyResults) -> str:
    """Every ordered pair per objective: human counts and rates, and the model-based rates."""
    buf = _Lines()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "objective",
            "model",
            "opponent",
            "wins",
            "ties",
            "losses",
            "n_prompts",
            "win_rate",
            "tie_rate",
            "loss_rate",
            "model_based_win_rate",
            "model_based_tie_rate",
            "model_based_n",
            "win_ci_low",
            "win_ci_high",
            "win_excl_ties",
            "excl_ci_low",
            "excl_ci_high",
            "sign_p",
            "model_based_sign_p",
        ]
    )
    for obj in results.objectives:
        for (a, b), p in results.human.get(obj.key, {}).items():
            rm = results.model_based.get(obj.key, {}).get((a, b))
            writer.writerow(
                [
                    obj.key,
                    a,
                    b,
                    p.wins,
                    p.ties,
                    p.losses,
                    p.n,
                    _fmt(p.win_rate),
                    _fmt(p.tie_rate),
                    _fmt(p.loss_rate),
                    _fmt(rm.win_rate if rm else None),
                    _fmt(rm.tie_rate if rm else None),
                    rm.n if rm else "",
                    _fmt(p.win_ci[0] if p.n else None),
                    _fmt(p.win_ci[1] if p.n else None),
                    _fmt(p.win_excl_ties),
                    _fmt(p.excl_ci[0] if p.n_decisive else None),
                    _fmt(p.excl_ci[1] if p.n_decisive else None),
                    _fmt(p.sign_p),
                    _fmt(rm.sign_p if rm else None),
                ]
            )
    return buf.text()


def agreement_csv(results: StudyResults) -> str:
    """Kendall's W per (objective, prompt)."""
    buf = _Lines()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["objective", "prompt_id", "n_evaluators", "n_responses", "kendall_w"])
    for key, agreement in results.agreement.items():
        for prompt, m, n, w in agreement.per_prompt:
            writer.writerow([key, prompt, m, n, _fmt(w)])
    return buf.text()


def rankings_csv(rows: Sequence[Mapping[str, object]]) -> str:
    """The raw rankings export (one row per evaluator x response x objective)."""
    buf = _Lines()
    columns = [
        "evaluator",
        "prompt_id",
        "objective",
        "model",
        "rank",
        "display_letter",
        "display_position",
        "saved_at",
        "first_saved_at",
        "revisions",
    ]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.text()


def write_results(
    results: StudyResults,
    rankings: Sequence[Mapping[str, object]],
    out_dir: str | Path,
    *,
    model: str | None = None,
) -> list[Path]:
    """Write results.json, win_rates.csv, agreement.csv, rankings.csv and the figure (PNG + SVG)."""
    from molma.humaneval.plots import save_win_rate_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or results.default_model()
    payload = results_to_dict(results)
    payload["figure_model"] = model
    files = {
        "results.json": json.dumps(payload, indent=2) + "\n",
        "win_rates.csv": win_rates_csv(results),
        "agreement.csv": agreement_csv(results),
        "rankings.csv": rankings_csv(rankings),
    }
    written = []
    for name, text in files.items():
        write_text_atomic(out / name, text)
        written.append(out / name)
    written += save_win_rate_figure(results, model, out / f"win_rates_{_safe_name(model)}")
    return written


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:64] or "model"


def _pct_ci(share: float | None, ci: tuple[float, float]) -> str:
    return "-" if share is None else f"{share:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def summary_text(results: StudyResults, model: str) -> str:
    """A plain-text table: ``model`` against each other model per objective (win, tie and loss shares,
    prompts, the 95 % Wilson interval of the win share, the win share among non-tied prompts with its
    interval, the sign-test p-value, and the model-based win share), and agreement."""
    lines = [f"{results.title}: {results.n_prompts} prompts, {len(results.evaluators)} evaluators"]
    for obj in results.objectives:
        agreement = results.agreement[obj.key]
        w = "n/a" if agreement.mean_w is None else f"{agreement.mean_w:.3f}"
        lines.append(
            f"\n{obj.label} ({obj.key}): {results.ranked_prompts.get(obj.key, 0)} prompts ranked, "
            f"Kendall's W {w} over {agreement.n_prompts} prompt(s)"
        )
        lines.append(
            f"  {model[:13] + ' vs':<16}    win    tie   loss     n  win 95% CI      "
            "no-tie win [95% CI]       sign p  model-based win"
        )
        for p in results.pairs(model, obj.key):
            rm = results.model_based.get(obj.key, {}).get((p.model, p.opponent))
            rm_text = "-" if rm is None or rm.win_rate is None else f"{rm.win_rate:6.1%}"

            def pct(v: float | None) -> str:
                return "   -  " if v is None else f"{v:6.1%}"

            ci = "-" if not p.n else f"[{p.win_ci[0]:.1%}, {p.win_ci[1]:.1%}]"
            lines.append(
                f"  {p.opponent[:16]:<16} {pct(p.win_rate)} {pct(p.tie_rate)} {pct(p.loss_rate)}"
                f" {p.n:5d}  {ci:<15} {_pct_ci(p.win_excl_ties, p.excl_ci):<25}"
                f" {_p(p.sign_p) if p.n else '-':<7} {rm_text}"
            )
    lines.append(
        "\nwin / tie / loss: shares of the ranked prompts, 95% CI: Wilson interval of the win share;"
        "\nno-tie win = wins / (wins + losses), the share to compare with 50 %;"
        "\nsign p: exact two-sided sign test on the non-tied prompts (H0: win and loss equally likely)."
    )
    return "\n".join(lines)
