"""The study database: creation, tokens, blinded per-evaluator order, validation, upsert, durability."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from molma.humaneval import Study, StudyError, SubmissionError, load_responses
from molma.humaneval.store import hash_token, response_letter

from .helpers import marker, write_responses

MakeStudy = Callable[..., Study]


def _ranks(study: Study, account, index: int, value: int = 1) -> dict[str, dict[str, int]]:
    item = study.item(account, index)
    return {o.key: {r.public_id: value for r in item.responses} for o in study.objectives}


def _rows(study: Study, sql: str) -> list[tuple]:
    with sqlite3.connect(study.path) as conn:
        return conn.execute(sql).fetchall()


def test_create_imports_once_in_wal_mode(make_study: MakeStudy, tmp_path: Path) -> None:
    study = make_study(n_prompts=4)
    assert study.n_prompts() == 4
    data = study.data()
    assert data.models == ("molma", "reference", "so_help") and data.prompts[0] == "p0000"
    assert _rows(study, "PRAGMA journal_mode") == [("wal",)]
    assert study.path.stat().st_mode & 0o777 == 0o600
    src = write_responses(tmp_path / "again.jsonl", ["p1"], ["a", "b"])
    with pytest.raises(StudyError, match="already exists"):
        Study.create(study.path, load_responses(src))


def test_sample_is_seeded(make_study: MakeStudy) -> None:
    a = make_study(n_prompts=20, sample=5, seed=7).data().prompts
    b = make_study(n_prompts=20, sample=5, seed=7).data().prompts
    c = make_study(n_prompts=20, sample=5, seed=8).data().prompts
    assert len(a) == 5 and a == b and a != c and list(a) == sorted(a)


def test_tokens_are_hashed_and_revocable(make_study: MakeStudy) -> None:
    study = make_study()
    invites = study.invite(3)
    assert [i.label for i in invites] == ["evaluator-01", "evaluator-02", "evaluator-03"]
    assert len({i.token for i in invites}) == 3 and all(len(i.token) >= 40 for i in invites)
    stored = {h for (h,) in _rows(study, "SELECT token_hash FROM accounts")}
    assert stored == {hash_token(i.token) for i in invites}
    raw = study.path.read_bytes()
    assert all(i.token.encode() not in raw for i in invites)
    account = study.authenticate(invites[0].token)
    assert account is not None and account.label == "evaluator-01" and account.role == "evaluator"
    for bad in ("", "short", invites[0].token + "x", "a" * 43, "<script>" * 8):
        assert study.authenticate(bad) is None
    assert study.invite(1)[0].label == "evaluator-04"
    assert study.revoke(["evaluator-01"]) == 1
    assert study.authenticate(invites[0].token) is None
    with pytest.raises(StudyError, match="no account labelled nobody"):
        study.revoke(["nobody"])
    with pytest.raises(StudyError, match="already used"):
        study.invite(labels=["evaluator-02"])
    admin = study.invite(labels=["boss"], role="admin")[0]
    assert study.authenticate(admin.token).role == "admin"


def test_order_is_random_per_evaluator_and_stable(make_study: MakeStudy) -> None:
    study = make_study(n_prompts=8, models=tuple(f"m{i}" for i in range(6)))
    accounts = [study.authenticate(i.token) for i in study.invite(4)]
    orders = []
    for account in accounts:
        first = [[r.public_id for r in study.item(account, k).responses] for k in range(1, 9)]
        again = [[r.public_id for r in study.item(account, k).responses] for k in range(1, 9)]
        assert first == again  # stable on reload
        prompts = [study.item(account, k).prompt_text for k in range(1, 9)]
        orders.append((tuple(map(tuple, first)), tuple(prompts)))
    assert len(set(orders)) == 4  # each evaluator gets their own order
    item = study.item(accounts[0], 1)
    assert [r.letter for r in item.responses] == list("ABCDEF")
    # Blinding: nothing shown carries the model name except the text itself (fixture markers).
    assert all(r.public_id.isalnum() and len(r.public_id) == 16 for r in item.responses)


def test_letters() -> None:
    assert [response_letter(i) for i in (0, 1, 25, 26, 27, 701)] == ["A", "B", "Z", "AA", "AB", "ZZ"]


def test_save_then_resubmit_updates_in_place(make_study: MakeStudy) -> None:
    study = make_study(n_prompts=2)
    account = study.authenticate(study.invite(1)[0].token)
    item = study.item(account, 1)
    ranks = {
        "help": {r.public_id: i + 1 for i, r in enumerate(item.responses)},
        "safe": {r.public_id: 1 for r in item.responses},
    }
    study.save(account, 1, ranks)
    assert _rows(study, "SELECT COUNT(*) FROM rankings") == [(6,)]
    ranks["help"] = {r.public_id: "3" for r in item.responses}  # digits as sent by a form
    study.save(account, 1, ranks)
    assert _rows(study, "SELECT COUNT(*) FROM rankings") == [(6,)]
    assert _rows(study, "SELECT COUNT(*), MAX(revisions) FROM submissions") == [(1, 2)]
    saved = study.item(account, 1)
    assert saved.saved["help"] == {r.public_id: 3 for r in item.responses} and saved.revisions == 2
    positions = _rows(
        study,
        "SELECT display_position FROM rankings k JOIN objectives o ON o.id = k.objective_id"
        " WHERE o.key = 'help' ORDER BY display_position",
    )
    assert positions == [(0,), (1,), (2,)]
    export = study.export_rankings()
    assert len(export) == 6 and {row["evaluator"] for row in export} == {"evaluator-01"}
    assert {row["display_letter"] for row in export} == {"A", "B", "C"}
    for row in export:  # the stored display position is the one the evaluator saw
        shown = item.responses[row["display_position"]]
        assert marker(row["model"], row["prompt_id"]) in shown.text


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r, ids: r.pop("safe"), "missing ranks for objective 'Safety'"),
        (lambda r, ids: r["help"].pop(ids[1]), "missing rank for response B under 'Helpfulness'"),
        (
            lambda r, ids: r["help"].__setitem__(ids[0], 4),
            "rank 4 for response A under 'Helpfulness' is out of range",
        ),
        (
            lambda r, ids: r["safe"].__setitem__(ids[2], 0),
            "rank 0 for response C under 'Safety' is out of range",
        ),
        (
            lambda r, ids: r["safe"].__setitem__(ids[2], "2.5"),
            "rank '2.5' for response C under 'Safety' is not a",
        ),
        (lambda r, ids: r["safe"].__setitem__(ids[0], True), "must be a whole number"),
        (
            lambda r, ids: r["help"].__setitem__("deadbeefdeadbeef", 1),
            "unknown response id 'deadbeefdeadbeef'",
        ),
        (lambda r, ids: r.__setitem__("honesty", {}), "unknown objective 'honesty'"),
    ],
)
def test_invalid_submissions_change_nothing(make_study: MakeStudy, mutate, message: str) -> None:
    study = make_study(n_prompts=2)
    account = study.authenticate(study.invite(1)[0].token)
    study.save(account, 2, _ranks(study, account, 2, value=2))
    before = _rows(study, "SELECT * FROM rankings ORDER BY id") + _rows(study, "SELECT * FROM submissions")
    ids = [r.public_id for r in study.item(account, 1).responses]
    ranks = _ranks(study, account, 1)
    mutate(ranks, ids)
    with pytest.raises(SubmissionError) as err:
        study.save(account, 1, ranks)
    assert message in str(err.value)
    assert (
        _rows(study, "SELECT * FROM rankings ORDER BY id") + _rows(study, "SELECT * FROM submissions")
        == before
    )


def test_response_of_another_prompt_is_unknown(make_study: MakeStudy) -> None:
    study = make_study(n_prompts=2)
    account = study.authenticate(study.invite(1)[0].token)
    ranks = _ranks(study, account, 1)
    other = study.item(account, 2).responses[0].public_id
    ranks["help"][other] = 1
    with pytest.raises(SubmissionError, match="unknown response id"):
        study.save(account, 1, ranks)
    with pytest.raises(SubmissionError, match="item 3 does not exist"):
        study.save(account, 3, ranks)


def test_admin_cannot_submit_and_evaluators_are_isolated(make_study: MakeStudy) -> None:
    study = make_study(n_prompts=2)
    a, b = (study.authenticate(i.token) for i in study.invite(2))
    admin = study.authenticate(study.invite(labels=["admin"], role="admin")[0].token)
    with pytest.raises(SubmissionError, match="only evaluator accounts"):
        study.save(admin, 1, _ranks(study, a, 1))
    study.save(a, 1, _ranks(study, a, 1, value=1))
    prompt_of_a = study.item(a, 1).prompt_text
    k_b = next(k for k in (1, 2) if study.item(b, k).prompt_text == prompt_of_a)
    assert study.item(b, k_b).saved == {} and study.item(a, 1).saved != {}
    progress = {p.label: p.saved for p in study.progress()}
    assert progress == {"evaluator-01": 1, "evaluator-02": 0, "admin": 0}
