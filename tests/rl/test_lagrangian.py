"""Safe RLHF's Lagrange multiplier (Dai et al. 2023): dual ascent on (mean cost - cost_limit), lambda >= 0,
checkpoints; the PPO-Lagrangian advantage (A_R - lambda A_C) / (1 + lambda) (issue 15)."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from molma.rl.lagrangian import LAMBDA_CAP, LagrangeMultiplier, lagrangian_advantages, lagrangian_weights


def test_log_update_by_hand():
    m = LagrangeMultiplier(cost_limit=0.5, lr=0.1, init=1.0)
    # mean cost 1.5: gap 1, log lambda += 0.1 * 1 * 1
    assert m.update([1.0, 2.0]) == pytest.approx(math.exp(0.1))
    # gap -0.5: log lambda += 0.1 * e^0.1 * (-0.5)
    assert m.update(0.0) == pytest.approx(math.exp(0.1 - 0.05 * math.exp(0.1)))
    assert m.steps == 2


def test_linear_update_by_hand_and_projection():
    m = LagrangeMultiplier(cost_limit=1.0, lr=0.5, init=0.2, parametrization="linear")
    assert m.update(2.0) == pytest.approx(0.7)   # 0.2 + 0.5 * 1
    assert m.update(0.0) == pytest.approx(0.2)   # 0.7 - 0.5
    assert m.update(-3.0) == 0.0                 # 0.2 - 2 -> projected to 0
    assert m.update(1.0) == 0.0                  # on the limit: stays


@pytest.mark.parametrize("parametrization", ["log", "linear"])
def test_rises_above_the_limit_falls_below_and_stays_non_negative(parametrization):
    m = LagrangeMultiplier(cost_limit=0.0, lr=0.05, init=1.0, parametrization=parametrization)
    values = [m.value]
    for _ in range(10):
        values.append(m.update(torch.tensor([0.5, 1.5])))  # mean cost 1 > 0
    assert all(b > a for a, b in zip(values, values[1:]))
    high = m.value
    values = [high]
    for _ in range(100):
        values.append(m.update(-1.0))
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert values[-1] < high and min(values) >= 0.0
    if parametrization == "log":
        assert values[-1] > 0.0
    else:
        assert values[-1] == 0.0


def test_max_value_window_and_delay():
    m = LagrangeMultiplier(lr=1.0, init=1.0, max_value=2.0)
    for _ in range(5):
        m.update(10.0)
    assert m.value == pytest.approx(2.0)
    # without max_value the log update still stays finite (it grows faster than exponentially)
    big = LagrangeMultiplier(lr=1.0, init=1.0)
    for _ in range(50):
        big.update(10.0)
    assert big.value == pytest.approx(LAMBDA_CAP)
    # window: the mean of the last 3 costs (safe-rlhf's episode-cost window)
    w = LagrangeMultiplier(cost_limit=0.0, lr=0.1, init=1.0, window=3)
    w.update([3.0, 3.0])
    w.update([-3.0])
    assert w.mean_cost() == pytest.approx(1.0)
    w.update([0.0])  # window now [3, -3, 0]
    assert w.mean_cost() == pytest.approx(0.0)
    d = LagrangeMultiplier(lr=1.0, init=1.0, update_delay=2)
    assert d.update(5.0) == 1.0 and d.update(5.0) == 1.0 and d.update(5.0) > 1.0


def test_state_dict_round_trip_through_torch_and_json():
    m = LagrangeMultiplier(cost_limit=0.2, lr=0.3, init=0.5, window=4)
    for c in ([1.0, 0.0], [0.7], [0.1, 0.9, 0.3]):
        m.update(c)
    state = m.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert json.loads(json.dumps(state)) == state
    fresh = LagrangeMultiplier(cost_limit=0.2, lr=0.3, init=0.5, window=4)
    fresh.load_state_dict(loaded)
    assert fresh.value == m.value and fresh.steps == 3 and fresh.mean_cost() == pytest.approx(m.mean_cost())
    assert fresh.update(2.0) == m.update(2.0)
    with pytest.raises(ValueError, match="parametrization"):
        LagrangeMultiplier(parametrization="linear").load_state_dict(loaded)


def test_bad_settings_and_costs_are_refused():
    with pytest.raises(ValueError, match="init"):
        LagrangeMultiplier(init=0.0)  # log lambda of 0
    LagrangeMultiplier(init=0.0, parametrization="linear")
    with pytest.raises(ValueError, match="lr"):
        LagrangeMultiplier(lr=0.0)
    with pytest.raises(ValueError, match="finite"):
        LagrangeMultiplier().update([float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        LagrangeMultiplier().update([])


def test_lagrangian_advantages_by_hand():
    a_r = torch.tensor([1.0, -2.0, 0.5])
    a_c = torch.tensor([0.5, 1.0, -1.0])
    # lambda = 3: (A_R - 3 A_C) / 4
    torch.testing.assert_close(lagrangian_advantages(a_r, a_c, 3.0), torch.tensor([-0.125, -1.25, 0.875]))
    torch.testing.assert_close(lagrangian_advantages(a_r, a_c, 0.0), a_r)
    assert lagrangian_weights(1.0) == (0.5, -0.5)
    with pytest.raises(ValueError, match="shape"):
        lagrangian_advantages(a_r, a_c[:2], 1.0)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 5.0), st.lists(st.floats(-10, 10), min_size=1, max_size=30), st.floats(0.01, 1.0),
       st.sampled_from(["log", "linear"]), st.floats(0.01, 3.0))
def test_lambda_never_negative_and_moves_with_the_gap(limit, costs, lr, parametrization, init):
    m = LagrangeMultiplier(cost_limit=limit, lr=lr, init=init, parametrization=parametrization)
    for c in costs:
        before = m.value
        after = m.update(c)
        assert after >= 0.0 and math.isfinite(after)
        if c > limit:
            assert after >= before
        elif c < limit:
            assert after <= before
