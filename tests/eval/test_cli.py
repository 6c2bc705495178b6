"""``molma eval`` end to end on saved tiny models with rule objectives, then ``--rescore``."""

from __future__ import annotations

import json

import pytest

from molma.cli.main import main
from molma.eval.responses import read_responses


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from molma.models import tiny_llama

    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for seed in (1, 2):
        model, tok = tiny_llama(seed=seed)
        dirs[seed] = root / f"tiny{seed}"
        model.save_pretrained(dirs[seed])
        tok.save_pretrained(dirs[seed])
    return dirs


def test_molma_eval_cli_and_rescore(tmp_path, model_dirs, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(6)))
    out = tmp_path / "eval"
    args = ["eval", "--models", f"molma={model_dirs[1]},ref={model_dirs[2]}", "--prompts", str(prompts),
            "--rm", "help=rule:length", "--rm", "safe=rule:banned_words", "--out", str(out),
            "--max-new-tokens", "4", "--n-prompts", "4", "--batch-size", "2", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Win rates of molma" in printed and "ref" in printed
    recs = read_responses(out / "responses.jsonl")
    assert len(recs) == 8 and {r.model for r in recs} == {"molma", "ref"}
    assert len({r.prompt for r in recs}) == 4  # a seeded sample of 4 of the 6 prompts
    assert all(set(r.scores) == {"help", "safe"} for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["models"] == {"molma": str(model_dirs[1]), "ref": str(model_dirs[2])}
    # rerunning resumes (nothing regenerated: same responses) and prints the same table
    assert main(args) == 0
    assert capsys.readouterr().out == printed
    assert read_responses(out / "responses.jsonl") == recs
    # re-score with another rule: responses kept, help scores replaced
    assert main(["eval", "--rescore", str(out), "--rm", "help=rule:length:cap=2", "--no-progress"]) == 0
    again = read_responses(out / "responses.jsonl")
    assert [r.response for r in again] == [r.response for r in recs]
    for r, old in zip(again, recs):
        assert r.scores["help"] <= 1.0 and r.scores["safe"] == old.scores["safe"]


def test_molma_eval_cli_errors(tmp_path, capsys):
    assert main(["eval", "--models", "a=x", "--out", str(tmp_path)]) == 2  # no --rm
    assert "--rm" in capsys.readouterr().err
    assert main(["eval", "--rm", "help=rule:length", "--out", str(tmp_path)]) == 2  # no --models
    assert main(["eval", "--rm", "help=rule:nope", "--models", "a=x", "--out", str(tmp_path)]) == 2
    assert "unknown rule" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--models", "novalue"])
    assert main(["eval", "--rm", "help=rule:length", "--models", "a=x", "--out", str(tmp_path),
                 "--device", "warpdrive"]) == 2
    assert "--device warpdrive" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.smollm2
def test_molma_eval_on_the_builtin_model(tmp_path):
    """The real embedded SmolLM2 on three held-out builtin prompts, then the report."""
    out = tmp_path / "exp" / "eval"
    assert main(["eval", "--models", "ref=smollm2-135m-instruct,molma=smollm2-135m-instruct",
                 "--prompts", "builtin:test", "--n-prompts", "3", "--rm", "help=rule:length",
                 "--rm", "safe=rule:banned_words", "--out", str(out), "--max-new-tokens", "12",
                 "--kl-reference", "ref", "--threads", "1", "--no-progress"]) == 0
    recs = read_responses(out / "responses.jsonl")
    assert len(recs) == 6 and all(r.response for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kl"] == {"ref": 0.0, "molma": 0.0}  # the same weights
    assert main(["report", str(tmp_path / "exp")]) == 0
