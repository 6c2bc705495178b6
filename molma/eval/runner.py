"""``evaluate_models``: the model-based evaluation of paper section 4.3 / Figure 2a, end to end.

Every model answers the same test prompts with the same sampling seed; every objective scores every
response; responses and scores go to ``OUT/responses.jsonl`` (reusable: a model whose responses are
already there is not regenerated, a missing objective is only scored) and statistics to
``OUT/summary.json``. ``rescore`` re-scores a saved evaluation with other objectives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from molma.config import COUNT, NON_NEGATIVE, OPEN_UNIT, POSITIVE, SEED, Range, check_ranges
from molma.data.records import Prompt
from molma.eval.generate import (
    check_generation,
    generate_responses,
    load_for_eval,
    response_logprobs,
    score_responses,
)
from molma.eval.responses import (
    ResponseRecord,
    models_in,
    objectives_in,
    prompt_id,
    read_json_if_exists,
    read_responses,
    score_matrix,
    write_json,
    write_responses,
)
from molma.eval.stats import k3_kl, paired_comparison, summary_table

log = logging.getLogger(__name__)

RESPONSES = "responses.jsonl"
SUMMARY = "summary.json"
GEN_KEYS = ("max_new_tokens", "seed", "batch_size", "do_sample", "temperature", "top_p", "system", "precision")


@dataclass
class EvalConfig:
    """Settings of one model-based evaluation (paper section 4.3). ``versus`` is the model whose win
    rates against every other model are reported (default: ``molma`` if evaluated, else the first)."""

    max_new_tokens: int = 48
    seed: int = 0
    batch_size: int = 16
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    system: str | None = None
    score_batch_size: int = 16
    versus: str | None = None
    tie_tol: float = 0.0
    kl_reference: str | None = None
    resume: bool = True
    progress: bool = True
    precision: str = "fp32"  # mixed precision of generation (molma.models.precision); auto: bf16 if supported

    RANGES: ClassVar[dict[str, Range]] = {
        "max_new_tokens": COUNT, "seed": SEED, "batch_size": COUNT, "score_batch_size": COUNT,
        "temperature": POSITIVE, "top_p": OPEN_UNIT, "tie_tol": NON_NEGATIVE,
    }

    def __post_init__(self) -> None:
        check_ranges(self)  # NaN / inf and out-of-range values, naming the key
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        check_generation(self.max_new_tokens, self.batch_size, self.do_sample, self.temperature, self.top_p)
        if self.score_batch_size <= 0:
            raise ValueError(f"score_batch_size must be > 0, got {self.score_batch_size}")
        if self.tie_tol < 0:
            raise ValueError(f"tie_tol must be >= 0, got {self.tie_tol}")

    def generation(self) -> dict:
        """The settings that determine the responses (a resumed model must have used the same)."""
        return {k: getattr(self, k) for k in GEN_KEYS}


@dataclass
class EvalResult:
    """What ``evaluate_models`` / ``rescore`` / ``load_result`` return.

    ``scores[model][objective]`` is aligned over ``prompt_ids``; ``win_rates[opponent][objective]`` is
    :func:`molma.eval.stats.paired_comparison` of ``versus`` against ``opponent`` (every key of
    :func:`molma.eval.stats.win_rates`, plus the win share among non-tied prompts with its Wilson interval,
    the sign-test p-value, the mean reward difference with its paired bootstrap interval and
    ``n_identical_ties``, the ties where both responses are the same text). ``kl[model]`` is the k3
    estimate of KL(model || kl_reference) in nats per response; ``kl_details[model]`` says how it was
    measured (estimator, standard error, mean log-ratio, responses, tokens).
    """

    out_dir: Path | None
    models: list[str]
    objectives: list[str]
    prompt_ids: list[str]
    scores: dict[str, dict[str, np.ndarray]]
    versus: str | None
    win_rates: dict[str, dict[str, dict]]
    summary: list[dict]
    records: list[ResponseRecord] = field(default_factory=list, repr=False)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    kl: dict[str, float] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    kl_details: dict[str, dict] = field(default_factory=dict)

    def win_rate_text(self) -> str:
        """The win-rate table as plain text followed by the one-sentence verdict (what ``molma eval`` and
        the demo print)."""
        import textwrap

        from molma.eval.tables import format_win_rates

        table = format_win_rates(self.win_rates, self.versus or "?", self.objectives)
        if not self.win_rates:
            return table
        return table + "\n\n" + textwrap.fill(self.verdict(), 100)

    def verdict(self, alpha: float = 0.05) -> str:
        """One plain sentence on what the evaluation showed (see :func:`molma.eval.tables.verdict_sentence`)."""
        from molma.eval.tables import verdict_sentence

        return verdict_sentence(self, self.versus or "?", self.objectives, alpha)

    def compare(self, a: str, b: str, tie_tol: float = 0.0) -> dict[str, dict]:
        """Any two evaluated models, ``a`` against ``b``, with the same statistics as ``win_rates``."""
        return compare_pair(response_texts(self.records), self.scores, self.prompt_ids, a, b, self.objectives,
                            tie_tol)

    def to_json(self) -> dict:
        return {"models": self.models, "objectives": self.objectives, "n_prompts": len(self.prompt_ids),
                "versus": self.versus, "win_rates": self.win_rates, "summary": self.summary,
                "timings": self.timings, "kl": self.kl, "kl_details": self.kl_details, "config": self.config}


def choose_versus(models: Sequence[str], versus: str | None) -> str | None:
    """The model whose win rates are reported: ``versus`` if given (must be evaluated), else ``molma``
    when present, else the first model."""
    if versus is not None:
        if versus not in models:
            raise ValueError(f"versus={versus!r} is not among the evaluated models {list(models)}")
        return versus
    if not models:
        return None
    return "molma" if "molma" in models else models[0]


def response_texts(records: Sequence[ResponseRecord]) -> dict[tuple[str, str], str]:
    """``(model, prompt_id) -> response`` of saved records (to tell ties of identical text)."""
    return {(r.model, r.prompt_id): r.response for r in records}


def compare_pair(text: Mapping[tuple[str, str], str], scores: Mapping[str, Mapping[str, np.ndarray]],
                 ids: Sequence[str], a: str, b: str, objectives: Sequence[str], tie_tol: float = 0.0
                 ) -> dict[str, dict]:
    """Model ``a`` against model ``b`` per objective: :func:`molma.eval.stats.paired_comparison` with the
    identical-text flags of each prompt (``text`` from :func:`response_texts`)."""
    same = [text.get((a, pid)) == text.get((b, pid)) for pid in ids]
    return {o: paired_comparison(scores[a][o], scores[b][o], tie_tol, identical=same) for o in objectives}


def compute_result(records: Sequence[ResponseRecord], versus: str | None = None, tie_tol: float = 0.0,
                   kl: Mapping[str, float] | None = None, out_dir: Path | None = None,
                   models: Sequence[str] | None = None, objectives: Sequence[str] | None = None,
                   timings: Mapping[str, Mapping[str, float]] | None = None,
                   config: Mapping | None = None,
                   kl_details: Mapping[str, Mapping] | None = None) -> EvalResult:
    """Paired comparisons (of ``versus`` against every other model, per objective: win/tie/loss, the win
    share among non-tied prompts, sign test, mean difference with a bootstrap interval, identical-text
    ties; see :func:`molma.eval.stats.paired_comparison`) and reward summaries from saved responses;
    only prompts answered by every model are compared."""
    models = list(models) if models is not None else models_in(records)
    objectives = list(objectives) if objectives is not None else objectives_in(records)
    ids, scores = score_matrix(records, models, objectives)
    chosen = choose_versus(models, versus)
    rates: dict[str, dict[str, dict]] = {}
    if chosen is not None and ids:
        text = response_texts(records)
        for other in models:
            if other != chosen:
                rates[other] = compare_pair(text, scores, ids, chosen, other, objectives, tie_tol)
    summary = summary_table(scores, kl) if ids else []
    return EvalResult(out_dir=out_dir, models=models, objectives=objectives, prompt_ids=ids, scores=scores,
                      versus=chosen, win_rates=rates, summary=summary, records=list(records),
                      timings={k: dict(v) for k, v in (timings or {}).items()}, kl=dict(kl or {}),
                      config=dict(config or {}),
                      kl_details={k: dict(v) for k, v in (kl_details or {}).items() if k in (kl or {})})


def _objective_name(obj, key: str | None = None) -> str:
    return key if key is not None else getattr(obj, "name", type(obj).__name__)


def _as_objectives(objectives) -> dict[str, object]:
    if isinstance(objectives, Mapping):
        return dict(objectives)
    named = {}
    for obj in objectives:
        name = _objective_name(obj)
        if name in named:
            raise ValueError(f"two objectives are named {name!r}")
        named[name] = obj
    return named


def _as_prompts(prompts: Sequence[str | Prompt]) -> list[Prompt]:
    return [p if isinstance(p, Prompt) else Prompt(text=str(p)) for p in prompts]


def evaluate_models(models: Mapping[str, str | tuple], prompts: Sequence[str | Prompt], objectives,
                    config: EvalConfig | None = None, out_dir: str | Path | None = None,
                    loader: Callable[[str], tuple] | None = None,
                    kl: Mapping[str, float] | None = None) -> EvalResult:
    """Generate, score and compare: the model-based evaluation of paper section 4.3 (Figure 2a).

    ``models`` maps a display name to a model spec (builtin name, folder, peft adapter folder: see
    :func:`load_for_eval`, or your own ``loader``) or to a ready ``(model, tokenizer)`` pair.
    ``objectives`` is a list of ``Objective`` (``name`` + ``score(prompts, responses)``) or a
    ``{name: objective}`` mapping. With ``out_dir``, responses are saved after each model in
    ``out_dir/responses.jsonl`` and the statistics in ``out_dir/summary.json``; with ``config.resume`` a
    model already answered there (same prompts, same generation settings) is reused, and objectives it
    lacks are scored. ``config.kl_reference`` names an evaluated model: KL(model || it) is then estimated
    from teacher-forced per-token log-probs of each model's sampled responses with the non-negative k3
    estimator (:func:`kl_estimate`); ``kl`` supplies estimates from elsewhere (e.g. training metrics)
    for models not covered.
    """
    from molma.logs import ensure_progress_logging

    ensure_progress_logging()
    config = config or EvalConfig()
    loader = loader or load_for_eval
    prompts = _as_prompts(prompts)
    if not prompts:
        raise ValueError("no prompts to evaluate")
    if not models:
        raise ValueError("no models to evaluate")
    objs = _as_objectives(objectives)
    names = list(models)
    versus = choose_versus(names, config.versus)
    if config.kl_reference is not None and config.kl_reference not in models:
        raise ValueError(f"kl_reference={config.kl_reference!r} is not among the models {names}")
    ids = [prompt_id(i, len(prompts)) for i in range(len(prompts))]
    out = Path(out_dir) if out_dir is not None else None
    gen = config.generation()

    expected = {pid: p.text for pid, p in zip(ids, prompts)}
    records: dict[str, list[ResponseRecord]] = {}
    timings: dict[str, dict[str, float]] = {}
    saved_kl: dict[str, float] = {}
    saved_details: dict[str, dict] = {}
    if out is not None and config.resume and (out / RESPONSES).exists():
        prev = read_json_if_exists(out / SUMMARY) or {}
        prev_gen = (prev.get("config") or {}).get("generation")
        if prev_gen is not None and prev_gen != gen:
            raise ValueError(f"{out}: saved responses were generated with {prev_gen}, not {gen}; use "
                             "another output folder or resume=False (--no-resume) to regenerate")
        for rec in read_responses(out / RESPONSES):
            if expected.get(rec.prompt_id) != rec.prompt:
                raise ValueError(f"{out / RESPONSES}: prompt {rec.prompt_id} of model {rec.model!r} is not "
                                 "the same test prompt; use another output folder or resume=False")
            records.setdefault(rec.model, []).append(rec)
        for name in list(records):
            if len(records[name]) != len(expected):
                log.warning("%s: only %d of %d responses saved; regenerating", name, len(records[name]),
                            len(expected))
                del records[name]
            else:
                records[name].sort(key=lambda r: r.prompt_id)
        timings = {k: dict(v) for k, v in (prev.get("timings") or {}).items()}
        saved_kl = {m: float(v) for m, v in (prev.get("kl") or {}).items() if m in records}
        saved_details = {m: dict(v) for m, v in (prev.get("kl_details") or {}).items() if m in saved_kl}
    done = {m for m in records if m in models}
    cfg = {"generation": gen, "n_prompts": len(prompts),
           "models": {m: models[m] if isinstance(models[m], str) else "<in-memory model>" for m in names},
           "objectives": list(objs), "versus": versus, "tie_tol": config.tie_tol,
           "kl_reference": config.kl_reference, "eval_config": asdict(config)}
    if out is not None:  # record the generation settings first, so a killed run resumes safely
        write_json(out / SUMMARY, {"config": cfg, "timings": timings, "complete": False})
    extra = [m for m in records if m not in models]  # kept in the file, not in this result
    logprobs: dict[str, list[list[float]]] = {}
    ref_lp: dict[str, list[list[float]]] = {}

    def save() -> None:
        if out is not None:
            write_responses(out / RESPONSES,
                            [r for m in [*names, *extra] if m in records for r in records[m]])

    # The KL reference goes last so it can score every other model's responses while it is loaded.
    order = sorted(names, key=lambda m: m == config.kl_reference)
    for name in order:
        spec = models[name]
        reuse = name in done
        missing = [o for o in objs if reuse and any(o not in r.scores for r in records[name])]
        needs_model = not reuse or config.kl_reference is not None
        if reuse and not missing and not needs_model:
            log.info("%s: reusing %d saved responses", name, len(records[name]))
            continue
        model = tok = None
        t = timings.setdefault(name, {})
        if needs_model:
            t0 = time.perf_counter()
            model, tok = spec if isinstance(spec, tuple) else loader(str(spec))
            t["load_s"] = time.perf_counter() - t0
        if not reuse:
            log.info("%s: generating %d responses", name, len(prompts))
            t0 = time.perf_counter()
            responses = generate_responses(model, tok, prompts, config.max_new_tokens, config.seed,
                                           config.batch_size, config.do_sample, config.temperature,
                                           config.top_p, progress=f"generate {name}" if config.progress
                                           else False, system=config.system,
                                           precision=config.precision)
            t["generation_s"] = time.perf_counter() - t0
            records[name] = [ResponseRecord(prompt_id=pid, prompt=p.text, tag=p.tag, model=name, response=r)
                             for pid, p, r in zip(ids, prompts, responses)]
            missing = list(objs)
        responses = [r.response for r in records[name]]
        t0 = time.perf_counter()
        for obj_name in missing:
            values = score_responses(objs[obj_name], prompts, responses, config.score_batch_size,
                                     progress=f"score {name}/{obj_name}" if config.progress else False)
            for rec, v in zip(records[name], values):
                rec.scores[obj_name] = v
        if missing:
            t["scoring_s"] = (t.get("scoring_s", 0.0) if reuse else 0.0) + time.perf_counter() - t0
        if config.kl_reference is not None:
            t0 = time.perf_counter()
            if name == config.kl_reference:
                ref_lp = {m: response_logprobs(model, tok, prompts, [r.response for r in records[m]],
                                               config.batch_size, system=config.system, per_token=True)
                          for m in names}
                logprobs[name] = ref_lp[name]
            else:
                logprobs[name] = response_logprobs(model, tok, prompts, responses, config.batch_size,
                                                   system=config.system, per_token=True)
            t["logprob_s"] = time.perf_counter() - t0
        del model, tok
        save()

    kl_all = {**saved_kl, **(kl or {})}  # estimates of reused models are kept unless recomputed
    details = {m: v for m, v in saved_details.items() if m not in (kl or {})}
    for m in kl or {}:
        details[m] = {"estimator": "given (kl argument)"}
    if config.kl_reference is not None:
        for m in names:
            details[m] = kl_estimate(logprobs[m], ref_lp[m])
            kl_all[m] = details[m]["kl"]
    all_records = [r for m in names for r in records[m]]
    result = compute_result(all_records, versus, config.tie_tol, kl_all, out, names, list(objs),
                            {m: timings.get(m, {}) for m in names}, cfg, details)
    if out is not None:
        save()
        write_summary(out, result)
    return result


def kl_estimate(logp_policy: Sequence[Sequence[float]], logp_ref: Sequence[Sequence[float]]) -> dict:
    """KL(policy || reference) in nats per response from per-token log-probs of responses sampled from
    the policy: the mean over responses of the k3 sums (:func:`molma.eval.stats.k3_kl`, never negative).

    Returns ``kl``, ``kl_se`` (standard error of that mean), ``mean_log_ratio`` (the plain estimator, the
    mean of ``sum(log pi - log ref)``, unbiased too but it can come out negative), ``estimator``,
    ``n_responses`` and ``n_tokens``. When a response's tokenisation differs between the two models
    (different tokenizers), k3 is applied to whole sequences instead (``exp(D) - 1 - D`` with ``D`` the
    sequence log-ratio: still unbiased and non-negative, with more variance), and ``estimator`` says so.
    """
    if len(logp_policy) != len(logp_ref):
        raise ValueError(f"kl_estimate: {len(logp_policy)} responses under the policy, {len(logp_ref)} "
                         "under the reference")
    if not logp_policy:
        raise ValueError("kl_estimate: no responses")
    pol = [np.asarray(x, dtype=float).reshape(-1) for x in logp_policy]
    ref = [np.asarray(x, dtype=float).reshape(-1) for x in logp_ref]
    log_ratio = np.array([p.sum() - r.sum() for p, r in zip(pol, ref)])
    if all(p.size == r.size for p, r in zip(pol, ref)):
        values = k3_kl(pol, ref)
        estimator = "k3 per token, summed over the response"
    else:
        d = -log_ratio
        values = np.maximum(np.expm1(d) - d, 0.0)
        estimator = "k3 per response (the two tokenizations differ)"
    n = len(values)
    return {"kl": float(values.mean()), "kl_se": float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
            "mean_log_ratio": float(log_ratio.mean()), "estimator": estimator, "n_responses": n,
            "n_tokens": int(sum(p.size for p in pol))}


def write_summary(out_dir: str | Path, result: EvalResult) -> Path:
    """Write ``summary.json`` (config, win rates, reward summaries, KL, timings, environment)."""
    from molma.eval.report import environment_info

    data = result.to_json()
    data["environment"] = environment_info()
    path = Path(out_dir) / SUMMARY
    write_json(path, data)
    return path


def load_result(out_dir: str | Path, versus: str | None = None, tie_tol: float | None = None) -> EvalResult:
    """Recompute an :class:`EvalResult` from a saved evaluation folder (``responses.jsonl`` plus, if
    present, ``summary.json`` for the versus model, tie tolerance, KL, timings and config)."""
    out = Path(out_dir)
    records = read_responses(out / RESPONSES)
    prev = read_json_if_exists(out / SUMMARY) or {}
    models = [m for m in prev.get("models", []) if m in set(models_in(records))] or models_in(records)
    models += [m for m in models_in(records) if m not in models]
    chosen = versus  # an explicit choice must be evaluated; a saved one may name a dropped model
    if chosen is None and prev.get("versus") in models:
        chosen = prev["versus"]
    tol = tie_tol if tie_tol is not None else float(prev.get("config", {}).get("tie_tol", 0.0))
    return compute_result(records, chosen, tol, prev.get("kl") or {}, out, models, None,
                          prev.get("timings") or {}, prev.get("config") or {}, prev.get("kl_details") or {})


def rescore(out_dir: str | Path, objectives, batch_size: int = 16, versus: str | None = None,
            tie_tol: float | None = None, progress: bool = True) -> EvalResult:
    """Score the saved responses of ``out_dir/responses.jsonl`` with ``objectives`` (adding or replacing
    those scores; others are kept), rewrite the file and ``summary.json``, and return the new result."""
    out = Path(out_dir)
    records = read_responses(out / RESPONSES)
    if not records:
        raise ValueError(f"{out / RESPONSES}: no responses to re-score")
    objs = _as_objectives(objectives)
    prev = read_json_if_exists(out / SUMMARY) or {}
    timings = {k: dict(v) for k, v in (prev.get("timings") or {}).items()}
    for name in models_in(records):
        recs = [r for r in records if r.model == name]
        t0 = time.perf_counter()
        for obj_name, obj in objs.items():
            values = score_responses(obj, [r.prompt for r in recs], [r.response for r in recs], batch_size,
                                     progress=f"score {name}/{obj_name}" if progress else False)
            for rec, v in zip(recs, values):
                rec.scores[obj_name] = v
        timings.setdefault(name, {})["rescoring_s"] = time.perf_counter() - t0
    write_responses(out / RESPONSES, records)
    if timings:
        prev["timings"] = timings
    cfg = prev.setdefault("config", {})
    cfg["objectives"] = list(dict.fromkeys([*cfg.get("objectives", []), *objs]))
    if versus is not None:
        prev["versus"] = versus
    if tie_tol is not None:
        cfg["tie_tol"] = tie_tol
    write_json(out / SUMMARY, prev)
    result = load_result(out, versus, tie_tol)
    write_summary(out, result)
    return result
