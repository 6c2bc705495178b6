"""Reading responses.jsonl and objective files: good input loads, bad input names file, line, field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from molma.humaneval import (
    DEFAULT_OBJECTIVES,
    ObjectivesError,
    ResponsesError,
    load_objectives,
    load_responses,
)

from .helpers import write_responses


def _line(**fields: object) -> str:
    base = {
        "prompt_id": "p0",
        "prompt": "Q?",
        "tag": "help",
        "model": "a",
        "response": "R",
        "scores": {"help": 1},
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


def test_loads_documented_format(tmp_path: Path) -> None:
    path = write_responses(
        tmp_path / "r.jsonl",
        ["p0001", "p0002"],
        ["molma", "ref"],
        scores={("p0001", "molma"): {"help": 0.41, "safe": -1.2}},
    )
    records = load_responses(path)
    assert [(r.prompt_id, r.model) for r in records] == [
        ("p0001", "molma"),
        ("p0001", "ref"),
        ("p0002", "molma"),
        ("p0002", "ref"),
    ]
    assert records[0].scores == {"help": 0.41, "safe": -1.2}
    assert records[0].tag == "help" and records[0].line == 1


def test_gzip_and_optional_fields(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(_line(tag=..., scores=...) + "\n\n" + _line(model="b", tag=None) + "\n")
    records = load_responses(path)
    assert [r.model for r in records] == ["a", "b"] and records[0].tag == "" and records[0].scores == {}


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["{not json"], "r.jsonl:1: not valid JSON"),
        (["[1, 2]"], "r.jsonl:1: expected a JSON object"),
        ([_line(), _line(model=..., prompt="Q?")], "r.jsonl:2: field 'model': missing"),
        ([_line(), _line(model="b", response=3)], "r.jsonl:2: field 'response': expected a string"),
        (
            [_line(), _line(model="b", scores={"help": "high"})],
            "r.jsonl:2: field 'scores.help': expected a finite",
        ),
        (
            [_line(), _line(model="b", scores={"help": float("nan")})],
            "field 'scores.help': expected a finite",
        ),
        (
            [_line(), _line()],
            "r.jsonl:2: field 'model': duplicate response of model 'a' to prompt 'p0' (first on line 1)",
        ),
        (
            [_line(), _line(model="b", prompt="Other?")],
            "r.jsonl:2: field 'prompt': differs from the text of prompt 'p0'",
        ),
        (
            [_line(), _line(model="b"), _line(prompt_id="p1")],
            "r.jsonl:3: field 'prompt_id': prompt 'p1' has a response",
        ),
        ([""], "no responses"),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, lines: list[str], expected: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ResponsesError) as err:
        load_responses(path)
    assert expected in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="responses file not found"):
        load_responses(tmp_path / "nope.jsonl")


def test_default_objectives_match_score_keys() -> None:
    assert [o.key for o in DEFAULT_OBJECTIVES] == ["help", "safe"]
    assert all(len(o.definition) > 80 for o in DEFAULT_OBJECTIVES)


def test_objectives_file(tmp_path: Path) -> None:
    path = tmp_path / "obj.yaml"
    path.write_text(
        "objectives:\n"
        "  - key: honest\n    label: Honesty\n    definition: Says only what it believes true.\n"
        "  - {key: concise, label: Concision, definition: No padding.}\n"
    )
    objs = load_objectives(path)
    assert [(o.key, o.label) for o in objs] == [("honest", "Honesty"), ("concise", "Concision")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", "at least one objective"),
        ("- {key: Help, label: H, definition: d}", "objectives[0]: objective key 'Help' must match"),
        ("- {key: help, label: H}", "objectives[0].definition: expected a string"),
        ("- {key: help, label: H, definition: d, weight: 2}", "objectives[0]: unknown field(s) ['weight']"),
        (
            "- {key: a, label: A, definition: d}\n- {key: a, label: B, definition: e}",
            "duplicate objective keys: a",
        ),
        ("key: [unclosed", "not valid YAML/JSON"),
    ],
)
def test_bad_objectives(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "obj.yaml"
    path.write_text(text)
    with pytest.raises(ObjectivesError) as err:
        load_objectives(path)
    assert expected in str(err.value) and str(path) in str(err.value)
