"""Reward shaping, MOLMA eq. 3.3-3.4: r_bar = WHITEN(LOGIT(r)) - beta * KL, per objective, per token.

And the scalarisations of the single-objective baselines (paper section 4.3): SO-help / SO-safe pick one
objective, SO-weighted (eq. 4.1) averages the shaped rewards, SO-piecewise (eq. 4.2, Llama-2 style)
takes the safety reward when it is below a threshold and the helpfulness reward otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def logit_of_score(scores: Tensor, eps: float = 1e-6) -> Tensor:
    """LOGIT (eq. 3.4): scores are mapped to probabilities with a sigmoid, clamped to [eps, 1 - eps] so
    nothing is infinite, then back through the logit. For raw reward-model scores this clips them to
    +-logit(1 - eps), computed here directly on the score (exact and symmetric: a float32 sigmoid would
    saturate at 13.80 above and -13.82 below); for probability-valued rewards (the piecewise rule) use
    :func:`logit_of_prob`."""
    bound = math.log1p(-eps) - math.log(eps)  # logit(1 - eps), in float64
    return scores.clamp(-bound, bound)


def logit_of_prob(probs: Tensor, eps: float = 1e-6) -> Tensor:
    """The logit of probabilities clamped to [eps, 1 - eps], computed in float64 (1 - eps is not a
    float32 number for small eps) and returned in the input's dtype."""
    p = probs.double().clamp(eps, 1.0 - eps)
    return (torch.log(p) - torch.log1p(-p)).to(probs.dtype)


def whiten(x: Tensor, dim: int = -1, eps: float = 1e-8, shift_mean: bool = True) -> Tensor:
    """WHITEN (eq. 3.4): zero mean, unit variance within the batch along ``dim`` (population std, as
    in the Llama-2 / TRL convention). A batch of one, or of identical values, whitens to zeros."""
    mean = x.mean(dim=dim, keepdim=True)
    var = x.var(dim=dim, keepdim=True, unbiased=False)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def per_token_kl(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token KL estimate log pi_phi(a|s) - log pi_0(a|s) of the sampled tokens (eq. 3.3)."""
    return logp - logp_ref


def token_rewards(sequence_reward: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token rewards for GAE: -beta * KL at every response token, plus the (shaped) sequence reward
    on the last response token (eq. 3.3).

    sequence_reward: [K, B] (or [B]); kl, mask: [B, T] (mask 1 on response tokens, left-aligned).
    Returns [K, B, T] (or [B, T]).
    """
    squeeze = sequence_reward.dim() == 1
    r = sequence_reward.unsqueeze(0) if squeeze else sequence_reward
    mask = mask.to(kl.dtype)
    rewards = (-beta * kl * mask).unsqueeze(0).expand(r.shape[0], -1, -1).clone()
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # index of the last response token
    batch = torch.arange(mask.shape[0], device=mask.device)
    rewards[:, batch, last] += r * (mask.sum(dim=1) > 0).to(r.dtype)
    return rewards[0] if squeeze else rewards


def shape_objective_rewards(scores: Tensor, eps: float = 1e-6) -> Tensor:
    """WHITEN(LOGIT(r)) per objective; ``scores`` is [K, B] of raw objective scores."""
    return whiten(logit_of_score(scores, eps), dim=-1)


def piecewise_reward(help_scores: Tensor, safe_scores: Tensor, delta: float, eps: float = 1e-6) -> Tensor:
    """SO-piecewise (eq. 4.2): r_p = r_safe if r_safe < delta else r_help, in probability space
    (sigmoid of the scores, as in Llama 2 where delta = 0.15), then WHITEN(LOGIT(r_p)).

    A response whose safety probability equals delta counts as safe (takes the helpfulness reward).
    """
    p_safe = torch.sigmoid(safe_scores.double())  # float64: no early saturation at 1 - eps_float32
    p_help = torch.sigmoid(help_scores.double())
    r_p = torch.where(p_safe < delta, p_safe, p_help)
    return whiten(logit_of_prob(r_p, eps), dim=-1).to(help_scores.dtype)


def scalarize(
    scores: Tensor,
    names: list[str],
    scheme: str,
    *,
    help_name: str = "help",
    safe_name: str = "safe",
    weights: list[float] | None = None,
    piecewise_delta: float = 0.15,
    eps: float = 1e-6,
) -> Tensor:
    """Sequence-level shaped reward [B] of a single-objective baseline from raw scores [K, B].

    ``scheme``: ``single:<name>`` (SO-help, SO-safe), ``weighted`` (eq. 4.1, mean of the shaped
    objective rewards, or a weighted mean with ``weights``), ``piecewise`` (eq. 4.2).
    """
    if scheme.startswith("single:"):
        name = scheme.split(":", 1)[1]
        if name not in names:
            raise ValueError(f"objective {name!r} not among the objectives {names}")
        return shape_objective_rewards(scores[names.index(name)].unsqueeze(0), eps)[0]
    if scheme == "weighted":
        shaped = shape_objective_rewards(scores, eps)
        w = torch.full((len(names),), 1.0 / len(names)) if weights is None else torch.tensor(weights)
        if w.numel() != len(names):
            raise ValueError(f"{len(w)} weights for {len(names)} objectives")
        w = w / w.sum()
        return (w.to(device=shaped.device, dtype=shaped.dtype).unsqueeze(1) * shaped).sum(dim=0)
    if scheme == "piecewise":
        for n in (help_name, safe_name):
            if n not in names:
                raise ValueError(f"piecewise reward needs objective {n!r}; objectives: {names}")
        return piecewise_reward(scores[names.index(help_name)], scores[names.index(safe_name)],
                                piecewise_delta, eps)
    raise ValueError(f"unknown scalarisation {scheme!r}")
