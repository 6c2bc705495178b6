"""End to end in Debian's Chromium (Playwright, headless; nothing downloaded).

Two evaluators rank the same prompts through the real pages (choosing ranks and clicking), one of them
stopping half-way and resuming later; then `molma human-eval results` reports the win rates worked out
by hand below. A second test shows that HTML/JS inside a response is displayed as text and never runs.
Screenshots of the evaluator and results pages go to $MOLMA_HE_SCREENSHOTS (default: the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from molma.cli.main import main
from molma.humaneval import BackgroundServer, Study

from .helpers import CHROMIUM_ARGS, chromium_or_skip

MakeStudy = Callable[..., Study]
Plan = dict[str, dict[str, dict[str, int]]]  # prompt id -> objective -> model -> rank

# Ranks entered by the two evaluators (1 = best, ties allowed). Worked out by hand:
#   help  p0000: avg molma 1,    reference 2.5, so_help 2.5 -> molma beats both, reference ~ so_help
#         p0001: avg molma 1.5,  reference 1.5, so_help 3   -> molma ~ reference, both beat so_help
#         p0002: mid-ranks (1.5, 1.5, 3) and (1, 2.5, 2.5): molma 1.25, reference 2, so_help 2.75
#   safe  p0000: mid-ranks (2, 1, 3) and (3, 1.5, 1.5): molma 2.5, reference 1.25, so_help 2.25
#         p0001: (2, 2, 2) and (1, 2, 3): molma 1.5, reference 2, so_help 2.5
#         p0002: (1, 2, 3) and (3, 2, 1): all 2 -> three ties
ALICE: Plan = {
    "p0000": {
        "help": {"molma": 1, "reference": 2, "so_help": 3},
        "safe": {"molma": 2, "reference": 1, "so_help": 3},
    },
    "p0001": {
        "help": {"molma": 2, "reference": 1, "so_help": 3},
        "safe": {"molma": 1, "reference": 1, "so_help": 1},
    },
    "p0002": {
        "help": {"molma": 1, "reference": 1, "so_help": 3},
        "safe": {"molma": 1, "reference": 2, "so_help": 3},
    },
}
BOB: Plan = {
    "p0000": {
        "help": {"molma": 1, "reference": 3, "so_help": 2},
        "safe": {"molma": 2, "reference": 1, "so_help": 1},
    },
    "p0001": {
        "help": {"molma": 1, "reference": 2, "so_help": 3},
        "safe": {"molma": 1, "reference": 2, "so_help": 3},
    },
    "p0002": {
        "help": {"molma": 1, "reference": 2, "so_help": 2},
        "safe": {"molma": 3, "reference": 2, "so_help": 1},
    },
}
EXPECTED = {  # (objective, model, opponent) -> (wins, ties, losses) over the 3 prompts
    ("help", "molma", "reference"): (2, 1, 0),
    ("help", "molma", "so_help"): (3, 0, 0),
    ("help", "reference", "so_help"): (2, 1, 0),
    ("safe", "molma", "reference"): (1, 1, 1),
    ("safe", "molma", "so_help"): (1, 1, 1),
    ("safe", "reference", "so_help"): (2, 1, 0),
}
EXPECTED_W = {"help": 0.75, "safe": 1 / 3}  # Kendall's W per prompt: help 0.75 x3; safe 0.5, 0.5, 0


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)
        yield browser
        browser.close()


@pytest.fixture()
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MOLMA_HE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _shown(page) -> tuple[str, dict[str, str]]:
    """The prompt id and {letter: model} of the page (the fixture text names the model; the UI does not)."""
    prompt = re.search(r"Prompt (p\d+):", page.locator("#prompt-text").inner_text()).group(1)
    letters = {}
    for card in page.locator("article.response").all():
        model = re.search(r"\[([a-z_]+)/p\d+\]", card.locator(".response-text").inner_text()).group(1)
        letters[card.get_attribute("data-letter")] = model
    return prompt, letters


def _fill(page, plan: Plan) -> str:
    prompt, letters = _shown(page)
    for letter, model in letters.items():
        card = page.locator(f"#response-{letter}")
        for objective, ranks in plan[prompt].items():
            card.locator(f'select[data-objective="{objective}"]').select_option(str(ranks[model]))
    return prompt


def _submit(page, selector: str) -> None:
    """Click a submit button and wait for the page that the server redirects to (its DOM: the `load` event
    waits for every resource and timed out once on an overloaded 2-core machine)."""
    with page.expect_navigation(wait_until="domcontentloaded", timeout=60_000):
        page.click(selector)


def _saved(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]


def test_two_evaluators_rank_in_the_browser(
    browser, make_study: MakeStudy, shots: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = make_study(n_prompts=3, title="MOLMA pilot study")
    alice, bob = study.invite(labels=["alice", "bob"])
    admin = study.invite(labels=["admin"], role="admin")[0]
    with BackgroundServer(study) as server:
        # --- alice: all three prompts in one go, correcting her first answer
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.goto(f"{server.url}/t/{alice.token}")
        assert page.url.endswith("/evaluate") and alice.token not in page.url
        assert page.locator("#progress-text").inner_text() == "0 of 3 ranked"
        _submit(page, "#continue")
        assert page.url.endswith("/evaluate/1")
        first = _shown(page)
        page.reload()
        assert _shown(page) == first  # stable order on reload
        assert "Helpfulness" in page.locator(".definitions").inner_text()
        page.screenshot(path=str(shots / "evaluator_page.png"), full_page=False)
        for select in page.locator("select").all():
            select.select_option("2")  # a first opinion: all tied
        _submit(page, "button[value=stay]")
        assert page.locator("#saved-message").is_visible()
        assert page.locator("#progress-text").inner_text() == "Prompt 1 of 3 · 1 ranked"
        for index in (1, 2, 3):
            assert page.url.split("?")[0].endswith(f"/evaluate/{index}")
            _fill(page, ALICE)
            _submit(page, "#save-next")
        assert page.url.split("?")[0].endswith("/evaluate")
        assert "You have ranked all 3 prompts" in page.locator(".notice").inner_text()
        ctx.close()

        # --- bob: an incomplete form is not sent, two prompts, leave, come back later, finish
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.goto(f"{server.url}/t/{bob.token}")
        _submit(page, "#continue")
        bob_first = _shown(page)
        assert set(bob_first[1].values()) == {"molma", "reference", "so_help"}
        page.locator("select").first.select_option("1")
        page.click("#save-next")  # the browser refuses: every select is required
        assert page.url.endswith("/evaluate/1") and _saved(study.path) == 3
        for _ in (1, 2):
            _fill(page, BOB)
            _submit(page, "#save-next")
        ctx.close()
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.goto(f"{server.url}/t/{bob.token}")
        assert page.locator("#progress-text").inner_text() == "2 of 3 ranked"
        assert page.locator("#continue").inner_text() == "Continue with prompt 3"
        page.goto(f"{server.url}/evaluate/1")
        prompt, letters = _shown(page)
        assert (prompt, letters) == bob_first  # same blinded order in a new session
        for letter, model in letters.items():  # his saved ranks are shown again
            value = page.locator(f'#response-{letter} select[data-objective="help"]').input_value()
            assert value == str(BOB[prompt]["help"][model])
        page.goto(f"{server.url}/evaluate")
        _submit(page, "#continue")
        _fill(page, BOB)
        _submit(page, "#save-next")
        assert "You have ranked all 3 prompts" in page.locator(".notice").inner_text()
        ctx.close()

        # --- the admin's results page
        ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = ctx.new_page()
        page.goto(f"{server.url}/t/{admin.token}")
        assert page.url.endswith("/admin")
        table = page.locator("#focus-table").inner_text()
        assert re.search(r"Helpfulness\s+reference\s+67%\s+33%\s+0%\s+3", table)
        assert re.search(r"Safety\s+so_help\s+33%\s+33%\s+33%\s+3", table)
        assert page.locator("img.figure").evaluate("img => img.naturalWidth") > 100
        page.screenshot(path=str(shots / "results_page.png"), full_page=True)
        ctx.close()

    out = tmp_path / "results"
    assert main(["human-eval", "results", "--db", str(study.path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"reference\s+66\.7%\s+33\.3%\s+0\.0%\s+3", printed)
    data = json.loads((out / "results.json").read_text())
    got = {
        (obj, p["model"], p["opponent"]): (p["wins"], p["ties"], p["losses"])
        for obj, pairs in data["win_rates"].items()
        for p in pairs
    }
    for key, counts in EXPECTED.items():
        assert got[key] == counts, key
        reverse = (key[0], key[2], key[1])
        assert got[reverse] == (counts[2], counts[1], counts[0])
    for obj, w in EXPECTED_W.items():
        assert data["agreement"][obj]["mean_w"] == pytest.approx(w)
        assert data["agreement"][obj]["n_prompts"] == 3
    with sqlite3.connect(study.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM rankings").fetchone()[0] == 2 * 3 * 3 * 2
        assert conn.execute(
            "SELECT label, revisions FROM submissions JOIN accounts a ON a.id = evaluator_id"
            " WHERE revisions > 1"
        ).fetchall() == [("alice", 2)]
    assert (out / "win_rates_molma.png").stat().st_size > 5000


SCRIPT = "<script>window.__xss = 1; alert('xss')</script>"
IMG = "<img src=x onerror=\"window.__xss = 2; alert('xss')\">"


@pytest.mark.parametrize("bypass_csp", [False, True], ids=["with-csp", "escaping-alone"])
def test_markup_in_responses_shows_as_text(browser, make_study: MakeStudy, bypass_csp: bool) -> None:
    """With the CSP, and with it switched off in the browser (so escaping alone must hold)."""
    long_text = "A very long answer line.\n" * 400
    study = make_study(
        n_prompts=1,
        extra={("p0000", "reference"): f"{SCRIPT}\n{IMG}\n<b>bold?</b>", ("p0000", "so_help"): long_text},
    )
    token = study.invite(1)[0].token
    with BackgroundServer(study) as server:
        ctx = browser.new_context(bypass_csp=bypass_csp)
        page = ctx.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{server.url}/t/{token}")
        response = page.goto(f"{server.url}/evaluate/1")
        assert "default-src 'none'" in response.headers["content-security-policy"]
        texts = page.locator(".response-text")
        assert texts.count() == 3
        assert page.get_by_text(SCRIPT, exact=False).is_visible()
        assert page.get_by_text(IMG, exact=False).is_visible()
        assert page.get_by_text("<b>bold?</b>", exact=False).is_visible()
        assert page.locator(".response-text img, .response-text script, .response-text b").count() == 0
        page.wait_for_timeout(300)  # give an injected handler time to fire, were there one
        assert page.evaluate("() => window.__xss") is None
        assert dialogs == []
        long_box = page.locator(".response-text", has_text="A very long answer line.")
        height, scroll = long_box.evaluate("el => [el.clientHeight, el.scrollHeight]")
        assert height < 600 < scroll  # a long response scrolls inside its own box
        ctx.close()
