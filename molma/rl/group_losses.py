"""Critic-free policy losses for GRPO / RLOO, one per objective (so the gradient engine can combine them):
the token-level clipped surrogate with per-sequence advantages and the k3 KL penalty to the reference.

Shapes follow :mod:`molma.rl.losses`: ``logp``, ``logp_old``, ``logp_ref`` and ``mask`` are ``[B, T]``
(per-token log-probabilities of the sampled response tokens; ``mask`` 1 on response tokens). The
advantages are per sequence, as :mod:`molma.rl.group_advantages` returns them: ``[B, K]`` (or ``[B]``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from molma.rl.gae import masked_mean

LossAggregation = Literal["token", "sequence"]


def k3_kl(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) at tokens sampled from pi (Schulman 2020, "Approximating
    KL divergence"; GRPO eq. 4): ``exp(d) - d - 1`` with ``d = log pi_ref - log pi``; >= 0, unbiased."""
    d = logp_ref - logp
    return torch.expm1(d) - d


def sequence_kl_penalty(rewards: Tensor, logp_old: Tensor, logp_ref: Tensor, mask: Tensor, beta: float) -> Tensor:
    """KL "in the reward" for critic-free methods (TRL's RLOO, Ahmadian et al. 2024): every objective's
    sequence reward minus ``beta * sum_t (log pi_old - log pi_ref)`` over the response tokens.

    ``rewards``: [B, K] or [B]; returns the same shape. ``beta = 0`` returns the rewards unchanged.
    """
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    kl = ((logp_old - logp_ref) * mask.to(logp_old.dtype)).sum(dim=-1).to(rewards.dtype)
    return rewards - beta * (kl.unsqueeze(-1) if rewards.dim() == 2 else kl)


def group_policy_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, *, clip: float = 0.2,
                      clip_high: float | None = None, logp_ref: Tensor | None = None, beta: float = 0.0,
                      aggregation: LossAggregation = "token") -> Tensor:
    """GRPO / RLOO policy loss per objective (Shao et al. 2024, eq. 3; DAPO's clip-higher optional):

    ``L_k = -AGG_t[min(rho_t A_k, clip(rho_t, 1 - clip, 1 + clip_high) A_k) - beta * KL3_t]``,
    ``rho_t = exp(logp_t - logp_old_t)``, ``KL3_t = k3_kl(logp_t, logp_ref_t)``.

    - ``advantages``: per sequence, [B, K] -> result [K]; [B] -> a 0-d result (broadcast over tokens);
      or per token, [K, B, T] -> [K], the layout :func:`molma.rl.losses.ppo_loss` takes (e.g. GAE
      advantages combined by :func:`molma.rl.lagrangian.lagrangian_advantages`).
    - ``aggregation``: ``"token"`` = the mean over all response tokens of the batch (DAPO / TRL's default
      ``loss_type="dapo"`` on one process; the same reduction as :func:`molma.rl.losses.ppo_loss`);
      ``"sequence"`` = the mean over tokens per sequence, then over sequences (the GRPO paper, TRL's
      ``loss_type="grpo"``). Sequences without response tokens count as 0 in ``"sequence"``.
    - ``beta * KL3`` (to the reference ``logp_ref``) is added to EVERY objective's loss, as TRL adds it to
      its one loss: a combination whose weights sum to 1 then carries exactly one KL term. ``beta = 0``
      needs no ``logp_ref``. For KL in the reward instead, use :func:`sequence_kl_penalty` and beta = 0.
    """
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    high = clip if clip_high is None else clip_high
    if not high > 0:
        raise ValueError(f"clip_high must be > 0, got {clip_high}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and logp_ref is None:
        raise ValueError("beta > 0 needs logp_ref (the reference policy's token log-probs)")
    if aggregation not in ("token", "sequence"):
        raise ValueError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")
    if logp.shape != logp_old.shape or logp.shape != mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, logp_old {tuple(logp_old.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same [B, T] shape")
    squeeze = advantages.dim() == 1
    if advantages.dim() == 3 and advantages.shape[1:] == logp.shape:  # per token, as ppo_loss takes them
        adv = advantages.to(logp.dtype)
    elif advantages.dim() in (1, 2) and advantages.shape[0] == logp.shape[0]:
        adv = (advantages.unsqueeze(-1) if squeeze else advantages).T.unsqueeze(-1).to(logp.dtype)  # [K, B, 1]
    else:
        raise ValueError(f"advantages must be [B] or [B, K] (per sequence) or [K, B, T] (per token) with "
                         f"[B, T] = {tuple(logp.shape)}, got {tuple(advantages.shape)}")
    ratio = torch.exp(logp - logp_old)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + high) * adv)  # [K, B, T]
    per_token = -surrogate
    if beta > 0:
        per_token = per_token + beta * k3_kl(logp, logp_ref)
    if aggregation == "token":
        loss = masked_mean(per_token, mask, dim=(-2, -1))
    else:
        loss = masked_mean(per_token, mask, dim=-1).mean(dim=-1)
    return loss.squeeze(0) if squeeze else loss
