"""The :class:`Objective` protocol (one reward signal of the multi-objective reward vector r(s, a) of
eq. 3.1), rule-based reward functions, and :func:`load_objective` resolving objectives named as strings.

Every objective maps ``(prompts, responses)`` to a float32 CPU tensor of shape ``[B]`` computed without
gradients. Non-finite rewards are never passed on silently: :func:`check_finite` raises
:class:`NonFiniteRewardError` naming the objective and the offending response.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

RewardFn = Callable[[list[str], list[str]], "Sequence[float] | torch.Tensor"]


class NonFiniteRewardError(FloatingPointError):
    """An objective produced NaN or +-inf for some response."""


@runtime_checkable
class Objective(Protocol):
    """One objective: a named scorer of responses to prompts.

    ``score`` returns a float32 tensor of shape ``[len(prompts)]`` on the CPU, computed without gradients.
    """

    name: str

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor: ...


def check_finite(scores: torch.Tensor, name: str, responses: Sequence[str] | None = None) -> torch.Tensor:
    """Return ``scores`` unchanged, or raise :class:`NonFiniteRewardError` naming objective and index."""
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        snippet = f" (response {responses[i][:80]!r})" if responses is not None and i < len(responses) else ""
        more = f"; {len(bad) - 1} more non-finite score(s)" if len(bad) > 1 else ""
        raise NonFiniteRewardError(
            f"objective {name!r} produced a non-finite score {scores[i].item()} for response index {i}"
            f"{snippet}{more}"
        )
    return scores


def _check_batch(prompts: Sequence[str], responses: Sequence[str], name: str) -> None:
    if len(prompts) != len(responses):
        raise ValueError(
            f"objective {name!r}: got {len(prompts)} prompts but {len(responses)} responses; "
            "they must pair up"
        )


class RewardFunction:
    """An :class:`Objective` wrapping a plain Python function ``fn(prompts, responses)`` that returns a
    list of floats or a tensor (rule-based rewards)."""

    def __init__(self, fn: RewardFn, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "reward_function")

    def __repr__(self) -> str:
        return f"RewardFunction(name={self.name!r}, fn={getattr(self.fn, '__name__', self.fn)!r})"

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Scores as float32 ``[B]`` on the CPU, no grad; raises on a wrong count or non-finite values."""
        _check_batch(prompts, responses, self.name)
        with torch.no_grad():
            out = self.fn(list(prompts), list(responses))
            scores = (out.detach() if isinstance(out, torch.Tensor) else torch.as_tensor(out))
            scores = scores.to(device="cpu", dtype=torch.float32).reshape(-1)
        if scores.numel() != len(responses):
            raise ValueError(
                f"objective {self.name!r}: function returned {scores.numel()} scores for "
                f"{len(responses)} responses"
            )
        return check_finite(scores, self.name, responses)


_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def length_reward(cap: int = 50, name: str = "length") -> RewardFunction:
    """Rewards longer answers up to a cap: ``min(words, cap) / cap`` in [0, 1] (words = runs of letters,
    digits and apostrophes)."""
    if cap <= 0:
        raise ValueError(f"length_reward: cap must be > 0, got {cap}")

    def length(prompts: list[str], responses: list[str]) -> list[float]:
        return [min(len(_WORD.findall(r)), cap) / cap for r in responses]

    return RewardFunction(length, name)


DEFAULT_BANNED_WORDS = ("the", "a", "an", "and", "is", "of", "to")
"""Default banned set for ``rule:banned_words``: common words, so that the objective conflicts with
:func:`length_reward` (longer answers tend to contain more of them)."""


def banned_words_reward(words: Iterable[str] = DEFAULT_BANNED_WORDS, penalty: float = 1.0,
                        name: str = "banned_words") -> RewardFunction:
    """Penalises a set of words: ``-penalty * (number of occurrences)``, matched case-insensitively as
    whole words (0 for a clean answer)."""
    banned = {w.strip().lower() for w in words if w.strip()}
    if not banned:
        raise ValueError("banned_words_reward: the word list is empty")
    if penalty < 0:
        raise ValueError(f"banned_words_reward: penalty must be >= 0, got {penalty}")

    def banned_words(prompts: list[str], responses: list[str]) -> list[float]:
        return [-penalty * sum(w.lower() in banned for w in _WORD.findall(r)) for r in responses]

    return RewardFunction(banned_words, name)


RULES: dict[str, Callable[..., RewardFunction]] = {
    "length": length_reward,
    "banned_words": banned_words_reward,
}
"""Rule name -> factory used by ``load_objective("rule:<name>[:key=value,...]")``."""


