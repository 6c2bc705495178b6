"""``molma data``: look at datasets before training on them.

``molma data inspect SOURCE`` prints counts, text-length statistics, the multi-turn share, the first
records and every invalid row (file:line: field: reason). Exit code 0 when every row is valid, 1 when
some rows are invalid, 2 when the source cannot be read at all.
"""

from __future__ import annotations

import argparse
import json
import sys

from molma.data.readers import PAIR_FORMATS, PROMPT_FORMATS, DataFormatError


def _columns(text: str) -> dict[str, str] | list[str]:
    """``prompt=q,chosen=a,rejected=b`` or ``q,a,b``."""
    parts = [p.strip() for p in text.split(",")]
    if all("=" in p for p in parts):
        return dict(p.split("=", 1) for p in parts)
    if any("=" in p for p in parts) or len(parts) != 3:
        raise argparse.ArgumentTypeError(
            "expected PROMPT,CHOSEN,REJECTED column names or prompt=..,chosen=..,rejected=..")
    return parts


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="inspect datasets",
        description="Look at datasets before training on them. 'molma data inspect SOURCE' prints counts, "
        "text-length statistics, the multi-turn share, the first records and every invalid row "
        "(file:line: field: reason); exit code 0 when all rows are valid, 1 when some are invalid, "
        "2 when the source cannot be read.")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])

    inspect = sub.add_parser(
        "inspect",
        help="counts, length statistics, first records and all errors of a dataset",
        description="Summarize a dataset: a file (JSONL, JSON array, CSV/TSV, optionally gzipped; Parquet or "
        "Arrow through datasets), a datasets save_to_disk folder, a data_files-style glob ('shards/*.parquet'), "
        "builtin:help / builtin:safe (pairs) / builtin:prompts_help / builtin:prompts_safe, or "
        "hub:NAME?split=..&data_dir=.. (needs network). TRL's conversational formats (message lists) are "
        "read too. Pairs are judged as reward-model training judges them (an empty reply is invalid).",
    )
    inspect.add_argument("source", help="path, folder, glob, builtin:NAME or hub:NAME")
    formats = sorted({*PAIR_FORMATS, *PROMPT_FORMATS, "auto"})
    inspect.add_argument("--format", default="auto", choices=formats, help="dataset format (default: auto)")
    inspect.add_argument("--objective", help="help or safe (selects PKU-SafeRLHF's label)")
    inspect.add_argument("--kind", default="auto", choices=["auto", "pairs", "prompts"],
                         help="read preference pairs or prompts (default: from the fields)")
    inspect.add_argument("--columns", type=_columns,
                         help="pair columns of a plain file: PROMPT,CHOSEN,REJECTED or prompt=..,chosen=..")
    inspect.add_argument("--column", help="prompt column of a plain file (reads prompts)")
    inspect.add_argument("--first-turn", action="store_true",
                         help="prompts: keep only the first Human turn of dialogues")
    inspect.add_argument("-n", type=int, default=3, help="records to show (default 3)")
    inspect.add_argument("--limit", type=int, help="read at most this many valid records")
    inspect.add_argument("--max-errors", type=int, default=50,
                         help="errors to list (default 50; 0 lists all)")
    inspect.add_argument("--json", action="store_true", help="print the result as JSON")
    inspect.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from molma.data.inspect import format_inspection, inspect_data

    try:
        result = inspect_data(
            args.source, kind=args.kind, format=args.format, objective=args.objective,
            columns=args.columns, column=args.column, first_turn=args.first_turn, n=args.n,
            limit=args.limit,
        )
    except (DataFormatError, ValueError, OSError) as err:
        print(f"molma data inspect: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_inspection(result, max_errors=args.max_errors))
    return 1 if result.report.errors else 0
