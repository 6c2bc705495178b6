"""Critic-free advantages from groups of samples per prompt: GRPO and RLOO per objective, and TRL's two
scalarised multi-reward GRPO aggregations (the baselines "what TRL does").

Layout (every function): ``rewards`` is ``[N, K]`` (N = num_groups * group_size responses, K objectives)
or ``[N]`` for one objective. The ``group_size`` responses to one prompt are CONTIGUOUS rows: group g
is rows ``g * group_size ... (g + 1) * group_size - 1`` (TRL's ``rewards.view(-1, num_generations)``
layout; ``prompts.repeat_interleave(group_size)`` produces it). Rewards must be finite (molma's
objectives always score; TRL's "reward function returned None" NaN rows are not reproduced).

Numerics: statistics in float64, results in the rewards' floating dtype (float32 for integer input).
Standard deviations use Bessel's correction (``N / (N - 1)``), as TRL's ``nanstd`` does, and the
denominator is ``std + eps`` with ``eps = 1e-4`` (:data:`GROUP_EPS`, TRL's value), so a group of equal
rewards never divides by zero. The per-objective functions also set the advantages of a group whose
rewards are all equal to exactly 0 (without that, float rounding of the group mean can leave ~1e-13).
A group of one response has no baseline: its advantage is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

GROUP_EPS = 1e-4
"""Added to the standard deviation before dividing (TRL 1.16 ``grpo_trainer.py``: ``std + 1e-4``)."""

ScaleRewards = Literal["group", "batch", "none"]
Aggregation = Literal["sum_then_normalize", "normalize_then_sum"]


def _as_matrix(rewards: Tensor, group_size: int) -> tuple[Tensor, bool, torch.dtype]:
    """Validate; return the rewards as float64 ``[N, K]``, whether the input was 1-D, the output dtype."""
    rewards = torch.as_tensor(rewards)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    if rewards.dim() not in (1, 2):
        raise ValueError(f"rewards must be [N] or [N, K], got shape {tuple(rewards.shape)}")
    n = rewards.shape[0]
    if n == 0 or n % group_size:
        raise ValueError(f"the number of responses ({n}) must be a positive multiple of group_size ({group_size})")
    if not torch.isfinite(rewards).all():
        flat = rewards.reshape(n, -1)
        row, col = torch.nonzero(~torch.isfinite(flat))[0].tolist()
        raise ValueError(f"rewards must be finite; row {row}, objective {col} is {flat[row, col].item()}")
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    squeeze = rewards.dim() == 1
    return rewards.reshape(n, -1).to(torch.float64), squeeze, dtype


def _out(x: Tensor, squeeze: bool, dtype: torch.dtype) -> Tensor:
    return (x.squeeze(-1) if squeeze else x).to(dtype)


def _std(x: Tensor, dim: int, unbiased: bool = True) -> Tensor:
    """Standard deviation over ``dim`` (keepdim), Bessel-corrected when ``unbiased``; 0 where there is
    a single value (TRL uses 0 in that case too)."""
    if x.shape[dim] < 2:
        return torch.zeros_like(x.mean(dim=dim, keepdim=True))
    return x.var(dim=dim, keepdim=True, correction=1 if unbiased else 0).sqrt()


def _grouped(x: Tensor, group_size: int) -> Tensor:
    """[N, K] -> [num_groups, group_size, K]."""
    return x.reshape(-1, group_size, x.shape[-1])


def _zero_constant_groups(adv: Tensor, grouped_rewards: Tensor) -> Tensor:
    """Exactly 0 where a group's rewards (per objective) are all equal. adv: [G, S, K]."""
    constant = (grouped_rewards.amax(dim=1, keepdim=True) == grouped_rewards.amin(dim=1, keepdim=True))
    return torch.where(constant, torch.zeros_like(adv), adv)


