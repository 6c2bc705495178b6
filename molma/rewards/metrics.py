"""The binary ranking loss of eq. 3.2 and pairwise accuracy (section 4.2).

Accuracy follows the paper's rule: a pair is correct when the chosen response scores strictly higher
than the rejected one. Exact ties are counted separately (``ties``) and are *not* correct, so
``accuracy = correct / n`` and ``correct + ties + incorrect = n``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Eq. 3.2 averaged over pairs: ``mean(-log(sigmoid(r(x, y_c) - r(x, y_r))))``.

    Computed with ``logsigmoid`` so large negative margins give a large finite loss, not ``inf``.
    """
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen and rejected scores differ in shape: {tuple(chosen.shape)} vs "
                         f"{tuple(rejected.shape)}")
    return -F.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float | int]:
    """``n``, ``correct`` (chosen > rejected), ``ties`` (equal), ``incorrect`` and ``accuracy``
    (= correct / n; ties are not correct) for paired scores."""
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen and rejected scores differ in shape: {tuple(chosen.shape)} vs "
                         f"{tuple(rejected.shape)}")
    n = int(chosen.numel())
    if n == 0:
        raise ValueError("pairwise_accuracy: no pairs")
    correct = int((chosen > rejected).sum())
    ties = int((chosen == rejected).sum())
    return {"n": n, "correct": correct, "ties": ties, "incorrect": n - correct - ties,
            "accuracy": correct / n}


def score_stats(values: torch.Tensor) -> dict[str, float]:
    """Mean, std (population), min, max and the 5/25/50/75/95 % quantiles of a score vector."""
    x = values.detach().double().flatten()
    if x.numel() == 0:
        raise ValueError("score_stats: empty")
    q = torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64))
    out = {"mean": x.mean().item(), "std": x.std(correction=0).item(), "min": x.min().item()}
    out.update({f"q{int(round(p * 100)):02d}": v for p, v in zip(QUANTILES, q.tolist())})
    out["max"] = x.max().item()
    return out