def register_rule(name: str, factory: Callable[..., RewardFunction]) -> None:
    """Make ``rule:<name>`` resolvable by :func:`load_objective`."""
    RULES[name] = factory


def _parse_rule_args(text: str, spec: str) -> dict[str, Any]:
    """``cap=30,penalty=0.5,words=the|a`` -> kwargs (numbers parsed, ``|`` separates list items)."""
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ValueError(f"objective spec {spec!r}: argument {item!r} is not key=value")
        key, raw = (s.strip() for s in item.split("=", 1))
        value: Any
        if key == "words" or "|" in raw:
            value = [w for w in raw.split("|") if w]
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        kwargs[key] = value
    return kwargs


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def _hub_offline() -> bool:
    import os

    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
           for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - a transformers dependency
        return False


def check_objective_spec(spec: str, name: str | None = None) -> None:
    """Check an objective spec without loading any model (for early, fast errors): a known rule with
    valid arguments; a reward-model folder that exists and holds ``config.json``; or a hub id
    (``owner/name``). A spec that is neither an existing folder nor a plausible hub id (several slashes, a
    leading ``.``, ``/`` or ``~``, no slash, or a first component that is a local folder, as in
    ``runs/rm-hepl``) is an error, as is a hub id that is not in the local cache when the hub is offline
    (``HF_HUB_OFFLINE=1``). Raises ``ValueError`` (``FileNotFoundError`` for a missing folder) naming the
    objective."""
    from pathlib import Path

    from molma.models import BUILTIN_MODELS

    label = f"objective {name!r}" if name else "objective"
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{label}: empty spec; expected a reward-model folder, a hub id or rule:NAME")
    if spec.startswith("rule:"):
        load_objective(spec, name)  # builds a RewardFunction: cheap, and checks the rule and its arguments
        return
    if spec in BUILTIN_MODELS:
        raise ValueError(f"{label}: {spec!r} is a language model, not a reward model; train one with "
                         f"'molma rm train --base {spec}' and pass its folder")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(f"{label}: {spec} is not a reward-model folder (no config.json)")
        return
    first = spec.split("/", 1)[0]
    if (not _HUB_ID.match(spec) or spec.startswith(("/", ".", "~"))
            or (Path(first).expanduser().is_dir() and first not in ("", "."))):
        where = path.parent if path.parent.exists() else None
        hint = ""
        if where is not None:
            near = sorted(p.name for p in where.iterdir() if p.is_dir() and (p / "config.json").is_file())[:8]
            hint = f"; reward models in {where}: {', '.join(near)}" if near else f"; no reward models in {where}"
        raise FileNotFoundError(f"{label}: reward-model folder {spec} not found{hint} (a hub model is "
                                "named owner/name)")
    if _hub_offline():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "config.json")
        except Exception:  # noqa: BLE001 - a malformed id: treat as not cached
            cached = None
        if not isinstance(cached, str):
            raise FileNotFoundError(f"{label}: {spec} is neither a local folder nor in the hub cache, and the "
                                    "hub is offline (HF_HUB_OFFLINE)")


def load_objective(spec: str, name: str | None = None, *, device: str | None = None,
                   **model_kwargs: Any) -> Objective:
    """Resolve an objective named as a string.

    - ``rule:<name>[:key=value,...]``: a rule-based :class:`RewardFunction` from :data:`RULES`, e.g.
      ``rule:length``, ``rule:length:cap=30``, ``rule:banned_words:words=kill|steal,penalty=2``
      (it scores text, so ``device`` does not concern it);
    - anything else: a reward-model checkpoint folder (or hub id) loaded with
      :meth:`RewardModel.from_pretrained` on ``device`` (default the CPU; ``model_kwargs``:
      batch_size, max_length).
    """
    if spec.startswith("rule:"):
        rule, _, args = spec[len("rule:"):].partition(":")
        if rule not in RULES:
            raise ValueError(f"objective spec {spec!r}: unknown rule {rule!r}; "
                             f"known rules: {', '.join(sorted(RULES))}")
        kwargs = _parse_rule_args(args, spec)
        try:
            objective = RULES[rule](**kwargs)
        except TypeError as err:
            raise ValueError(f"objective spec {spec!r}: {err}") from err
        if name:
            objective.name = name
        return objective
    from molma.rewards.model import RewardModel

    if device is not None:
        model_kwargs["device"] = device
    return RewardModel.from_pretrained(spec, name=name, **model_kwargs)