def grpo_advantages(rewards: Tensor, group_size: int, *, scale: ScaleRewards = "group",
                    eps: float = GROUP_EPS, unbiased: bool = True) -> Tensor:
    """GRPO advantages per objective (Shao et al. 2024, DeepSeekMath, eq. 3 / section 4.1.2):
    ``A_ik = (r_ik - mean_group(r_k)) / (std_group(r_k) + eps)``, each objective on its own.

    ``scale``: ``"group"`` divides by the group's std (GRPO), ``"batch"`` by the std of objective k over
    all N responses (PPO-Lite), ``"none"`` only centres (Dr. GRPO) - TRL's ``scale_rewards`` choices.
    ``unbiased``: Bessel's correction (TRL: yes). Returns the shape of ``rewards`` ([N, K] or [N]); every
    group sums to zero per objective; a group of equal rewards gives exactly zero.
    """
    r, squeeze, dtype = _as_matrix(rewards, group_size)
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    g = _grouped(r, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = adv / (_std(g, dim=1, unbiased=unbiased) + eps)
    elif scale == "batch":
        adv = adv / (_std(r, dim=0, unbiased=unbiased).unsqueeze(0) + eps)
    return _out(_zero_constant_groups(adv, g).reshape(r.shape), squeeze, dtype)


def rloo_advantages(rewards: Tensor, group_size: int, *, normalize: bool = False,
                    eps: float = GROUP_EPS) -> Tensor:
    """REINFORCE leave-one-out advantages per objective (Kool et al. 2019; Ahmadian et al. 2024, eq. 5):
    ``A_ik = r_ik - 1/(G-1) sum_{j != i} r_jk = G/(G-1) (r_ik - mean_group(r_k))`` for a group of G.

    ``normalize``: then whiten each objective over all N responses, ``(A - mean) / (std + eps)`` (Bessel),
    as TRL's ``RLOOConfig.normalize_advantages`` does for its one scalar reward. Groups of one response
    and groups of equal rewards give exactly zero (before ``normalize``).
    """
    r, squeeze, dtype = _as_matrix(rewards, group_size)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if group_size == 1:
        return _out(torch.zeros_like(r), squeeze, dtype)
    g = _grouped(r, group_size)
    adv = _zero_constant_groups(group_size / (group_size - 1) * (g - g.mean(dim=1, keepdim=True)), g)
    adv = adv.reshape(r.shape)
    if normalize:
        adv = (adv - adv.mean(dim=0, keepdim=True)) / (_std(adv, dim=0) + eps)
    return _out(adv, squeeze, dtype)


def trl_multi_reward_advantages(rewards: Tensor, group_size: int, reward_weights: Sequence[float] | None = None,
                                aggregation: Aggregation = "sum_then_normalize",
                                scale_rewards: ScaleRewards | bool = "group") -> Tensor:
    """TRL's scalarised multi-reward GRPO advantages, one per response ([N]).

    Written from the definitions in trl 1.16.0, ``trl/trainer/grpo_trainer.py``
    (``GRPOTrainer._generate_and_score_completions``) and ``trl/trainer/grpo_config.py``
    (``reward_weights``, ``multi_objective_aggregation``, ``scale_rewards``); std = TRL's ``nanstd``
    (Bessel-corrected), eps = 1e-4. With w = ``reward_weights`` (default all 1):

    - ``"sum_then_normalize"`` (TRL's default): ``s_i = sum_k w_k r_ik``;
      ``A_i = (s_i - mean_group(s)) / (std(s) + 1e-4)`` where std is the group's std
      (``scale_rewards="group"``, default) or the std of s over the whole batch (``"batch"``; the mean
      stays the group mean); ``"none"``: ``A_i = s_i - mean_group(s)``.
    - ``"normalize_then_sum"`` (GDPO, arXiv 2601.05242): ``z_ik = (r_ik - mean_group(r_k)) /
      (std_group(r_k) + 1e-4)``; ``s_i = sum_k w_k z_ik``; ``A_i = (s_i - mean_batch(s)) /
      (std_batch(s) + 1e-4)``. TRL ignores ``scale_rewards`` here, and so does this function.

    ``scale_rewards`` ``True`` / ``False`` mean ``"group"`` / ``"none"`` (as in ``GRPOConfig``). A group of
    one response has std 0 (TRL's convention). No constant-group zeroing: the formula as TRL writes it.
    """
    r, _, dtype = _as_matrix(rewards, group_size)
    k = r.shape[1]
    w = torch.ones(k, dtype=torch.float64) if reward_weights is None else \
        torch.as_tensor([float(x) for x in reward_weights], dtype=torch.float64)
    if w.shape != (k,):
        raise ValueError(f"reward_weights has {w.numel()} values for {k} rewards")
    if not torch.isfinite(w).all():
        raise ValueError(f"reward_weights must be finite, got {w.tolist()}")
    scale = {True: "group", False: "none"}.get(scale_rewards, scale_rewards) \
        if isinstance(scale_rewards, bool) else scale_rewards
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    if aggregation == "sum_then_normalize":
        s = (r * w).sum(dim=1)
        g = s.reshape(-1, group_size)
        centred = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
        if scale == "none":
            return centred.to(dtype)
        std = _std(g, dim=1).expand_as(g).reshape(-1) if scale == "group" else _std(s, dim=0)
        return (centred / (std + GROUP_EPS)).to(dtype)
    if aggregation == "normalize_then_sum":
        g = _grouped(r, group_size)
        z = ((g - g.mean(dim=1, keepdim=True)) / (_std(g, dim=1) + GROUP_EPS)).reshape(r.shape)
        s = (z * w).sum(dim=1)
        return ((s - s.mean()) / (_std(s, dim=0) + GROUP_EPS)).to(dtype)
    raise ValueError(f"aggregation must be 'sum_then_normalize' or 'normalize_then_sum', got {aggregation!r}")
