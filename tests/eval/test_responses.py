"""responses.jsonl: round trip, errors naming file:line:field, prompt alignment."""

from __future__ import annotations

import json

import pytest

from molma.eval.responses import (
    ResponseRecord,
    objectives_in,
    prompt_id,
    read_responses,
    score_matrix,
    write_responses,
)


def _rec(pid, model, scores, prompt=None):
    return ResponseRecord(prompt_id=pid, prompt=prompt or f"prompt {pid}", model=model,
                          response=f"{model} says <b>hi</b> & \"bye\"", tag="help", scores=scores)


def test_round_trip_uses_the_documented_format(tmp_path):
    recs = [_rec("p0000", "molma", {"help": 0.5, "safe": -1.0}),
            _rec("p0000", "ref", {"help": 0.1, "safe": 0.2})]
    path = tmp_path / "responses.jsonl"
    write_responses(path, recs)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert set(json.loads(lines[0])) == {"prompt_id", "prompt", "tag", "model", "response", "scores"}
    assert read_responses(path) == recs


def test_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "r.jsonl"
    good = json.dumps(_rec("p0000", "a", {"help": 1.0}).to_json())
    path.write_text(good + "\n\n" + json.dumps({"prompt_id": "p1", "prompt": "x", "model": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:3: field 'response': missing"):
        read_responses(path)
    bad = json.loads(good)
    bad["scores"]["help"] = "high"
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:1: field 'scores.help'"):
        read_responses(path)
    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(ValueError, match=r":2: field 'model': duplicate response"):
        read_responses(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:1: not valid JSON"):
        read_responses(path)


def test_score_matrix_aligns_prompts_and_skips_unanswered():
    recs = [_rec("p0001", "a", {"h": 1.0}), _rec("p0000", "a", {"h": 2.0}), _rec("p0002", "a", {"h": 9.0}),
            _rec("p0000", "b", {"h": 3.0}), _rec("p0001", "b", {"h": 4.0})]
    ids, scores = score_matrix(recs)
    assert ids == ["p0001", "p0000"]  # p0002 was not answered by b
    assert scores["a"]["h"].tolist() == [1.0, 2.0]
    assert scores["b"]["h"].tolist() == [4.0, 3.0]
    recs.append(_rec("p0003", "a", {}))
    assert objectives_in(recs) == []
    with pytest.raises(ValueError, match="no 'h' score"):
        score_matrix(recs + [_rec("p0003", "b", {"h": 1.0})], objectives=["h"])


def test_prompt_ids_are_zero_padded():
    assert prompt_id(7, 100) == "p0007"
    assert prompt_id(7, 123456) == "p000007"
