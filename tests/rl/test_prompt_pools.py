"""Prompt pools: ``first_turn`` (HH dialogues -> their first Human turn, each once), the paper configs that
set it, and ``molma eval --prompts heldout:RUN``, which rebuilds the prompts a training run set aside."""

from __future__ import annotations

import copy
import json

import pytest

from molma.cli.eval import load_eval_prompts
from molma.config import ConfigError, load_config
from molma.rl import MultiObjectiveTrainer, TrainConfig
from molma.rl.prompts import run_heldout_prompts, train_heldout_pools
from tests.conftest import REPO_ROOT
from tests.rl import toy


def hh_file(path, n=30):
    """An HH-RLHF-format file: multi-turn dialogues, and dialogues that open with the same request."""
    rows = []
    for i in range(n):
        first = f"How do I do thing {i % (n // 2)}?"  # every first turn twice
        context = f"\n\nHuman: {first}\n\nAssistant: Why do you ask?\n\nHuman: Just curious, case {i}."
        rows.append({"chosen": context + "\n\nAssistant: I can't help with that.",
                     "rejected": context + "\n\nAssistant: Sure, here is how."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_first_turn_keeps_the_first_human_turn_once(tmp_path):
    path = hh_file(tmp_path / "hh.jsonl")
    sources = {"help": "builtin:help", "safe": str(path)}
    train, held = train_heldout_pools(sources, 0.2, seed=0)
    assert all("Just curious" in p.text for p in train["safe"] + held["safe"])  # whole contexts
    assert len(train["safe"]) + len(held["safe"]) == 30
    for first_turn in (True, ["safe"]):
        train, held = train_heldout_pools(sources, 0.2, seed=0, first_turn=first_turn)
        texts = [p.text for p in train["safe"] + held["safe"]]
        assert sorted(texts) == sorted(f"How do I do thing {i}?" for i in range(15))  # deduplicated
        assert not {p.text for p in train["safe"]} & {p.text for p in held["safe"]}
        assert len(held["safe"]) == 3
    builtin_only, _ = train_heldout_pools({"help": "builtin:help"}, 0.2, seed=0, first_turn=True)
    plain, _ = train_heldout_pools({"help": "builtin:help"}, 0.2, seed=0)
    assert builtin_only == plain  # plain prompts are unchanged


def test_first_turn_config_key():
    assert TrainConfig().first_turn is False
    assert load_config(TrainConfig, overrides=["first_turn=[safe]"]).first_turn == ["safe"]
    assert load_config(TrainConfig, overrides=["first_turn=true"]).first_turn is True
    with pytest.raises(ConfigError, match=r"first_turn names pools \['nope'\] not in prompts"):
        load_config(TrainConfig, overrides=["first_turn=[nope]"])


@pytest.mark.parametrize("name,expected", [("phi2-molma.yaml", ["safe"]), ("llama2-7b-molma.yaml", ["safe"]),
                                           ("mistral-7b-gapo.yaml", False)])
def test_paper_configs_say_what_they_do(name, expected):
    path = REPO_ROOT / "configs" / "paper" / name
    cfg = load_config(TrainConfig, path)
    assert cfg.first_turn == expected
    text = path.read_text()
    assert "first_turn" in text.split("\nalgo:")[0]  # the header comment says what the pools hold
    if expected:
        assert "hh-rlhf" in cfg.prompts["safe"] and "first Human turn" in text


@pytest.fixture(scope="module")
def policy():
    return toy.toy_policy(steps=10)


def test_heldout_prompts_of_a_run_are_the_ones_the_trainer_set_aside(policy, tmp_path):
    model, tok = policy
    path = hh_file(tmp_path / "hh.jsonl", n=40)
    cfg = TrainConfig(algo="molma", objectives={"long": "rule:length", "clean": "rule:banned_words"},
                      help_objective="long", safe_objective="clean", prompts={"help": "builtin:help",
                                                                              "safe": str(path)},
                      first_turn=["safe"], heldout_fraction=0.25, seed=3, iterations=1, experience_size=4,
                      minibatch_size=4, max_new_tokens=4, critic_backbone="frozen", out=str(tmp_path / "run"),
                      progress=False, save_every=0, report_to="none")
    trainer = MultiObjectiveTrainer(cfg, policy=copy.deepcopy(model), tokenizer=tok, objectives=toy.objectives())
    trainer.train()
    expected = [p.text for tag in ("help", "safe") for p in trainer.heldout_pools[tag]]
    assert len(trainer.heldout_pools["safe"]) == 5 and len(expected) > 5
    for spec in (tmp_path / "run", tmp_path / "run" / "final"):
        prompts = load_eval_prompts(f"heldout:{spec}")
        assert [p.text for p in prompts] == expected
        assert [p.tag for p in prompts] == ["help"] * (len(expected) - 5) + ["safe"] * 5
    trained = {p.text for pool in trainer.train_pools.values() for p in pool}
    assert not trained & set(expected)
    assert [p.text for p in run_heldout_prompts(tmp_path / "run")] == expected
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        load_eval_prompts(f"heldout:{tmp_path}")
