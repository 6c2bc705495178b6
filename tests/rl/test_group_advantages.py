"""GRPO / RLOO advantages per objective, TRL's two multi-reward aggregations (trl 1.16.0
grpo_trainer.py), and the token-level clipped surrogate with the k3 KL penalty (issue 15): hand-computed
values and hypothesis laws."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from molma.rl.group_advantages import GROUP_EPS, grpo_advantages, rloo_advantages, trl_multi_reward_advantages
from molma.rl.group_losses import group_policy_loss, k3_kl, sequence_kl_penalty

EPS = 1e-4
# two prompts, three responses each (rows 0-2 and 3-5), two objectives
REWARDS = torch.tensor([[1.0, 6.0], [2.0, 4.0], [3.0, 2.0],
                        [5.0, 0.0], [5.0, 3.0], [5.0, 6.0]])


def test_eps_is_trls():
    assert GROUP_EPS == EPS


def test_grpo_by_hand():
    # objective 0: group [1, 2, 3] mean 2, Bessel std 1; group [5, 5, 5] equal -> 0
    # objective 1: group [6, 4, 2] mean 4, std 2; group [0, 3, 6] mean 3, std 3
    expected = torch.tensor([[-1 / (1 + EPS), 2 / (2 + EPS)], [0.0, 0.0], [1 / (1 + EPS), -2 / (2 + EPS)],
                             [0.0, -3 / (3 + EPS)], [0.0, 0.0], [0.0, 3 / (3 + EPS)]])
    adv = grpo_advantages(REWARDS, group_size=3)
    assert adv.dtype == torch.float32 and adv.shape == (6, 2)
    torch.testing.assert_close(adv, expected)
    assert torch.equal(adv[3:, 0], torch.zeros(3))  # exactly zero, not NaN
    # one objective as a vector
    torch.testing.assert_close(grpo_advantages(REWARDS[:, 1], 3), expected[:, 1])
    # scale="none": only centred (Dr. GRPO)
    torch.testing.assert_close(grpo_advantages(REWARDS, 3, scale="none"),
                               torch.tensor([[-1.0, 2.0], [0, 0], [1, -2], [0, -3], [0, 0], [0, 3]]))
    # population std instead of Bessel: group [1, 2, 3] has std sqrt(2/3)
    pop = grpo_advantages(REWARDS, 3, unbiased=False)
    assert pop[0, 0].item() == pytest.approx(-1 / (math.sqrt(2 / 3) + EPS), rel=1e-6)


def test_grpo_batch_scale_by_hand():
    # objective 0 over the batch: [1,2,3,5,5,5], mean 21/6 = 3.5, squares 6.25+2.25+0.25+3*2.25 = 15.5, /5
    std0 = math.sqrt(15.5 / 5)
    adv = grpo_advantages(REWARDS, 3, scale="batch")
    assert adv[0, 0].item() == pytest.approx(-1 / (std0 + EPS), rel=1e-6)
    assert adv[3, 0].item() == 0.0


def test_rloo_by_hand():
    # r_i - mean of the others: row 0: 1 - (2 + 3) / 2 = -1.5; objective 1 row 3: 0 - (3 + 6) / 2 = -4.5
    expected = torch.tensor([[-1.5, 3.0], [0.0, 0.0], [1.5, -3.0], [0.0, -4.5], [0.0, 0.0], [0.0, 4.5]])
    torch.testing.assert_close(rloo_advantages(REWARDS, 3), expected)
    # normalised over the batch (Bessel): objective 0 values [-1.5, 0, 1.5, 0, 0, 0], std sqrt(4.5 / 5)
    norm = rloo_advantages(REWARDS, 3, normalize=True)
    assert norm[0, 0].item() == pytest.approx(-1.5 / (math.sqrt(4.5 / 5) + EPS), rel=1e-6)
    # a group of one: no baseline, zero advantage
    assert torch.equal(rloo_advantages(torch.tensor([1.0, 2.0]), 1), torch.zeros(2))
    assert torch.equal(grpo_advantages(torch.tensor([1.0, 2.0]), 1), torch.zeros(2))


def test_equal_rewards_give_zeros_not_nan():
    r = torch.full((8, 3), 0.1)
    for adv in (grpo_advantages(r, 4), grpo_advantages(r, 4, scale="batch"), rloo_advantages(r, 4),
                rloo_advantages(r, 4, normalize=True)):
        assert torch.equal(adv, torch.zeros(8, 3))
    for agg in ("sum_then_normalize", "normalize_then_sum"):
        out = trl_multi_reward_advantages(r, 4, aggregation=agg)
        assert torch.isfinite(out).all() and out.abs().max() < 1e-9


def test_trl_sum_then_normalize_by_hand():
    # s = r0 + 0.5 r1: group 0 [4, 4, 4] (its signal cancels), group 1 [5, 6.5, 8]: mean 6.5, Bessel std 1.5
    w = [1.0, 0.5]
    adv = trl_multi_reward_advantages(REWARDS, 3, w, "sum_then_normalize")
    expected = torch.tensor([0.0, 0.0, 0.0, -1.5 / (1.5 + EPS), 0.0, 1.5 / (1.5 + EPS)])
    torch.testing.assert_close(adv, expected)
    # scale_rewards="none" (or False): only the group mean is subtracted
    torch.testing.assert_close(trl_multi_reward_advantages(REWARDS, 3, w, scale_rewards="none"),
                               torch.tensor([0.0, 0, 0, -1.5, 0, 1.5]))
    torch.testing.assert_close(trl_multi_reward_advantages(REWARDS, 3, w, scale_rewards=False),
                               torch.tensor([0.0, 0, 0, -1.5, 0, 1.5]))
    # "batch": group mean, std of s over the batch: s = [4,4,4,5,6.5,8], mean 5.25, sum of squares 13.875
    std = math.sqrt(13.875 / 5)
    torch.testing.assert_close(trl_multi_reward_advantages(REWARDS, 3, w, scale_rewards="batch"),
                               torch.tensor([0.0, 0, 0, -1.5 / (std + EPS), 0, 1.5 / (std + EPS)]))
    # default weights are all 1: s = [7, 6, 5, 5, 8, 11]
    torch.testing.assert_close(trl_multi_reward_advantages(REWARDS, 3),
                               torch.tensor([1 / (1 + EPS), 0, -1 / (1 + EPS), -3 / (3 + EPS), 0, 3 / (3 + EPS)]))


def test_trl_normalize_then_sum_by_hand():
    # per reward, group-normalised: z0 = [-a, 0, a, 0, 0, 0], z1 = [b, 0, -b, -c, 0, c]
    a, b, c = 1 / (1 + EPS), 2 / (2 + EPS), 3 / (3 + EPS)
    s = [-a + 0.5 * b, 0.0, a - 0.5 * b, -0.5 * c, 0.0, 0.5 * c]  # weights [1, 0.5]
    mean = sum(s) / 6
    std = math.sqrt(sum((x - mean) ** 2 for x in s) / 5)  # Bessel, over the batch
    expected = torch.tensor([(x - mean) / (std + EPS) for x in s])
    adv = trl_multi_reward_advantages(REWARDS, 3, [1.0, 0.5], "normalize_then_sum")
    torch.testing.assert_close(adv, expected)
    assert adv[0].item() == pytest.approx(-0.5 / (math.sqrt(0.2) + EPS), abs=1e-3)  # the rounded picture
    # scale_rewards is ignored by this aggregation (as in TRL)
    torch.testing.assert_close(trl_multi_reward_advantages(REWARDS, 3, [1.0, 0.5], "normalize_then_sum",
                                                           scale_rewards="none"), adv)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo_advantages(torch.zeros(5, 2), 2)
    with pytest.raises(ValueError, match="finite"):
        rloo_advantages(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(4), 0)
    with pytest.raises(ValueError, match="reward_weights has 1 values for 2"):
        trl_multi_reward_advantages(REWARDS, 3, [1.0])
    with pytest.raises(ValueError, match="aggregation"):
        trl_multi_reward_advantages(REWARDS, 3, aggregation="mean")
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(REWARDS, 3, scale="global")


# ------------------------------------------------------------------------------------------- laws

_groups = st.integers(1, 4).flatmap(lambda n: st.integers(2, 5).flatmap(lambda g: st.integers(1, 3).flatmap(
    lambda k: st.tuples(st.just(g), st.lists(st.floats(-100, 100, allow_nan=False), min_size=n * g * k,
                                             max_size=n * g * k), st.just(k)))))


def _matrix(values, k):
    return torch.tensor(values, dtype=torch.float64).reshape(-1, k)


@settings(max_examples=150, deadline=None)
@given(_groups)
def test_group_advantages_have_zero_mean_per_group(case):
    g, values, k = case
    r = _matrix(values, k)
    for adv in (grpo_advantages(r, g), grpo_advantages(r, g, scale="batch"), rloo_advantages(r, g)):
        assert torch.isfinite(adv).all()
        sums = adv.reshape(-1, g, k).sum(dim=1)
        assert sums.abs().max().item() <= 1e-9 * max(1.0, adv.abs().max().item())


@settings(max_examples=150, deadline=None)
@given(_groups, st.floats(-50, 50, allow_nan=False))
def test_adding_a_constant_to_a_group_changes_nothing(case, shift):
    g, values, k = case
    r = _matrix(values, k)
    shifted = r.clone()
    shifted[:g] += shift  # the first group only
    torch.testing.assert_close(grpo_advantages(shifted, g), grpo_advantages(r, g), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rloo_advantages(shifted, g), rloo_advantages(r, g), atol=1e-9, rtol=1e-9)
    # the same for every objective at once under TRL's aggregations with group statistics
    torch.testing.assert_close(trl_multi_reward_advantages(shifted, g, aggregation="normalize_then_sum"),
                               trl_multi_reward_advantages(r, g, aggregation="normalize_then_sum"),
                               atol=1e-6, rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(_groups, st.floats(0.1, 10))
def test_grpo_matches_its_formula_and_rloo_is_linear(case, scale):
    g, values, k = case
    r = _matrix(values, k)
    torch.testing.assert_close(rloo_advantages(scale * r, g), scale * rloo_advantages(r, g), atol=1e-9, rtol=1e-9)
    # GRPO = the centred rewards over (group std + eps), zero for constant groups
    none = grpo_advantages(r, g, scale="none").reshape(-1, g, k)
    std = r.reshape(-1, g, k).std(dim=1, keepdim=True)
    torch.testing.assert_close(grpo_advantages(r, g).reshape(-1, g, k),
                               torch.where(std > 0, none / (std + EPS), torch.zeros_like(none)), atol=1e-9, rtol=1e-9)


# ------------------------------------------------------------------------------------------- losses

def test_k3_kl_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.0, -1.5, -1.5])
    d = ref - logp  # [0, 0.5, -1]
    torch.testing.assert_close(k3_kl(logp, ref), torch.exp(d) - d - 1)
    assert k3_kl(logp, ref)[0].item() == 0.0 and (k3_kl(logp, ref) >= 0).all()


def test_group_policy_loss_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logp_old = torch.zeros(2, 3)
    logp = torch.tensor([[0.5, 0.0, 9.0], [-0.5, 0.0, 9.0]])  # ratios e^0.5, 1 | e^-0.5 (padding ignored)
    adv = torch.tensor([[1.0, -1.0], [2.0, 0.0]])  # [B, K]
    r1, r2 = math.exp(0.5), math.exp(-0.5)
    # objective 0: seq 0 A=1: min(r1, 1.2) = 1.2, min(1, 1) = 1; seq 1 A=2: min(2 r2, 2 * 0.8) = 2 r2
    l0 = -(1.2 + 1.0 + 2 * r2) / 3
    # objective 1: seq 0 A=-1: min(-r1, -1.2) = -r1, -1; seq 1 A=0: 0
    l1 = -(-r1 - 1.0 + 0.0) / 3
    loss = group_policy_loss(logp, logp_old, adv, mask, clip=0.2)
    torch.testing.assert_close(loss, torch.tensor([l0, l1]))
    # per-sequence aggregation (the GRPO paper): mean per sequence, then over sequences
    seq = group_policy_loss(logp, logp_old, adv, mask, clip=0.2, aggregation="sequence")
    torch.testing.assert_close(seq, torch.tensor([-((1.2 + 1.0) / 2 + 2 * r2) / 2, -((-r1 - 1.0) / 2 + 0.0) / 2]))
    # clip-higher: the upper bound 1 + 0.3
    hi = group_policy_loss(logp, logp_old, adv, mask, clip=0.2, clip_high=0.3)
    assert hi[0].item() == pytest.approx(-(1.3 + 1.0 + 2 * r2) / 3, rel=1e-6)
    # a negative advantage is clipped from below: A = -1 at ratio r2 < 0.8 -> min(-r2, -0.8) = -0.8
    low = group_policy_loss(logp, logp_old, -adv, mask, clip=0.2)
    assert low[0].item() == pytest.approx(-(-r1 - 1.0 - 2 * 0.8) / 3, rel=1e-6)
    # per-token advantages [K, B, T] (ppo_loss's layout) give the same as broadcast per-sequence ones
    per_token = adv.T.unsqueeze(-1).expand(2, 2, 3)
    torch.testing.assert_close(group_policy_loss(logp, logp_old, per_token, mask, clip=0.2), loss)
    # a 1-D advantage gives a scalar
    assert group_policy_loss(logp, logp_old, adv[:, 0], mask).shape == ()
    # k3 KL penalty, added to every objective
    logp_ref = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    kl = k3_kl(logp, logp_ref)
    kl_mean = (kl * mask).sum() / mask.sum()
    with_kl = group_policy_loss(logp, logp_old, adv, mask, logp_ref=logp_ref, beta=0.1)
    torch.testing.assert_close(with_kl, loss + 0.1 * kl_mean)
    # beta = 0 needs no reference
    torch.testing.assert_close(group_policy_loss(logp, logp_old, adv, mask, beta=0.0), loss)
    with pytest.raises(ValueError, match="logp_ref"):
        group_policy_loss(logp, logp_old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        group_policy_loss(logp, logp_old, adv[:1], mask)


def test_group_policy_loss_gradient_is_the_policy_gradient_on_policy():
    # at logp = logp_old the gradient of the surrogate is -A * grad logp per token (clipping inactive)
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[0.5, -2.0]])
    loss = group_policy_loss(logp, logp.detach(), adv, torch.ones(1, 2))
    g0, = torch.autograd.grad(loss[0], logp, retain_graph=True)
    g1, = torch.autograd.grad(loss[1], logp)
    torch.testing.assert_close(g0, torch.tensor([[-0.25, -0.25]]))
    torch.testing.assert_close(g1, torch.tensor([[1.0, 1.0]]))


def test_sequence_kl_penalty():
    rewards = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    logp_old = torch.tensor([[-1.0, -1.0, -5.0], [-2.0, -2.0, -2.0]])
    logp_ref = torch.tensor([[-1.5, -2.0, 0.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # sequence 0: KL sum 0.5 + 1.0 = 1.5 (third token is padding)
    torch.testing.assert_close(sequence_kl_penalty(rewards, logp_old, logp_ref, mask, 0.1),
                               torch.tensor([[0.85, 1.85], [0.0, 0.0]]))
    torch.testing.assert_close(sequence_kl_penalty(rewards[:, 0], logp_old, logp_ref, mask, 0.1),
                               torch.tensor([0.85, 0.0]))
    torch.testing.assert_close(sequence_kl_penalty(rewards, logp_old, logp_ref, mask, 0.0), rewards)
