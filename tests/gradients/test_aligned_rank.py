"""Aligned-MTL's rank tolerance (issue 16): a dominated objective keeps its share; float32 round-off of
dependent gradients is still rank-deficient; a rank drop is logged."""

from __future__ import annotations

import logging

import pytest
import torch

from molma.gradients import MultiObjectiveBackward
from molma.gradients.linalg import balance_transformation, combine, gramian, rank
from molma.gradients.weightings import AlignedMTL


def _orthogonal_pair(ratio: float, P: int = 4096, seed: int = 0) -> torch.Tensor:
    """2 x P float32 gradients, orthogonal (to float64 precision before the cast), norms ratio and 1."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(P, 2, generator=g, dtype=torch.float64))
    return torch.stack([ratio * Q[:, 0], Q[:, 1]]).float()


def test_the_audit_example_gives_algorithm_1s_balanced_update():
    """g1 = [3000, 0], g2 = [0, 1]: Algorithm 1 updates by [0.5, 0.5], not [1500, 0]."""
    J = torch.tensor([[3000.0, 0.0], [0.0, 1.0]])
    alpha = AlignedMTL()(gramian([J]))
    update = combine([J], alpha)[0]
    torch.testing.assert_close(update, torch.tensor([0.5, 0.5]), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("ratio", [10.0, 3000.0, 1e5])
def test_orthogonal_gradients_of_very_different_norms_keep_both_objectives(ratio):
    J = _orthogonal_pair(ratio)
    M = gramian([J])  # float32 block products, float64 sum: as the engine computes it
    assert rank(M) == 2
    alpha = AlignedMTL()(M)
    contributions = alpha.float() * J.double().norm(dim=1).float()  # ||alpha_k g_k||
    torch.testing.assert_close(contributions, torch.tensor([0.5, 0.5]), rtol=1e-3, atol=0)


@pytest.mark.parametrize("c", [3.7, -0.3, 1e-3])
def test_dependent_float32_gradients_are_still_rank_one(c):
    """g2 = fl32(c * g1) is not exactly collinear in float32; a tolerance at float64 precision would
    call it rank 2 and shrink the update to round-off. Rank 1 gives the mean of the two gradients."""
    g1 = torch.randn(4096, generator=torch.Generator().manual_seed(3))
    J = torch.stack([g1, (c * g1.double()).float()])
    M = gramian([J])
    B, r = balance_transformation(M)
    assert r == 1
    update = combine([J], AlignedMTL()(M))[0]
    torch.testing.assert_close(update, J.mean(0), rtol=1e-4, atol=1e-6 * float(g1.norm()))


def test_a_rank_drop_is_logged(caplog):
    weighting = AlignedMTL()
    g1 = torch.randn(64, generator=torch.Generator().manual_seed(0))
    dependent = gramian([torch.stack([g1, 2 * g1, torch.randn(64)])])
    with caplog.at_level(logging.DEBUG, logger="molma.gradients.weightings"):
        weighting(gramian([_orthogonal_pair(3000.0)]))
        assert not caplog.records and weighting.last_rank == 2
        weighting(dependent)
        weighting(dependent)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 objective gradients have rank 2" in warnings[0].getMessage()
    assert weighting.last_rank == 2


def test_the_engine_reports_full_rank_and_balances_a_dominated_objective():
    x = torch.zeros(2, requires_grad=True)
    engine = MultiObjectiveBackward([x], "aligned-mtl", clip_norm=None)
    diag = engine.backward([3000.0 * x[0], x[1]])
    assert diag["skipped"] is None and diag["gramian_rank"] == 2
    assert diag["cond_before"] == pytest.approx(3000.0) and diag["cond_after"] == pytest.approx(1.0)
    torch.testing.assert_close(x.grad, torch.tensor([0.5, 0.5]))
