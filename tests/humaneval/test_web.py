"""HTTP behaviour of the app: access control, escaping, CSP, forged and malformed submissions."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from html import unescape

import pytest
from flask.testing import FlaskClient

from molma.humaneval import Study, create_app

from .helpers import form_fields, shown_markers

MakeStudy = Callable[..., Study]
XSS_SCRIPT = "<script>document.title='pwned'</script>"
XSS_IMG = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture()
def setup(make_study: MakeStudy):
    study = make_study(n_prompts=3, extra={("p0001", "reference"): f"{XSS_SCRIPT}\n{XSS_IMG}"})
    alice, bob = study.invite(labels=["alice", "bob"])
    admin = study.invite(labels=["admin"], role="admin")[0]
    app = create_app(study)
    return study, app, alice.token, bob.token, admin.token


def _client(app, token: str | None = None) -> FlaskClient:
    client = app.test_client()
    if token:
        resp = client.get(f"/t/{token}")
        assert resp.status_code == 303
    return client


def _item(client: FlaskClient, index: int) -> tuple[str, str, list[tuple[str, str]]]:
    resp = client.get(f"/evaluate/{index}")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    csrf, fields = form_fields(html)
    return html, csrf, fields


def _form(csrf: str, fields: list[tuple[str, str]], rank: int = 1, **extra: str) -> dict[str, str]:
    form = {f"rank.{obj}.{pid}": str(rank) for obj, pid in fields}
    form.update({"csrf": csrf, "action": "stay"})
    form.update(extra)
    return form


def _table(study: Study) -> list[tuple]:
    with sqlite3.connect(study.path) as conn:
        return (
            conn.execute("SELECT * FROM rankings ORDER BY id").fetchall()
            + conn.execute("SELECT * FROM submissions ORDER BY id").fetchall()
        )


def test_login_sets_httponly_cookie_and_redirects(setup) -> None:
    study, app, alice, _, admin = setup
    client = app.test_client()
    resp = client.get(f"/t/{alice}")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/evaluate")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert client.get("/").headers["Location"].endswith("/evaluate")
    admin_resp = app.test_client().get(f"/t/{admin}")
    assert admin_resp.headers["Location"].endswith("/admin")


@pytest.mark.parametrize(
    "path", ["/evaluate", "/evaluate/1", "/admin", "/admin/figure.svg", "/admin/download/rankings.csv"]
)
def test_no_token_no_access(setup, path: str) -> None:
    _, app, *_ = setup
    resp = app.test_client().get(path)
    assert resp.status_code == 401
    assert "personal study link" in resp.get_data(as_text=True)
    assert "marker" not in resp.get_data(as_text=True)


def test_bad_and_revoked_tokens_are_refused(setup) -> None:
    study, app, alice, *_ = setup
    assert app.test_client().get("/t/" + "x" * 43).status_code == 403
    client = app.test_client()
    client.set_cookie("molma_he", "forged-" + "y" * 40)
    assert client.get("/evaluate").status_code == 401
    ok = _client(app, alice)
    assert ok.get("/evaluate").status_code == 200
    study.revoke(["alice"])
    assert ok.get("/evaluate").status_code == 401
    assert app.test_client().get(f"/t/{alice}").status_code == 403


def test_roles_are_separate(setup) -> None:
    _, app, alice, _, admin = setup
    evaluator = _client(app, alice)
    assert evaluator.get("/admin").status_code == 403
    assert evaluator.get("/admin/download/results.json").status_code == 403
    boss = _client(app, admin)
    assert boss.get("/evaluate/1").status_code == 403
    assert boss.get("/admin").status_code == 200


def test_untrusted_text_is_escaped_and_csp_blocks_scripts(setup) -> None:
    study, app, alice, *_ = setup
    client = _client(app, alice)
    for index in (1, 2, 3):
        resp = client.get(f"/evaluate/{index}")
        html = resp.get_data(as_text=True)
        if "[reference/p0001]" in html:
            break
    else:  # pragma: no cover
        pytest.fail("fixture response not shown")
    assert "<script>document.title" not in html and "<img src=x" not in html
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;document.title=&#39;pwned&#39;&#34;&gt;" in html
    assert "<script" not in html  # the app itself ships no JavaScript
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "same-origin"


def test_page_shows_definitions_progress_and_blinded_order(setup) -> None:
    study, app, alice, *_ = setup
    client = _client(app, alice)
    html, _, fields = _item(client, 2)
    text = unescape(re.sub(r"<[^>]+>", " ", html))
    assert "Prompt 2 of 3" in text and "0 ranked" in text
    for obj in study.objectives:
        assert obj.label in text and obj.definition in text
    assert all(name not in re.sub(r"\[[a-z_]+/p\d+\]", "", text) for name in ("molma", "so_help"))
    assert len(fields) == 3 * 2 and "Response C" in text
    again, _, _ = _item(client, 2)
    assert shown_markers(again) == shown_markers(html)


def test_submit_then_resubmit(setup) -> None:
    study, app, alice, *_ = setup
    client = _client(app, alice)
    _, csrf, fields = _item(client, 1)
    resp = client.post("/evaluate/1", data=_form(csrf, fields, rank=1, action="next"))
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/evaluate/2?saved=1")
    resp = client.post("/evaluate/1", data=_form(csrf, fields, rank=2))
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/evaluate/1?saved=1")
    html = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert html.count('value="2" selected') == 6 and "Saved." in html
    with sqlite3.connect(study.path) as conn:
        assert conn.execute("SELECT COUNT(*), MIN(rank), MAX(rank) FROM rankings").fetchone() == (6, 2, 2)
        assert conn.execute("SELECT revisions FROM submissions").fetchall() == [(2,)]
    last = _item(client, 3)
    resp = client.post("/evaluate/3", data=_form(last[1], last[2], action="next"))
    assert resp.headers["Location"].endswith("/evaluate?saved=3")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f, fields: f.pop(f"rank.safe.{fields[-1][1]}"), "missing rank for response C under 'Safety'"),
        (
            lambda f, fields: f.update({f"rank.help.{fields[0][1]}": "9"}),
            "rank 9 for response A under 'Helpfulness' is out of range",
        ),
        (lambda f, fields: f.update({f"rank.help.{fields[0][1]}": "-1"}), "is not a whole number"),
        (
            lambda f, fields: f.update({"rank.help.0123456789abcdef": "1"}),
            "unknown response id '0123456789abcdef'",
        ),
        (lambda f, fields: f.update({"rank.honesty.0123456789abcdef": "1"}), "unknown objective 'honesty'"),
        (
            lambda f, fields: [f.pop(k) for k in list(f) if k.startswith("rank.safe.")],
            "missing ranks for objective 'Safety'",
        ),
        (lambda f, fields: f.update({"model": "molma"}), "unexpected field 'model'"),
    ],
)
def test_malformed_submissions_get_400_and_change_nothing(setup, edit, message: str) -> None:
    study, app, alice, *_ = setup
    client = _client(app, alice)
    _, csrf, fields = _item(client, 2)
    assert client.post("/evaluate/2", data=_form(csrf, fields, rank=1)).status_code == 303
    before = _table(study)
    form = _form(csrf, fields, rank=2)
    edit(form, fields)
    resp = client.post("/evaluate/2", data=form)
    assert resp.status_code == 400
    html = unescape(resp.get_data(as_text=True))
    assert "Not saved: " in html and message in html
    assert _table(study) == before


def test_forged_posts_are_refused(setup) -> None:
    study, app, alice, bob, _ = setup
    a = _client(app, alice)
    b = _client(app, bob)
    _, a_csrf, a_fields = _item(a, 1)
    _, b_csrf, _ = _item(b, 1)
    before = _table(study)
    cases = [
        (a, {k: v for k, v in _form(a_csrf, a_fields).items() if k != "csrf"}, {}),  # no CSRF field
        (a, _form(b_csrf, a_fields), {}),  # bob's CSRF value with alice's session
        (a, _form("0" * 64, a_fields), {}),
        (a, _form(a_csrf, a_fields), {"Origin": "https://evil.example"}),
        (a, _form(a_csrf, a_fields), {"Sec-Fetch-Site": "cross-site"}),
        (b, _form(a_csrf, a_fields), {}),  # alice's form replayed with bob's session
    ]
    for client, form, headers in cases:
        resp = client.post("/evaluate/1", data=form, headers=headers)
        assert resp.status_code == 403, (form, headers)
        assert "Request refused" in resp.get_data(as_text=True)
    anonymous = app.test_client().post("/evaluate/1", data=_form(a_csrf, a_fields))
    assert anonymous.status_code == 401
    assert _table(study) == before
    # the same form from the right session and origin is accepted
    ok = a.post(
        "/evaluate/1",
        data=_form(a_csrf, a_fields),
        headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
    )
    assert ok.status_code == 303


def test_evaluator_sees_only_own_rankings(setup) -> None:
    study, app, alice, bob, _ = setup
    a, b = _client(app, alice), _client(app, bob)
    for index in (1, 2, 3):
        _, csrf, fields = _item(a, index)
        assert a.post(f"/evaluate/{index}", data=_form(csrf, fields, rank=3)).status_code == 303
    for index in (1, 2, 3):
        html, _, _ = _item(b, index)
        assert "selected>3rd" not in html and 'value="3" selected' not in html
    overview = b.get("/evaluate").get_data(as_text=True)
    assert "0 of 3 ranked" in overview
    assert "3 of 3 ranked" in a.get("/evaluate").get_data(as_text=True)
    assert a.get("/evaluate/4").status_code == 404 and a.get("/evaluate/0").status_code == 404


def test_admin_results_and_downloads(setup) -> None:
    study, app, alice, bob, admin = setup
    for token in (alice, bob):
        client = _client(app, token)
        for index in (1, 2, 3):
            html, csrf, fields = _item(client, index)
            order = shown_markers(html)
            form = {"csrf": csrf}
            for obj, pid in fields:
                pos = [p for _, p in fields if _ == obj].index(pid)
                form[f"rank.{obj}.{pid}"] = "1" if order[pos].startswith("[molma/") else "2"
            assert client.post(f"/evaluate/{index}", data=form).status_code == 303
    boss = _client(app, admin)
    page = boss.get("/admin?model=molma").get_data(as_text=True)
    assert "Kendall" in page and "alice" in page and "3 / 3" in page
    assert re.search(r"<td>Helpfulness</td><td>reference</td><td class=\"num\">100%</td>", page)
    svg = boss.get("/admin/figure.svg?model=molma")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml" and b"<svg" in svg.data
    assert boss.get("/admin/figure.png").data[:8] == b"\x89PNG\r\n\x1a\n"
    data = boss.get("/admin/download/results.json").get_json()
    pair = next(p for p in data["win_rates"]["help"] if (p["model"], p["opponent"]) == ("molma", "so_help"))
    assert pair["win_rate"] == 1.0 and pair["n"] == 3
    csv_text = boss.get("/admin/download/rankings.csv").get_data(as_text=True)
    assert len(csv_text.strip().splitlines()) == 1 + 2 * 3 * 3 * 2
    assert boss.get("/admin/download/secrets.txt").status_code == 404


def test_logout_clears_cookie(setup) -> None:
    _, app, alice, *_ = setup
    client = _client(app, alice)
    _, csrf, _ = _item(client, 1)
    assert client.post("/logout", data={"csrf": "wrong"}).status_code == 403
    resp = client.post("/logout", data={"csrf": csrf})
    assert resp.status_code == 303
    assert client.get("/evaluate").status_code == 401
