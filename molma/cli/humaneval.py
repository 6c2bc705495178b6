"""``molma human-eval``: create a blinded-ranking study, invite evaluators, serve it, report results.

The study lives in one SQLite file (``--db``), created once from ``responses.jsonl`` by ``init`` (or by
``serve --responses`` when the file does not exist yet). See docs/humaneval.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def _err(message: str) -> int:
    print(f"molma human-eval: error: {message}", file=sys.stderr)
    return 2


def _link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/t/{token}"


def _create(args: argparse.Namespace) -> tuple[Any, str]:
    """Import responses into a new study; returns (study, admin token)."""
    from molma.humaneval import DEFAULT_OBJECTIVES, Study, file_sha256, load_objectives, load_responses

    records = load_responses(args.responses)
    objectives = load_objectives(args.objectives) if args.objectives else DEFAULT_OBJECTIVES
    study = Study.create(
        args.db,
        records,
        objectives=objectives,
        title=args.title,
        sample=args.sample,
        seed=args.seed,
        source=str(Path(args.responses).resolve()),
        source_sha256=file_sha256(args.responses),
    )
    admin = study.invite(labels=["admin"], role="admin")[0]
    data = study.data()
    print(
        f"created study {args.db}: {len(data.prompts)} prompts, {len(data.models)} models "
        f"({', '.join(data.models)}), objectives {', '.join(o.key for o in study.objectives)}"
    )
    return study, admin.token


def _int_option(low: int, high: int | None = None) -> Any:
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _handled(func: Any) -> Any:
    """Turn the package's input errors into a one-line message and exit code 2; a closed stdout
    (``status | head``) ends the command quietly instead of with a BrokenPipeError traceback."""

    def run(args: argparse.Namespace) -> int:
        from molma.humaneval import ObjectivesError, ResponsesError, StudyError

        try:
            return int(func(args) or 0)
        except (ResponsesError, ObjectivesError, StudyError, FileNotFoundError) as err:
            return _err(str(err))
        except BrokenPipeError:
            # the reader went away: point stdout at /dev/null so the interpreter's final flush is quiet
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            if func is cmd_invite:
                print("molma human-eval: warning: output closed early: some new links were not shown "
                      "(revoke those accounts, or use --out)", file=sys.stderr)
                return 1
            return 0

    return run


def cmd_init(args: argparse.Namespace) -> int:
    """Create the study database from responses.jsonl and print the admin link."""
    _, token = _create(args)
    print(f"admin link (results page; keep it secret): {_link(args.base_url, token)}")
    print(
        f"next: molma human-eval invite --db {args.db} --n 5   then   molma human-eval serve --db {args.db}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the study (creating it first from --responses if the database does not exist)."""
    from molma.humaneval import Study, file_sha256, serve
    from molma.humaneval.server import is_loopback

    admin_token = None
    if not Path(args.db).exists():
        if not args.responses:
            return _err(f"{args.db} does not exist: pass --responses to create the study, or run `init`")
        study, admin_token = _create(args)
    else:
        study = Study(args.db)
        if args.responses and file_sha256(args.responses) != study.source_sha256:
            return _err(
                f"{args.db} was created from a different responses file than {args.responses}; "
                "use a new --db for a new study (or drop --responses to serve the existing one)"
            )
    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who can reach this port can try links. Put the app "
            "behind an HTTPS reverse proxy (and pass --url-scheme https) so tokens never travel in clear.",
            file=sys.stderr,
        )

    def ready(url: str) -> None:
        print(f"serving '{study.title}' on {url} (Ctrl-C to stop)", flush=True)
        if admin_token:
            print(f"admin link (results page; keep it secret): {url}t/{admin_token}", flush=True)

    serve(
        study,
        host=args.host,
        port=args.port,
        threads=args.threads,
        url_scheme=args.url_scheme,
        on_ready=ready,
    )
    return 0


