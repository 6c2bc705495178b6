"""Blocker ensemble: learns a known boundary, is conservative under disagreement, hands over."""

from __future__ import annotations

import numpy as np
import pytest

from molma.mbhi.blocker import BlockerConfig, BlockerEnsemble, decision_rule
from molma.mbhi.overseer import LabelLog


def _boundary_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block action 1 ("forward") when x + y > 1; action 0 is always safe."""
    rng = np.random.default_rng(seed)
    states = rng.uniform(-1, 2, size=(n, 2)).astype(np.float32)
    actions = rng.integers(0, 2, size=n)
    blocked = (actions == 1) & (states.sum(1) > 1.0)
    return states, actions, blocked


def test_blocker_learns_a_known_boundary() -> None:
    cfg = BlockerConfig(members=5, train_steps=400, val_fraction=0.0, min_positives=1)
    blocker = BlockerEnsemble(2, 2, cfg, seed=0)
    s, a, y = _boundary_labels(3000, seed=0)
    blocker.fit(s, a, y)
    ts, ta, ty = _boundary_labels(2000, seed=1)
    mean, std = blocker.assess(ts, ta)
    pred = blocker.flags(mean, std)
    assert np.mean(pred == ty) > 0.95
    assert np.mean(pred[ty]) > 0.95  # recall on the unsafe actions
    # well inside either side the members agree
    far = np.array([[-0.8, -0.8], [1.9, 1.9]], np.float32)
    m, sd = blocker.assess(far, np.array([1, 1]))
    assert m[0] < 0.05 and m[1] > 0.95 and np.all(sd < 0.1)
    assert blocker.ready and blocker.blocks(far[1], 1) and not blocker.blocks(far[1], 0)


def test_decision_rule_blocks_on_disagreement() -> None:
    cfg = BlockerConfig(threshold=0.5, disagreement=0.25)
    mean = np.array([0.2, 0.6, 0.3, 0.1])
    std = np.array([0.05, 0.0, 0.3, 0.1])
    assert decision_rule(mean, std, cfg).tolist() == [False, True, True, False]


def test_handover_needs_enough_positives_and_held_out_accuracy() -> None:
    cfg = BlockerConfig(train_steps=300, handover_min_labels=500, handover_min_positives=50,
                        handover_accuracy=0.95, handover_recall=0.9, train_every=500)
    blocker = BlockerEnsemble(2, 2, cfg, seed=1)
    log = LabelLog()
    s, a, y = _boundary_labels(400, seed=2)
    for row in zip(s, a, y):
        log.add(*row)
    assert blocker.update(log, force=True)
    assert not blocker.accurate()  # fewer labels than handover_min_labels
    s, a, y = _boundary_labels(1600, seed=3)
    for row in zip(s, a, y):
        log.add(*row)
    assert blocker.update(log)
    m = blocker.metrics
    assert m.n_val > 200 and m.labels == 2000
    assert m.accuracy > 0.95 and blocker.accurate()


def test_unready_blocker_never_blocks() -> None:
    blocker = BlockerEnsemble(2, 2, BlockerConfig(min_positives=5), seed=0)
    assert not blocker.ready
    assert not blocker.blocks(np.array([5.0, 5.0]), 1)


def test_blocker_config_validation() -> None:
    with pytest.raises(ValueError, match="members"):
        BlockerConfig(members=0)
