"""The web app (Flask): evaluator pages, admin results page, downloads.

Security model (docs/humaneval.md has the full version):

* Access: an invite link ``/t/<token>`` checks the token against the stored hashes and puts it in an
  ``HttpOnly; SameSite=Lax`` cookie (``Secure`` under HTTPS), then redirects so the token leaves the
  address bar. Every page looks the account up from that cookie; no cookie, no access. No page takes an
  account id from the URL, so an evaluator can only ever read and write their own rankings.
* Forged requests: every POST carries a hidden anti-forgery field, HMAC(study secret, token hash),
  checked in constant time; POSTs whose ``Origin``/``Sec-Fetch-Site`` say they come from another site are
  refused as well, and the Lax cookie is not sent on cross-site POSTs in the first place.
* Untrusted model output: all text goes through Jinja autoescaping (nothing is marked safe) and the pages
  contain no JavaScript at all, so the Content-Security-Policy forbids every script
  (``default-src 'none'``): even a bug in escaping could not run code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, Response, abort, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from molma.humaneval.analysis import (
    agreement_csv,
    compute_results,
    rankings_csv,
    results_to_dict,
    win_rates_csv,
)
from molma.humaneval.store import Account, Item, Study, SubmissionError

COOKIE_NAME = "molma_he"
COOKIE_MAX_AGE = 60 * 60 * 24 * 60  # 60 days: long enough for a study run over weeks
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
MAX_FORM_BYTES = 256 * 1024
F = TypeVar("F", bound=Callable[..., Any])


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _heat(value: float | None) -> str:
    """A CSS class for a win-rate cell (CSP forbids inline styles)."""
    return "heat-na" if value is None else f"heat-{min(9, int(value * 10))}"


def create_app(study: Study | str | Path) -> Flask:
    """The WSGI app serving one study."""
    if not isinstance(study, Study):
        study = Study(study)
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_FORM_BYTES, MAX_FORM_PARTS=2000, JSON_SORT_KEYS=False)
    app.jinja_env.filters["ordinal"] = _ordinal
    app.jinja_env.filters["percent"] = _percent
    app.jinja_env.filters["heat"] = _heat
    app.extensions["molma_study"] = study

    @app.before_request
    def load_account() -> None:
        token = request.cookies.get(COOKIE_NAME)
        g.token = token
        g.account = study.authenticate(token) if token else None

    @app.after_request
    def security_headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        resp.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        resp.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if request.endpoint != "static":
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> tuple[str, int]:
        return render_template(
            "error.html", code=err.code, title=err.name, message=err.description
        ), err.code or 500

    def fail(code: int, title: str, message: str) -> tuple[str, int]:
        return render_template("error.html", code=code, title=title, message=message), code

    def needs(role: str) -> Callable[[F], F]:
        def decorate(view: F) -> F:
            @wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                account: Account | None = g.account
                if account is None:
                    return fail(
                        401,
                        "Sign-in needed",
                        "This page needs your personal study link. Open the link you were given.",
                    )
                if account.role != role:
                    return fail(403, "Not allowed", f"This page is for the study's {role}s only.")
                return view(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorate

    def same_origin_post() -> str | None:
        """Why a POST looks cross-site, or None if it looks fine (the CSRF field is checked too)."""
        site = request.headers.get("Sec-Fetch-Site")
        if site and site not in ("same-origin", "none"):
            return f"the request came from another site (Sec-Fetch-Site: {site})"
        origin = request.headers.get("Origin")
        if origin and origin != "null" and origin != request.host_url.rstrip("/"):  # "null": rely on the rest
            return "the request came from another site (Origin does not match)"
        if not study.check_csrf(g.token, request.form.get("csrf")):
            return "the form's security field is missing or belongs to another session; reload the page"
        return None

    @app.context_processor
    def common() -> dict[str, Any]:
        token = g.get("token")
        account = g.get("account")
        return {
            "study_title": study.title,
            "account": account,
            "csrf": study.csrf_token(token) if account is not None and token else "",
        }

    # ------------------------------------------------------------------ public
    @app.get("/")
    def index() -> Any:
        if g.account is not None:
            return redirect(url_for("admin" if g.account.role == "admin" else "overview"), 303)
        return render_template("index.html")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/t/<token>")
    def login(token: str) -> Any:
        account = study.authenticate(token)
        if account is None:
            return fail(
                403,
                "Link not valid",
                "This study link is not valid (it may have been revoked). "
                "Ask the study organisers for a new one.",
            )
        resp = redirect(url_for("admin" if account.role == "admin" else "overview"), 303)
        resp.set_cookie(
            COOKIE_NAME,
            token,
            max_age=COOKIE_MAX_AGE,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
        )
        return resp

    @app.post("/logout")
    def logout() -> Any:
        if g.account is not None and (problem := same_origin_post()):
            return fail(403, "Request refused", problem)
        resp = redirect(url_for("index"), 303)
        resp.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Lax", secure=request.is_secure)
        return resp

    # ------------------------------------------------------------------ evaluators
    @app.get("/evaluate")
    @needs("evaluator")
    def overview() -> Any:
        queue = study.overview(g.account)
        saved = sum(1 for *_, at in queue if at)
        first_open = next((i for i, _, at in queue if not at), None)
        return render_template(
            "overview.html",
            queue=queue,
            saved=saved,
            total=len(queue),
            first_open=first_open,
            objectives=study.objectives,
            just_saved=request.args.get("saved", type=int),
        )

    def render_item(item: Item, values: dict[str, dict[str, str]], error: str | None, code: int) -> Any:
        queue_saved = sum(1 for *_, at in study.overview(g.account) if at)
        return render_template(
            "item.html",
            item=item,
            values=values,
            error=error,
            objectives=study.objectives,
            n=len(item.responses),
            saved_count=queue_saved,
            just_saved=request.args.get("saved", type=int) == item.index,
        ), code

    @app.route("/evaluate/<int:index>", methods=["GET", "POST"])
    @needs("evaluator")
    def item(index: int) -> Any:
        try:
            current = study.item(g.account, index)
        except IndexError:
            abort(404, description=f"There is no prompt {index} in your list.")
        if request.method == "GET":
            values = {k: {pid: str(r) for pid, r in ranks.items()} for k, ranks in current.saved.items()}
            return render_item(current, values, None, 200)
        if problem := same_origin_post():
            return fail(403, "Request refused", problem)
        if request.files:  # the form has no file input: a multipart upload is not ours
            name = next(iter(request.files))
            return render_item(current, {}, f"Not saved: unexpected file field {name[:60]!r}.", 400)
        ranks: dict[str, dict[str, str]] = {}
        error = None
        for name in request.form:
            given = request.form.getlist(name)
            if len(given) > 1:
                error = f"field {name[:60]!r} was sent more than once"
                break
            if name in ("csrf", "action"):
                continue
            parts = name.split(".")
            if len(parts) != 3 or parts[0] != "rank":
                error = f"unexpected field {name[:60]!r}"
                break
            ranks.setdefault(parts[1], {})[parts[2]] = given[0]
        if error is None:
            try:
                study.save(g.account, index, ranks)
            except SubmissionError as err:
                error = str(err)
        if error is not None:
            values = {k: {pid: str(v) for pid, v in r.items()} for k, r in ranks.items()}
            return render_item(current, values, f"Not saved: {error}.", 400)
        if request.form.get("action", "next") == "next":
            if index < current.total:
                return redirect(url_for("item", index=index + 1, saved=index), 303)
            return redirect(url_for("overview", saved=index), 303)
        return redirect(url_for("item", index=index, saved=index), 303)

    # ------------------------------------------------------------------ admin
    def focus_model(models: tuple[str, ...], default: str) -> str:
        chosen = request.args.get("model")
        return chosen if chosen in models else default

    @app.get("/admin")
    @needs("admin")
    def admin() -> Any:
        results = compute_results(study.data())
        if not results.models:
            abort(404)
        model = focus_model(results.models, results.default_model())
        return render_template("admin.html", results=results, model=model, progress=study.progress())

    @app.get("/admin/figure.<fmt>")
    @needs("admin")
    def figure(fmt: str) -> Any:
        from molma.humaneval.plots import render_win_rate_figure

        if fmt not in ("png", "svg"):
            abort(404)
        results = compute_results(study.data())
        model = focus_model(results.models, results.default_model())
        body = render_win_rate_figure(results, model, fmt)
        return Response(body, mimetype="image/svg+xml" if fmt == "svg" else "image/png")

    @app.get("/admin/download/<name>")
    @needs("admin")
    def download(name: str) -> Any:
        if name == "rankings.csv":
            body, mime = rankings_csv(study.export_rankings()), "text/csv"
        else:
            results = compute_results(study.data())
            if name == "results.json":
                body, mime = json.dumps(results_to_dict(results), indent=2) + "\n", "application/json"
            elif name == "win_rates.csv":
                body, mime = win_rates_csv(results), "text/csv"
            elif name == "agreement.csv":
                body, mime = agreement_csv(results), "text/csv"
            else:
                abort(404)
        resp = Response(body, mimetype=mime)
        resp.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return resp

    return app
