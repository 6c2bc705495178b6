"""Eq. 3.2 loss, pairwise accuracy (ties) and score statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from molma.rewards import pairwise_accuracy, preference_loss, score_stats


def test_loss_matches_hand_computed_values():
    chosen = torch.tensor([1.0, 0.0, -2.0])
    rejected = torch.tensor([0.0, 0.0, 1.0])
    # -log(sigmoid(d)) = log(1 + exp(-d)) for d = 1, 0, -3
    expected = [math.log(1 + math.exp(-1.0)), math.log(2.0), math.log(1 + math.exp(3.0))]
    assert expected[0] == pytest.approx(0.3132617, abs=1e-6)
    assert expected[2] == pytest.approx(3.0485874, abs=1e-6)
    loss = preference_loss(chosen, rejected)
    assert loss.item() == pytest.approx(sum(expected) / 3, abs=1e-6)


def test_loss_is_finite_for_huge_margins_and_has_the_right_gradient():
    chosen = torch.tensor([-1000.0, 1000.0], requires_grad=True)
    rejected = torch.tensor([1000.0, -1000.0])
    loss = preference_loss(chosen, rejected)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(1000.0, rel=1e-6)
    loss.backward()
    # d/dc of mean(-logsigmoid(c - r)) = -(1 - sigmoid(c - r)) / n
    assert chosen.grad.tolist() == pytest.approx([-0.5, 0.0], abs=1e-6)


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        preference_loss(torch.zeros(3), torch.zeros(2))


def test_accuracy_counts_ties_separately_and_not_as_correct():
    chosen = torch.tensor([1.0, 2.0, 3.0, 4.0])
    rejected = torch.tensor([0.0, 2.0, 5.0, 4.0])
    acc = pairwise_accuracy(chosen, rejected)
    assert acc == {"n": 4, "correct": 1, "ties": 2, "incorrect": 1, "accuracy": 0.25}


def test_accuracy_of_empty_input_is_an_error():
    with pytest.raises(ValueError, match="no pairs"):
        pairwise_accuracy(torch.zeros(0), torch.zeros(0))


def test_score_stats_match_numpy():
    x = torch.randn(101, generator=torch.Generator().manual_seed(0))
    stats = score_stats(x)
    ref = x.double().numpy()
    assert stats["mean"] == pytest.approx(ref.mean())
    assert stats["std"] == pytest.approx(ref.std())
    assert stats["min"] == pytest.approx(ref.min()) and stats["max"] == pytest.approx(ref.max())
    for key, q in (("q05", 5), ("q25", 25), ("q50", 50), ("q75", 75), ("q95", 95)):
        assert stats[key] == pytest.approx(np.percentile(ref, q))
