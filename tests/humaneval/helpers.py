"""Helpers shared by the human-eval tests: fixture data, a small HTTP client, the browser launcher."""

from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from urllib.parse import urlencode, urlsplit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SELECT_RE = re.compile(r'name="rank\.([a-z0-9_]+)\.([0-9a-f]+)"')
CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]*)"')


def marker(model: str, prompt_id: str) -> str:
    """Text identifying a response in fixtures (tests un-blind through it; evaluators see no names)."""
    return f"[{model}/{prompt_id}]"


def write_responses(
    path: Path,
    prompt_ids: Iterable[str],
    models: Iterable[str],
    *,
    extra: Mapping[tuple[str, str], str] | None = None,
    scores: Mapping[tuple[str, str], Mapping[str, float]] | None = None,
) -> Path:
    """A responses.jsonl in the documented format: one line per (prompt, model)."""
    extra = extra or {}
    scores = scores or {}
    models = list(models)
    with path.open("w", encoding="utf-8") as fh:
        for pid in prompt_ids:
            for model in models:
                text = f"{marker(model, pid)} Here is an answer.\n{extra.get((pid, model), '')}"
                record = {
                    "prompt_id": pid,
                    "prompt": f"Prompt {pid}: please help me with task {pid}.",
                    "tag": "help",
                    "model": model,
                    "response": text,
                    "scores": dict(scores.get((pid, model), {"help": 0.0, "safe": 0.0})),
                }
                fh.write(json.dumps(record) + "\n")
    return path


@dataclass
class Client:
    """A keep-alive HTTP/1.1 client for one evaluator, carrying the session cookie by hand."""

    base_url: str
    cookie: str = ""
    conn: http.client.HTTPConnection = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, str] | list | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        """Send one request; returns (status, headers, body text)."""
        hdrs = dict(headers or {})
        if self.cookie:
            hdrs.setdefault("Cookie", self.cookie)
        data = None
        if body is not None:
            data = urlencode(body).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=data, headers=hdrs)
        resp = self.conn.getresponse()
        text = resp.read().decode("utf-8")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text

    def login(self, token: str) -> int:
        """Open the invite link and keep the cookie it sets."""
        status, headers, _ = self.request("GET", f"/t/{token}")
        cookie = headers.get("set-cookie", "")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return status

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def form_fields(html: str) -> tuple[str, list[tuple[str, str]]]:
    """The CSRF value and the (objective, response id) of every rank field of an item page."""
    csrf = CSRF_RE.search(html)
    return (csrf.group(1) if csrf else ""), SELECT_RE.findall(html)


def shown_markers(html: str) -> list[str]:
    """The fixture markers of the responses, in display order."""
    return re.findall(r"\[[a-z_0-9]+/p\d+\]", unescape(html))


def chromium_or_skip() -> str:
    """Path of Debian's Chromium, or skip the test with the reason."""
    import pytest

    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"{CHROMIUM} not found (apt-get install chromium); the browser tests need Debian's Chromium"
        )
    return str(CHROMIUM)
