"""Issue 16's human-eval and responses.jsonl findings: the admin SVG renders under the CSP, only ASCII
digits are ranks, multipart uploads are refused, ``status | head`` ends quietly, bad option values are
refused, and the responses reader names file and line for invalid UTF-8 and truncated .gz files."""

from __future__ import annotations

import gzip
import io
import json
import os
import sqlite3
import sys
from html import unescape

import pytest

from molma.cli.main import main
from molma.humaneval import ResponsesError, create_app, load_responses
from molma.humaneval.plots import render_win_rate_figure, svg_without_inline_styles
from molma.humaneval.web import CONTENT_SECURITY_POLICY

from .helpers import form_fields, write_responses


@pytest.fixture()
def app_and_tokens(make_study):
    study = make_study(n_prompts=2)
    alice = study.invite(labels=["alice"])[0]
    admin = study.invite(labels=["admin"], role="admin")[0]
    return study, create_app(study), alice.token, admin.token


def _client(app, token):
    client = app.test_client()
    assert client.get(f"/t/{token}").status_code == 303
    return client


def _count_rankings(study) -> int:
    with sqlite3.connect(study.path) as conn:
        return conn.execute("SELECT COUNT(*) FROM rankings").fetchone()[0]


# --------------------------------------------------------------------------- the admin figure
def test_the_served_svg_has_no_inline_styles_the_csp_would_block(app_and_tokens):
    study, app, alice, admin = app_and_tokens
    boss = _client(app, admin)
    resp = boss.get("/admin/figure.svg")
    assert resp.status_code == 200 and resp.mimetype == "image/svg+xml"
    assert "style-src 'self'" in resp.headers["Content-Security-Policy"]  # no 'unsafe-inline'
    body = resp.data
    assert b"<svg" in body and b"style=" not in body and b"<style" not in body
    assert b'fill="#ffffff"' in body  # the colours became presentation attributes
    assert b'stroke-linecap="butt"' in body  # matplotlib's <style> rule: on the root, inherited
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY


def test_svg_without_inline_styles_keeps_every_declaration():
    svg = (b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
           b'<defs><style type="text/css">*{stroke-linejoin: round; stroke-linecap: butt}</style></defs>'
           b'<path d="M0 0" fill="red" style="fill: #3b6ea8; opacity: 0.28"/>'
           b'<use xlink:href="#a" style="stroke: #000000; stroke-width: 0.8"/></svg>')
    out = svg_without_inline_styles(svg).decode()
    assert "style" not in out
    assert 'stroke-linejoin="round"' in out and 'stroke-linecap="butt"' in out
    assert 'fill="#3b6ea8"' in out and 'opacity="0.28"' in out and 'fill="red"' not in out
    assert 'xlink:href="#a"' in out and 'stroke-width="0.8"' in out


def test_the_rendered_svg_is_styled_by_attributes(app_and_tokens):
    from molma.humaneval import compute_results

    study, *_ = app_and_tokens
    results = compute_results(study.data())
    svg = render_win_rate_figure(results, results.default_model(), "svg")
    assert b"style=" not in svg and b'fill="#3b6ea8"' in svg  # the first objective's legend patch


# --------------------------------------------------------------------------- ranks and forms
@pytest.mark.parametrize("rank", ["\uff11", "\u0661", "\u00b9", "1\n", "\u20071", "\U0001d7cf"],
                         ids=["fullwidth", "arabic-indic", "superscript", "newline", "figure-space", "math"])
def test_unicode_digits_are_not_ranks(app_and_tokens, rank):
    study, app, alice, _ = app_and_tokens
    client = _client(app, alice)
    html = client.get("/evaluate/1").get_data(as_text=True)
    csrf, fields = form_fields(html)
    form = {f"rank.{obj}.{pid}": "1" for obj, pid in fields}
    form[f"rank.{fields[0][0]}.{fields[0][1]}"] = rank
    resp = client.post("/evaluate/1", data={**form, "csrf": csrf})
    assert resp.status_code == 400
    assert "is not a whole number" in unescape(resp.get_data(as_text=True))
    assert _count_rankings(study) == 0
    form[f"rank.{fields[0][0]}.{fields[0][1]}"] = " 1 "  # ASCII digits with blanks still do
    assert client.post("/evaluate/1", data={**form, "csrf": csrf}).status_code == 303


def test_a_multipart_post_with_a_file_is_refused(app_and_tokens):
    study, app, alice, _ = app_and_tokens
    client = _client(app, alice)
    csrf, fields = form_fields(client.get("/evaluate/1").get_data(as_text=True))
    form = {f"rank.{obj}.{pid}": "1" for obj, pid in fields}
    form["csrf"] = csrf
    resp = client.post("/evaluate/1", data={**form, "upload": (io.BytesIO(b"x" * 100), "evil.html")},
                       content_type="multipart/form-data")
    assert resp.status_code == 400
    assert "unexpected file field 'upload'" in unescape(resp.get_data(as_text=True))
    assert _count_rankings(study) == 0
    # the same form without the file, even as multipart, is fine
    assert client.post("/evaluate/1", data=form, content_type="multipart/form-data").status_code == 303


# --------------------------------------------------------------------------- the CLI
def test_status_into_a_closed_pipe_ends_quietly(make_study, monkeypatch, capfd):
    study = make_study(n_prompts=1)
    study.invite(50)
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # like `| head` having exited
    broken = io.TextIOWrapper(io.FileIO(write_fd, "w"), encoding="utf-8", write_through=True)
    monkeypatch.setattr(sys, "stdout", broken)
    assert main(["human-eval", "status", "--db", str(study.path)]) == 0
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["invite", "--n", "-3"], "argument --n: must be >= 1, got -3"),
        (["invite", "--n", "two"], "argument --n: expected a whole number"),
        (["serve", "--port", "70000"], "argument --port: must be in [0, 65535], got 70000"),
        (["serve", "--threads", "0"], "argument --threads: must be in [1, 1024], got 0"),
        (["init", "--responses", "r.jsonl", "--sample", "0"], "argument --sample: must be >= 1, got 0"),
        (["init", "--responses", "r.jsonl", "--seed", "-1"], "argument --seed: must be in [0, 4294967295]"),
    ],
)
def test_bad_option_values_are_refused(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["human-eval", argv[0], "--db", str(tmp_path / "s.sqlite"), *argv[1:]])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- responses.jsonl reader
def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write_responses(tmp_path / "responses.jsonl", ["p0", "p1"], ["a", "b"])
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"Here", b"H\xffre")
    path.write_bytes(b"".join(lines))
    with pytest.raises(ResponsesError, match=rf"^{path}:3: not valid UTF-8 \(byte 0xff at column \d+\)"):
        load_responses(path)


def test_a_truncated_gz_names_the_file_and_where_it_stopped(tmp_path):
    plain = write_responses(tmp_path / "responses.jsonl", [f"p{i}" for i in range(40)], ["a", "b"])
    packed = gzip.compress(plain.read_bytes())
    path = tmp_path / "responses.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ResponsesError, match=rf"^{path}:\d+: unreadable after line \d+ \(truncated or damaged"):
        load_responses(path)
    path.write_bytes(packed)  # the whole file reads
    assert len(load_responses(path)) == 80


def test_a_bom_is_accepted(tmp_path):
    path = write_responses(tmp_path / "responses.jsonl", ["p0"], ["a", "b"])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [r.model for r in load_responses(path)] == ["a", "b"]
    assert json.loads(path.read_bytes()[3:].splitlines()[0])["model"] == "a"
