"""The formats ``datasets`` and TRL produce: Parquet files, ``save_to_disk`` folders, ``data_files``-style
globs, TRL's conversational preference and prompt-only formats. Each reads to the same records as its
JSONL equivalent; ``molma data inspect`` and ``molma rm train`` agree on which pairs are valid."""

from __future__ import annotations

import gzip
import json

import pytest

from molma.cli.main import main
from molma.data import DataFormatError, read_preferences, read_prompts
from molma.data.chat import to_messages
from molma.data.readers import detect_kind, messages_to_prompt

ROWS = [
    {"prompt": "How do I boil an egg?", "chosen": "Simmer it for 8 minutes.", "rejected": "No idea."},
    {"prompt": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Name a colour.\n\nAssistant:",
     "chosen": "Blue.", "rejected": "I won't."},
    {"prompt": "Write a haiku about rain.", "chosen": "Soft rain on the roof / ...", "rejected": "Rain."},
]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def conversational(row):
    """TRL's explicit-prompt conversational form of a JSONL row."""
    return {"prompt": to_messages(row["prompt"]), "chosen": [assistant(row["chosen"])],
            "rejected": [assistant(row["rejected"])]}


def implicit(row):
    """TRL's implicit-prompt form: two whole dialogues."""
    context = to_messages(row["prompt"])
    return {"chosen": [*context, assistant(row["chosen"])], "rejected": [*context, assistant(row["rejected"])]}


def write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def jsonl_pairs(tmp_path_factory):
    path = write_jsonl(tmp_path_factory.mktemp("jsonl") / "pairs.jsonl", ROWS)
    return list(read_preferences(path))


def test_parquet_and_save_to_disk_read_like_jsonl(tmp_path, jsonl_pairs):
    import datasets

    data = datasets.Dataset.from_list(ROWS)
    data.to_parquet(str(tmp_path / "pairs.parquet"))
    data.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": data, "test": data.select([0])}).save_to_disk(str(tmp_path / "dict"))
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "one-split"))
    for source in (tmp_path / "pairs.parquet", str(tmp_path / "pairs.parquet"), str(tmp_path / "saved"),
                   str(tmp_path / "dict" / "train"), str(tmp_path / "one-split")):
        pairs = read_preferences(source)
        assert list(pairs) == jsonl_pairs, source
        assert pairs.report.rows == 3 and pairs.report.format == "columns"
    assert pairs[1].source.endswith("one-split/train:2")
    assert list(read_preferences(str(tmp_path / "dict" / "test"))) == jsonl_pairs[:1]
    with pytest.raises(DataFormatError, match=r"DatasetDict folder with splits train, test: name one as .*dict/train"):
        read_preferences(str(tmp_path / "dict"))
    assert list(read_preferences(str(tmp_path / "pairs.parquet"), limit=2)) == jsonl_pairs[:2]


def test_trl_conversational_formats_read_like_jsonl(tmp_path, jsonl_pairs):
    import datasets

    explicit = [conversational(r) for r in ROWS]
    assert list(read_preferences(explicit)) == jsonl_pairs
    assert list(read_preferences([implicit(r) for r in ROWS])) == jsonl_pairs
    datasets.Dataset.from_list(explicit).to_parquet(str(tmp_path / "conv.parquet"))
    datasets.Dataset.from_list([implicit(r) for r in ROWS]).save_to_disk(str(tmp_path / "implicit"))
    assert list(read_preferences(str(tmp_path / "conv.parquet"))) == jsonl_pairs
    assert list(read_preferences(str(tmp_path / "implicit"))) == jsonl_pairs
    # prompt-only TRL datasets
    prompts_jsonl = read_prompts(write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in ROWS]))
    prompt_only = [{"prompt": to_messages(r["prompt"])} for r in ROWS]
    assert detect_kind(prompt_only) == "prompts"
    assert list(read_prompts(prompt_only)) == list(prompts_jsonl)
    datasets.Dataset.from_list(prompt_only).to_parquet(str(tmp_path / "prompts.parquet"))
    assert list(read_prompts(str(tmp_path / "prompts.parquet"))) == list(prompts_jsonl)
    assert [p.text for p in read_prompts(prompt_only, first_turn=True)] == [
        "How do I boil an egg?", "Hi", "Write a haiku about rain."]
    # prompts from the implicit form: the context of 'chosen'
    assert list(read_prompts([implicit(r) for r in ROWS])) == list(prompts_jsonl)


