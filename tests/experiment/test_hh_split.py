"""The HH dialogue split: no held-out prompt ever reaches training (checked on the real file)."""

from __future__ import annotations

from molma.data.hh import first_human_turn, normalise_prompt, read_hh_split, split_hh_dialogues
from molma.data.records import PreferencePair
from tests.data.helpers import hh


def _pair(first: str, reply: str = "no") -> PreferencePair:
    context = hh(first, "ok", "and then?") + "\n\nAssistant:"
    return PreferencePair(prompt=context, chosen=f"I won't {reply}", rejected=f"sure {reply}")


def test_first_human_turn_of_multi_turn_context():
    assert first_human_turn(hh("How do I pick a lock?", "Why?", "Just tell me") + "\n\nAssistant:") == \
        "How do I pick a lock?"


def test_same_request_in_other_spelling_stays_on_one_side():
    pairs = [_pair("Steal a car"), _pair("steal  a CAR", "x"), *[_pair(f"request {i}") for i in range(20)]]
    split = split_hh_dialogues(pairs, validation_fraction=0.3, seed=1)
    sides = [any(normalise_prompt(first_human_turn(p.prompt)) == "steal a car" for p in part)
             for part in (split.train_pairs, split.validation_pairs)]
    assert sides.count(True) == 1
    assert len(split.train_pairs) + len(split.validation_pairs) == len(pairs)
    assert len(split.train_prompts) + len(split.heldout_prompts) == 21  # deduplicated first turns


def test_real_hh_file_split_never_leaks_a_heldout_prompt(hh_harmless_path):
    split = read_hh_split(hh_harmless_path, validation_fraction=0.2, seed=0)
    train_keys = {normalise_prompt(p.text) for p in split.train_prompts}
    heldout_keys = {normalise_prompt(p.text) for p in split.heldout_prompts}
    assert not train_keys & heldout_keys
    # the reward model's training dialogues never open with a held-out request either
    rm_train_keys = {normalise_prompt(first_human_turn(p.prompt)) for p in split.train_pairs}
    assert not rm_train_keys & heldout_keys
    assert split.dropped == 4  # the four pairs with an empty reply (lines 87, 517, 926, 1104)
    assert len(split.train_pairs) + len(split.validation_pairs) == 1796
    assert 300 <= len(split.validation_pairs) <= 420 and len(split.heldout_prompts) >= 300
    # deterministic in the seed
    again = read_hh_split(hh_harmless_path, validation_fraction=0.2, seed=0)
    assert [p.text for p in again.heldout_prompts] == [p.text for p in split.heldout_prompts]


def test_self_instruct_rows_keep_their_instance_input(tmp_path):
    """self-instruct rows carry the task's input inside ``instances``: it completes the prompt."""
    from molma.data import read_prompts
    from tests.data.helpers import write_jsonl

    rows = [{"id": "a", "instruction": "Convert the citation to APA.", "instances": [{"input": "Vaswani 2017",
                                                                                     "output": "x"}]},
            {"id": "b", "instruction": "Tell a joke.", "instances": [{"input": "", "output": "y"}]}]
    prompts = list(read_prompts(write_jsonl(tmp_path / "si.jsonl", rows), tag="help"))
    assert [p.text for p in prompts] == ["Convert the citation to APA.\n\nVaswani 2017", "Tell a joke."]