def cmd_invite(args: argparse.Namespace) -> int:
    """Create evaluator (or admin) accounts and print one secret link each."""
    from molma.humaneval import Study

    study = Study(args.db)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else []
    if not labels and args.n is None:
        return _err("give --n N or --labels a,b,c")
    role = "admin" if args.admin else "evaluator"
    handle = None
    if args.out:
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _err(f"{args.out} exists; choose a new file (links are shown only once)")
        handle = os.fdopen(fd, "w", encoding="utf-8")
    invites = study.invite(args.n or 0, labels=labels, prefix=args.prefix, role=role)
    lines = [f"{inv.label}\t{_link(args.base_url, inv.token)}" for inv in invites]
    if handle is not None:
        with handle:
            handle.write("label\tlink\n" + "\n".join(lines) + "\n")
        print(f"wrote {len(invites)} {role} link(s) to {args.out} (mode 600); they are not shown again")
    else:
        print("\n".join(lines))
        print(
            f"# {len(invites)} {role} link(s); only their hashes are stored, so keep this output.",
            file=sys.stderr,
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print each account's progress."""
    from molma.humaneval import Study

    study = Study(args.db)
    print(f"{'account':<24} {'role':<10} {'ranked':>9} {'resubmits':>9}  last save (UTC)")
    for p in study.progress():
        ranked = f"{p.saved}/{p.total}" if p.role == "evaluator" else "-"
        last = (p.last_saved_at or "-")[:19].replace("T", " ")
        flag = "  [revoked]" if p.revoked else ""
        print(f"{p.label:<24} {p.role:<10} {ranked:>9} {p.revisions:>9}  {last}{flag}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke accounts by label (their rankings are kept)."""
    from molma.humaneval import Study

    n = Study(args.db).revoke(args.labels)
    print(f"revoked {n} account(s)")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """Print the win rates and agreement; write CSV/JSON/figure with --out."""
    from molma.humaneval import Study, compute_results, summary_text, write_results

    study = Study(args.db)
    results = compute_results(study.data())
    model = args.model or results.default_model()
    if model not in results.models:
        return _err(f"unknown model {model!r}; models: {', '.join(results.models)}")
    print(summary_text(results, model))
    if args.out:
        written = write_results(results, study.export_rankings(), args.out, model=model)
        print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def _init_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--responses",
        required=required,
        metavar="JSONL",
        help="saved evaluation responses (RUN_DIR/responses.jsonl)",
    )
    p.add_argument("--objectives", metavar="YAML", help="objectives file (default: help and safe)")
    p.add_argument("--title", default="Human evaluation", help="study title shown on every page")
    p.add_argument("--sample", type=_int_option(1), metavar="N", help="keep a random sample of N prompts")
    p.add_argument("--seed", type=_int_option(0, 2**32 - 1), default=0, help="seed of --sample (default 0)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``human-eval`` and its subcommands."""
    group = subparsers.add_parser(
        "human-eval",
        help="blinded human ranking of model responses (web app, results)",
        description="Blinded human evaluation (paper section 4.5.2): evaluators rank the responses of all "
        "models per prompt and objective; win rates by average rank. See docs/humaneval.md.",
    )
    sub = group.add_subparsers(dest="human_eval_command", metavar="SUBCOMMAND")
    group.set_defaults(func=lambda _args: (group.print_help(), 0)[1])

    p = sub.add_parser("init", help="create a study database from responses.jsonl")
    p.add_argument("--db", required=True, help="new study database (SQLite file)")
    _init_options(p, required=True)
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="server address used in the printed link")
    p.set_defaults(func=_handled(cmd_init))

    p = sub.add_parser("serve", help="run the web app (creates the study first if --db does not exist)")
    p.add_argument("--db", required=True, help="study database (SQLite file)")
    _init_options(p, required=False)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=_int_option(0, 65535), default=8000,
                   help="port (default 8000; 0 = any free port)")
    p.add_argument("--threads", type=_int_option(1, 1024), default=8, help="worker threads (default 8)")
    p.add_argument(
        "--url-scheme",
        choices=("http", "https"),
        default="http",
        help="https when behind a TLS reverse proxy (marks cookies Secure)",
    )
    p.set_defaults(func=_handled(cmd_serve))

    p = sub.add_parser("invite", help="create evaluator accounts and print their secret links")
    p.add_argument("--db", required=True, help="study database")
    p.add_argument("--n", type=_int_option(1), help="number of evaluators (labelled PREFIX-01, PREFIX-02, ...)")
    p.add_argument("--labels", help="comma-separated labels instead of --n (e.g. ana,ben)")
    p.add_argument("--prefix", default="evaluator", help="label prefix for --n (default evaluator)")
    p.add_argument("--admin", action="store_true", help="create admin (results page) accounts instead")
    p.add_argument(
        "--base-url", default=DEFAULT_BASE_URL, help=f"server address in links (default {DEFAULT_BASE_URL})"
    )
    p.add_argument("--out", help="write the links to this new file (mode 600) instead of stdout")
    p.set_defaults(func=_handled(cmd_invite))

    p = sub.add_parser("status", help="show each evaluator's progress")
    p.add_argument("--db", required=True, help="study database")
    p.set_defaults(func=_handled(cmd_status))

    p = sub.add_parser("revoke", help="disable accounts (rankings are kept)")
    p.add_argument("--db", required=True, help="study database")
    p.add_argument("labels", nargs="+", metavar="LABEL", help="account labels")
    p.set_defaults(func=_handled(cmd_revoke))

    p = sub.add_parser("results", help="win rates, agreement, CSV/JSON and figure")
    p.add_argument("--db", required=True, help="study database")
    p.add_argument("--out", metavar="DIR", help="write results.json, *.csv and the figure here")
    p.add_argument("--model", help="model the figure and summary focus on (default: molma, else the first)")
    p.set_defaults(func=_handled(cmd_results))