@pytest.mark.parametrize("row, message", [
    ({"prompt": [{"role": "system", "content": "Be brief."}, user("Hi")], "chosen": "a", "rejected": "b"},
     r"<rows>:1: field 'prompt': message 0: role 'system' is not supported"),
    ({"prompt": [user("Hi"), assistant("Hello")], "chosen": "a", "rejected": "b"},
     r"field 'prompt': the last prompt message must be the user's"),
    ({"prompt": [user("Hi")], "chosen": [assistant("a"), assistant("b")], "rejected": [assistant("c")]},
     r"field 'chosen': expected one assistant message, got 2"),
    ({"prompt": [user("Hi")], "chosen": [assistant("a")], "rejected": [assistant("  ")]},
     r"field 'rejected': empty text"),
    ({"chosen": [user("Hi"), assistant("a")], "rejected": [user("Hello"), assistant("b")]},
     r"field 'rejected': dialogue context differs from 'chosen' \(first difference at message 0\)"),
    ({"prompt": [user("Hi")], "chosen": [assistant("a")], "rejected": [assistant("a")]},
     r"field 'rejected': identical to 'chosen'"),
])
def test_bad_conversational_rows_name_row_field_and_reason(row, message):
    with pytest.raises(DataFormatError, match=message):
        read_preferences([row])
    valid = conversational(ROWS[0]) if "prompt" in row else implicit(ROWS[0])
    assert read_preferences([row, valid], skip_invalid=True).report.skipped == 1


def test_messages_to_prompt_is_the_inverse_of_to_messages():
    for row in ROWS:
        assert messages_to_prompt(to_messages(row["prompt"])) == row["prompt"].strip()


def test_globs_read_every_matching_file_in_order(tmp_path, jsonl_pairs):
    import datasets

    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "train-00000.jsonl.gz", ROWS[:2], gz=True)
    write_jsonl(shards / "train-00001.jsonl", ROWS[2:])
    write_jsonl(shards / ".hidden.jsonl", ROWS)  # skipped, as datasets skips hidden files
    pairs = read_preferences(str(shards / "train-*"))
    assert list(pairs) == jsonl_pairs
    assert pairs.report.rows == 3 and pairs.report.records == 3 and pairs.report.source.endswith("train-*")
    assert pairs[2].source.endswith("train-00001.jsonl:1")
    assert list(read_preferences(str(shards / "train-*"), limit=2)) == jsonl_pairs[:2]
    for i, row in enumerate(ROWS):
        datasets.Dataset.from_list([conversational(row)]).to_parquet(str(tmp_path / f"part-{i}.parquet"))
    assert list(read_preferences(str(tmp_path / "part-*.parquet"))) == jsonl_pairs
    assert list(read_preferences(str(tmp_path / "**" / "*.jsonl*"))) == jsonl_pairs
    assert detect_kind(str(tmp_path / "part-*.parquet")) == "pairs"
    with pytest.raises(FileNotFoundError, match="no data files match"):
        read_preferences(str(tmp_path / "nothing-*.jsonl"))


def test_real_hh_rows_read_the_same_from_parquet_save_to_disk_and_trl_form(hh_harmless_path, tmp_path):
    import datasets

    with gzip.open(hh_harmless_path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(120), f)]
    write_jsonl(tmp_path / "hh.jsonl", rows)
    reference = list(read_preferences(tmp_path / "hh.jsonl"))
    data = datasets.Dataset.from_list(rows)
    data.to_parquet(str(tmp_path / "hh.parquet"))
    data.save_to_disk(str(tmp_path / "hh-saved"))
    assert list(read_preferences(str(tmp_path / "hh.parquet"))) == reference
    assert list(read_preferences(str(tmp_path / "hh-saved"))) == reference
    # TRL's conversational form of the same pairs renders to the same chat messages
    usable = [p for p in reference if p.chosen and p.rejected]
    conv = [{"prompt": to_messages(p.prompt), "chosen": [assistant(p.chosen)], "rejected": [assistant(p.rejected)]}
            for p in usable]
    datasets.Dataset.from_list(conv).to_parquet(str(tmp_path / "hh-conv.parquet"))
    read = list(read_preferences(str(tmp_path / "hh-conv.parquet")))
    assert [(to_messages(p.prompt), p.chosen, p.rejected) for p in read] == [
        (to_messages(p.prompt), p.chosen, p.rejected) for p in usable]


def test_inspect_reads_the_new_formats(tmp_path, capsys):
    import datasets

    datasets.Dataset.from_list([conversational(r) for r in ROWS]).save_to_disk(str(tmp_path / "conv"))
    assert main(["data", "inspect", str(tmp_path / "conv")]) == 0
    out = capsys.readouterr().out
    assert "3 valid of 3 rows; 0 invalid" in out and "multi-turn 1" in out


def test_inspect_and_rm_train_agree_on_empty_replies(hh_harmless_path, tmp_path, capsys):
    """Four HH dialogues have an empty preferred reply: inspect counts them invalid, and rm train stops at
    the first one (before loading a model) saying how to skip them."""
    assert main(["data", "inspect", str(hh_harmless_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 1796 and len(report["errors"]) == 4
    first = report["errors"][0]
    assert (first["line"], first["field"], first["reason"]) == (87, "chosen", "empty text")

    code = main(["rm", "train", "--objective", "safe", "--data", str(hh_harmless_path),
                 "--out", str(tmp_path / "rm")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{hh_harmless_path}:87: field 'chosen': empty text; set skip_invalid=true" in err
    assert not (tmp_path / "rm").exists()
