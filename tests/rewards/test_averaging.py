"""Weight-averaged reward models (molma.rewards.averaging, WARM): the average by hand, its laws, refusals of
members that are not the same model, and the averaged folder as a reward model (molma and plain transformers)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from molma.rewards import RewardModel, RewardTrainConfig, train_reward_model
from molma.rewards.averaging import average_reward_models, average_weights, read_weights
from tests.rewards.toy import save_tiny_base, toy_pairs

PAIRS = toy_pairs(8, seed=3)
PROMPTS = [p.prompt for p in PAIRS] * 2
RESPONSES = [p.chosen for p in PAIRS] + [p.rejected for p in PAIRS]


def test_average_by_hand_and_its_laws():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, -2.0]), "n": torch.tensor([3])}
    avg = average_weights([a, b], ["a", "b"])
    assert avg["w"].tolist() == [2.0, 0.0] and avg["n"].tolist() == [3]
    # the same model twice is itself; the order of the members does not matter
    assert torch.equal(average_weights([a, a], ["a", "a2"])["w"], a["w"])
    c = {"w": torch.tensor([0.5, 7.0]), "n": torch.tensor([3])}
    torch.testing.assert_close(average_weights([a, b, c], list("abc"))["w"],
                               average_weights([c, a, b], list("cab"))["w"], rtol=0, atol=0)
    # bf16 members are averaged in float64 and stored in bf16
    half = average_weights([{"w": a["w"].bfloat16()}, {"w": b["w"].bfloat16()}], ["a", "b"])
    assert half["w"].dtype == torch.bfloat16 and half["w"].float().tolist() == [2.0, 0.0]


@pytest.mark.parametrize("other, message", [
    ({"w": torch.zeros(2)}, "not the same architecture"),
    ({"w": torch.zeros(3), "n": torch.tensor([3])}, "(3,)"),
    ({"w": torch.zeros(2), "n": torch.tensor([4])}, "non-floating"),
])
def test_members_that_are_not_the_same_model_are_refused(other, message):
    a = {"w": torch.ones(2), "n": torch.tensor([3])}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        average_weights([a, other], ["first", "second"])
    with pytest.raises(ValueError, match="at least two"):
        average_weights([a], ["first"])


@pytest.fixture(scope="module")
def two_members(tmp_path_factory):
    """Two toy reward models from one base, trained with different seeds."""
    base = save_tiny_base(tmp_path_factory.mktemp("base"), seed=0, num_layers=2)
    runs = tmp_path_factory.mktemp("runs")
    folders = []
    for seed in (0, 1):
        config = RewardTrainConfig(objective="toy", base=str(base), output_dir=str(runs / f"rm-s{seed}"),
                                   batch_size=16, epochs=1.0, learning_rate=3e-3, max_length=64, eval_fraction=0.0,
                                   logging_steps=8, seed=seed)
        folders.append(train_reward_model(config, pairs=toy_pairs(32, seed=0)))
    return folders, runs


def test_averaged_folder_is_a_reward_model_with_the_mean_weights(two_members, tmp_path):
    folders, _ = two_members
    out = average_reward_models(folders, tmp_path / "warm", record={"note": "test"})
    weights = read_weights(out)
    members = [read_weights(f) for f in folders]
    for key, tensor in weights.items():
        torch.testing.assert_close(tensor, (members[0][key] + members[1][key]) / 2)
    meta = json.loads((out / "molma_rm.json").read_text())
    assert meta["weight_average"]["members"] == [str(f) for f in folders]
    assert meta["weight_average"]["member_seeds"] == [0, 1] and meta["weight_average"]["note"] == "test"
    # it scores like any reward model, under molma and under plain transformers alike
    from tests.rewards.test_plain_transformers import plain_scores

    scores = RewardModel.from_pretrained(out).score(PROMPTS, RESPONSES)
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(plain_scores(out, PROMPTS, RESPONSES), scores, rtol=1e-4, atol=1e-4)


def test_members_that_differ_only_in_the_score_head_average_to_the_mean_score(two_members, tmp_path):
    """The score is linear in the head's weights: with one body, the average model scores the members' mean."""
    folders, _ = two_members
    body = read_weights(folders[0])
    head_keys = [k for k in body if k.startswith("score.")]
    assert head_keys
    twin = tmp_path / "twin"
    twin.mkdir()
    for item in folders[0].iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            (twin / item.name).write_bytes(item.read_bytes())
    other_head = {k: body[k] + torch.randn(body[k].shape, generator=torch.Generator().manual_seed(1))
                  for k in head_keys}
    save_file({**body, **other_head}, str(twin / "model.safetensors"), metadata={"format": "pt"})
    out = average_reward_models([folders[0], twin], tmp_path / "avg")
    mean = (RewardModel.from_pretrained(folders[0]).score(PROMPTS, RESPONSES)
            + RewardModel.from_pretrained(twin).score(PROMPTS, RESPONSES)) / 2
    torch.testing.assert_close(RewardModel.from_pretrained(out).score(PROMPTS, RESPONSES), mean,
                               rtol=1e-4, atol=1e-4)
    assert set(load_file(str(out / "model.safetensors"))) == set(body)


def test_members_scored_another_way_are_refused(two_members, tmp_path):
    folders, runs = two_members
    other = tmp_path / "other"
    other.mkdir()
    for item in folders[1].iterdir():
        if item.is_file():
            (other / item.name).write_bytes(item.read_bytes())
    meta = json.loads((other / "molma_rm.json").read_text())
    meta["config"]["max_length"] = 32
    (other / "molma_rm.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="max_length"):
        average_reward_models([folders[0], other], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_cli_average_writes_the_model_or_says_why_not(two_members, tmp_path, capsys):
    from molma.cli.main import main

    folders, _ = two_members
    args = ["rm", "average", "--model", str(folders[0]), "--model", str(folders[1]), "--out", str(tmp_path / "avg")]
    assert main(args) == 0
    assert "saved to" in capsys.readouterr().out and (tmp_path / "avg" / "model.safetensors").exists()
    assert main(["rm", "average", "--model", str(folders[0]), "--out", str(tmp_path / "one")]) == 2
    assert "at least two" in capsys.readouterr().err
