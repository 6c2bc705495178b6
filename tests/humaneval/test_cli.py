"""The `molma human-eval` commands, and durability when the server process is killed mid-study."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from molma.cli.main import main
from molma.humaneval import Study

from .helpers import Client, form_fields, write_responses

REPO = Path(__file__).resolve().parents[2]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["human-eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_init_invite_status_revoke_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_responses(tmp_path / "responses.jsonl", ["p1", "p2", "p3", "p4"], ["molma", "ref"])
    db = tmp_path / "study.sqlite"
    code, out, _ = _run(
        capsys, "init", "--responses", str(src), "--db", str(db), "--title", "Pilot", "--sample", "3"
    )
    assert code == 0 and "3 prompts, 2 models (molma, ref)" in out
    assert re.search(r"admin link .*: http://127\.0\.0\.1:8000/t/[A-Za-z0-9_-]{40,}", out)
    code, _, err = _run(capsys, "init", "--responses", str(src), "--db", str(db))
    assert code == 2 and "already exists" in err

    code, out, _ = _run(
        capsys, "invite", "--db", str(db), "--n", "2", "--base-url", "https://eval.lab.example/"
    )
    links = re.findall(r"^(evaluator-0\d)\thttps://eval\.lab\.example/t/(\S+)$", out, flags=re.M)
    assert [label for label, _ in links] == ["evaluator-01", "evaluator-02"]
    out_file = tmp_path / "links.tsv"
    code, out, _ = _run(capsys, "invite", "--db", str(db), "--labels", "ana,ben", "--out", str(out_file))
    assert code == 0 and out_file.stat().st_mode & 0o777 == 0o600
    assert "ana\thttp://127.0.0.1:8000/t/" in out_file.read_text()
    code, _, err = _run(capsys, "invite", "--db", str(db), "--labels", "zed", "--out", str(out_file))
    assert code == 2 and "exists" in err

    study = Study(db)
    account = study.authenticate(links[0][1])
    for k in (1, 2, 3):
        item = study.item(account, k)
        ranks = {
            o.key: {r.public_id: (1 if "[molma/" in r.text else 2) for r in item.responses}
            for o in study.objectives
        }
        study.save(account, k, ranks)
    code, out, _ = _run(capsys, "status", "--db", str(db))
    assert re.search(r"evaluator-01\s+evaluator\s+3/3", out) and re.search(r"ana\s+evaluator\s+0/3", out)
    code, out, _ = _run(capsys, "revoke", "--db", str(db), "ben")
    assert code == 0 and "revoked 1" in out
    assert "[revoked]" in _run(capsys, "status", "--db", str(db))[1]

    out_dir = tmp_path / "results"
    code, out, _ = _run(capsys, "results", "--db", str(db), "--out", str(out_dir))
    assert code == 0 and "Pilot: 3 prompts" in out
    assert re.search(r"ref\s+100\.0%\s+0\.0%\s+0\.0%\s+3", out)
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == [
        "agreement.csv",
        "rankings.csv",
        "results.json",
        "win_rates.csv",
        "win_rates_molma.png",
        "win_rates_molma.svg",
    ]
    data = json.loads((out_dir / "results.json").read_text())
    assert data["figure_model"] == "molma" and data["ranked_prompts"] == {"help": 3, "safe": 3}
    assert (out_dir / "win_rates_molma.png").read_bytes()[:4] == b"\x89PNG"
    csv_lines = (out_dir / "win_rates.csv").read_text().splitlines()
    assert csv_lines[0].startswith("objective,model,opponent,wins,ties,losses,n_prompts,win_rate")
    assert "help,molma,ref,3,0,0,3,1," in csv_lines[1]
    code, _, err = _run(capsys, "results", "--db", str(db), "--model", "gpt")
    assert code == 2 and "unknown model 'gpt'" in err


def test_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_id": "p1", "prompt": "q", "model": "a", "response": "r"}\n{"oops"\n')
    code, _, err = _run(capsys, "init", "--responses", str(bad), "--db", str(tmp_path / "s.sqlite"))
    assert code == 2 and f"{bad}:2: not valid JSON" in err and not (tmp_path / "s.sqlite").exists()
    code, _, err = _run(capsys, "serve", "--db", str(tmp_path / "none.sqlite"))
    assert code == 2 and "pass --responses" in err
    code, _, err = _run(capsys, "status", "--db", str(tmp_path / "none.sqlite"))
    assert code == 2 and "study database not found" in err
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello, this is not SQLite" * 50)
    code, _, err = _run(capsys, "status", "--db", str(not_db))
    assert code == 2 and "not a molma human-eval study" in err
    src = write_responses(tmp_path / "r.jsonl", ["p1"], ["a", "b"])
    objectives = tmp_path / "obj.yaml"
    objectives.write_text("- {key: help, label: Help}\n")
    code, _, err = _run(
        capsys,
        "init",
        "--responses",
        str(src),
        "--db",
        str(tmp_path / "s.sqlite"),
        "--objectives",
        str(objectives),
    )
    assert code == 2 and "objectives[0].definition" in err
    code, out, _ = _run(capsys)
    assert code == 0


def _start_server(db: Path, *extra: str, admin_link: bool = False) -> tuple[subprocess.Popen, str, list[str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "molma.cli.main",
            "human-eval",
            "serve",
            "--db",
            str(db),
            "--port",
            "0",
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"server did not start within 60 s: {seen}")
            seen.append(line)
            match = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)/", line)
            if match:
                if admin_link:  # a new study: the admin link follows
                    seen.append(lines.get(timeout=10))
                return proc, match.group(1), seen
    except BaseException:  # never leave a server behind
        proc.kill()
        proc.wait(timeout=30)
        raise


def test_serve_survives_kill_9(tmp_path: Path) -> None:
    """Rankings saved before the server is killed with SIGKILL are all there after a restart."""
    src = write_responses(tmp_path / "responses.jsonl", [f"p{i}" for i in range(6)], ["a", "b", "c"])
    db = tmp_path / "study.sqlite"
    proc, url, lines = _start_server(db, "--responses", str(src), admin_link=True)
    try:
        assert re.search(r"admin link .*: http://127\.0\.0\.1:\d+/t/\S+", "".join(lines))
        token = Study(db).invite(1)[0].token
        client = Client(url)
        assert client.login(token) == 303
        for k in range(1, 5):
            status, _, html = client.request("GET", f"/evaluate/{k}")
            csrf, fields = form_fields(html)
            form = {f"rank.{o}.{p}": str(1 + i % 3) for i, (o, p) in enumerate(fields)}
            form["csrf"] = csrf
            status, _, _ = client.request("POST", f"/evaluate/{k}", form)
            assert status == 303
        client.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    study = Study(db)
    assert [p.saved for p in study.progress() if p.role == "evaluator"] == [4]
    assert len(study.export_rankings()) == 4 * 3 * 2
    # a restarted server (same --responses file is accepted) resumes where the evaluator stopped
    proc, url, _ = _start_server(db, "--responses", str(src))
    try:
        client = Client(url)
        client.login(token)
        status, _, html = client.request("GET", "/evaluate")
        assert status == 200 and "4 of 6 ranked" in html and "Continue with prompt 5" in html
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    other = write_responses(tmp_path / "other.jsonl", ["x1"], ["a", "b"])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "molma.cli.main",
            "human-eval",
            "serve",
            "--db",
            str(db),
            "--responses",
            str(other),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "different responses file" in result.stderr
