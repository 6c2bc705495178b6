"""Policy and value losses per objective (MOLMA eq. 3.5-3.7) and PPO's clipped surrogate."""

from __future__ import annotations

import torch
from torch import Tensor

from molma.rl.gae import masked_mean


def apa_loss(logp: Tensor, logp_anchor: Tensor, advantages: Tensor, mask: Tensor, lam: float = 0.95
             ) -> Tensor:
    """APA (eq. 3.5): E[(log pi_phi(a|s) - log pi_0(a|s) - A_k(s, a) / lambda)^2] over response tokens.

    ``logp_anchor`` is the frozen initial policy pi_0 (not the rollout policy), as in the APA authors'
    code. ``advantages`` may carry a leading objective dim [K, B, T]; the result is then [K].
    """
    err = (logp - logp_anchor) - advantages / lam
    return masked_mean(err.pow(2), mask, dim=(-2, -1))


def value_loss(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Eq. 3.6: E[(V_k,psi - (A_k + V_k,psi_old))^2]; ``returns`` = A + V_old. [K, B, T] -> [K]."""
    return masked_mean((values - returns).pow(2), mask, dim=(-2, -1))


def ppo_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.1) -> Tensor:
    """PPO clipped surrogate (Schulman et al. 2017), one per objective as in GAPO (arXiv 2507.01915,
    appendix B.2): -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)], rho = pi_phi / pi_old."""
    ratio = torch.exp(logp - logp_old)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)
    return -masked_mean(surrogate, mask, dim=(-2, -1))
