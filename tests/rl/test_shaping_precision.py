"""LOGIT saturates symmetrically and exactly (issue 16): float32 LOGIT(sigmoid(x)) gave LOGIT(20) = 13.802
but LOGIT(-50) = -13.816."""

from __future__ import annotations

import math

import pytest
import torch

from molma.rl.shaping import logit_of_prob, logit_of_score, piecewise_reward, whiten

EPS = 1e-6
BOUND = math.log((1 - EPS) / EPS)  # 13.8155...


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logit_of_score_saturates_symmetrically(dtype):
    x = torch.tensor([20.0, -20.0, 50.0, -50.0, 1e4, -1e4], dtype=dtype)
    y = logit_of_score(x, EPS)
    assert y.dtype == dtype
    expected = torch.tensor([BOUND, -BOUND] * 3, dtype=dtype)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert y[0].item() == -y[3].item()  # LOGIT(20) = -LOGIT(-50): the same clip on both sides


def test_logit_of_score_is_the_identity_inside_the_clip():
    x = torch.tensor([13.81, -13.81, 12.0, -9.5, 0.0, 1e-3])
    torch.testing.assert_close(logit_of_score(x, EPS), x, rtol=0, atol=0)
    assert logit_of_score(torch.tensor([float("nan")]), EPS).isnan().all()  # NaN is not hidden


def test_logit_of_prob_saturates_symmetrically_in_float32():
    p = torch.sigmoid(torch.tensor([20.0, -50.0, 0.0]))  # float32: 1.0, 2e-22, 0.5
    y = logit_of_prob(p, EPS)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([BOUND, -BOUND, 0.0]), rtol=0, atol=1e-6)


def test_piecewise_reward_saturates_symmetrically():
    """Unsafe responses (safety reward taken) and very helpful ones (help reward taken) clip alike."""
    help_s = torch.tensor([20.0, 0.0, 0.0])
    safe_s = torch.tensor([5.0, -50.0, 5.0])
    picked = torch.tensor([BOUND, -BOUND, 0.0])  # help 20 -> +bound; safety -50 (< delta) -> -bound
    torch.testing.assert_close(piecewise_reward(help_s, safe_s, 0.15, EPS), whiten(picked), rtol=0, atol=1e-5)
