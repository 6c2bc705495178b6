"""Generalised advantage estimation (Schulman et al. 2016), one per objective (MOLMA section 3.3.2)."""

from __future__ import annotations

import torch
from torch import Tensor


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[Tensor, Tensor]:
    """Advantages and returns for left-aligned response tokens.

    rewards, values: [..., B, T] (leading objective dims allowed); mask: [B, T], 1 on response tokens
    (a contiguous prefix of each row). The value after the last response token is 0 (episode ends).
    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1};  returns = A + V.
    Masked positions get advantage 0 and return 0.
    """
    mask = mask.to(values.dtype)
    T = values.shape[-1]
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[..., 0])
    for t in reversed(range(T)):
        next_v = values[..., t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[..., t] + gamma * next_v - values[..., t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[..., t] = last
    returns = (adv + values) * mask
    return adv * mask, returns


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim=dim) / mask.sum(dim=dim).clamp(min=1.0)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Whiten advantages over the response tokens of the batch (per leading objective index)."""
    m = mask.to(x.dtype)
    dims = (-2, -1)
    n = m.sum().clamp(min=1.0)
    mean = (x * m).sum(dim=dims, keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(dim=dims, keepdim=True) / n
    return (x - mean) * torch.rsqrt(var + eps) * m
