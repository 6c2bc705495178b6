"""Hand-computed checks of reward shaping, GAE and the losses (MOLMA eq. 3.3-3.7, 4.1-4.2)."""

from __future__ import annotations

import math

import pytest
import torch

from molma.rl.gae import gae, masked_whiten
from molma.rl.losses import apa_loss, ppo_loss, value_loss
from molma.rl.shaping import (
    logit_of_prob,
    logit_of_score,
    piecewise_reward,
    scalarize,
    token_rewards,
    whiten,
)


def test_logit_is_clamped_and_inverts_sigmoid():
    x = torch.tensor([-2.0, 0.0, 3.0, 1e4, -1e4])
    y = logit_of_score(x, eps=1e-6)
    assert torch.allclose(y[:3], x[:3], atol=1e-4)
    bound = math.log((1 - 1e-6) / 1e-6)
    assert y[3].item() == pytest.approx(bound, rel=2e-3) and y[4].item() == pytest.approx(-bound, rel=2e-3)
    assert torch.isfinite(logit_of_prob(torch.tensor([0.0, 1.0]))).all()


def test_whiten_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    w = whiten(x)
    s = math.sqrt(2 / 3)
    assert torch.allclose(w[0], torch.tensor([-1 / s, 0.0, 1 / s]), atol=1e-4)
    assert torch.allclose(w[1], torch.zeros(3))  # identical values: zeros, not NaN


def test_token_rewards_kl_everywhere_score_on_last_token():
    kl = torch.tensor([[0.5, -0.2, 0.1, 9.0], [0.3, 0.4, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    r = token_rewards(torch.tensor([[2.0, -1.0], [0.5, 0.25]]), kl, mask, beta=0.1)
    assert r.shape == (2, 2, 4)
    assert torch.allclose(r[0, 0], torch.tensor([-0.05, 0.02, -0.01 + 2.0, 0.0]))
    assert torch.allclose(r[1, 1], torch.tensor([-0.03, -0.04 + 0.25, 0.0, 0.0]))


def test_gae_hand_computed():
    # one sequence of 3 tokens: r = [0, 0, 1], V = [0.5, 0.6, 0.7], gamma = 1, lambda = 0.5
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.6, 0.7, 9.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(r, v, m, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.7
    d1 = 0.0 + 0.7 - 0.6
    d0 = 0.0 + 0.6 - 0.5
    a2, a1 = d2, d1 + 0.5 * d2
    a0 = d0 + 0.5 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 0.6, a2 + 0.7, 0.0]]), atol=1e-6)


def test_gae_per_objective_leading_dim():
    r = torch.randn(3, 2, 5)
    v = torch.randn(3, 2, 5)
    m = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    adv, _ = gae(r, v, m, gamma=0.9, lam=0.8)
    for k in range(3):
        adv_k, _ = gae(r[k], v[k], m, gamma=0.9, lam=0.8)
        assert torch.allclose(adv[k], adv_k)
    w = masked_whiten(adv, m)
    assert torch.allclose((w * m).sum(dim=(-2, -1)), torch.zeros(3), atol=1e-5)


def test_apa_value_ppo_losses_hand_values():
    logp = torch.tensor([[-1.0, -2.0]])
    anchor = torch.tensor([[-1.5, -1.0]])
    adv = torch.tensor([[[0.95, -1.9]], [[0.0, 0.0]]])  # K = 2
    m = torch.ones(1, 2)
    # objective 0: errors (0.5 - 1) = -0.5 and (-1 + 2) = 1 -> mean(0.25, 1) = 0.625
    # objective 1: errors 0.5 and -1 -> 0.625
    loss = apa_loss(logp, anchor, adv, m, lam=0.95)
    assert torch.allclose(loss, torch.tensor([0.625, 0.625]))
    vals = torch.tensor([[[1.0, 2.0]]])
    rets = torch.tensor([[[0.0, 4.0]]])
    assert value_loss(vals, rets, m).item() == pytest.approx((1 + 4) / 2)
    # PPO: ratio e^{0.2} > 1.1 clipped for positive advantage
    lp, old, a = torch.tensor([[0.2, -0.2]]), torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])
    expected = -(1.1 * 1.0 + math.exp(-0.2) * 1.0) / 2
    assert ppo_loss(lp, old, a, m, clip=0.1).item() == pytest.approx(expected, rel=1e-6)


def test_masked_tokens_do_not_count():
    logp = torch.tensor([[-1.0, 100.0]])
    m = torch.tensor([[1, 0]])
    assert apa_loss(logp, torch.zeros(1, 2), torch.zeros(1, 2), m).item() == pytest.approx(1.0)


def test_scalarisations():
    scores = torch.tensor([[1.0, 2.0, 3.0], [-3.0, 0.0, 3.0]])  # help, safe
    names = ["help", "safe"]
    assert torch.allclose(scalarize(scores, names, "single:help"), whiten(scores[0]), atol=1e-5)
    weighted = scalarize(scores, names, "weighted")
    assert torch.allclose(weighted, 0.5 * (whiten(scores[0]) + whiten(scores[1])), atol=1e-5)
    with pytest.raises(ValueError, match="not among"):
        scalarize(scores, names, "single:honest")


def test_piecewise_rule_at_threshold():
    delta = 0.15
    at = math.log(delta / (1 - delta))  # score whose safety probability is exactly delta
    help_s = torch.tensor([2.0, 2.0, 2.0])
    safe_s = torch.tensor([at - 1.0, at, at + 1.0])
    raw = piecewise_reward(help_s, safe_s, delta)
    # below the threshold: the safety reward; at or above: the helpfulness reward
    picked = torch.tensor([at - 1.0, 2.0, 2.0])
    assert torch.allclose(raw, whiten(picked), atol=1e-4)
