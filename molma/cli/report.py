"""``molma report RUN_DIR``: one self-contained HTML report (and a Markdown twin) of an experiment:
configuration, versions, hardware, reward-model accuracy (Table 2), win rates (Figure 2a), reward
distributions (Figure 3), importance-weight sweep (Figure 4), Pareto fronts with hypervolume, training
curves and training time (Table 3). Missing parts are listed as "not run". Layout: docs/eval.md.
"""

from __future__ import annotations

import argparse
import sys


def _reference(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"--hv-reference: expected OBJECTIVE=NUMBER, got {item!r}")
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="build the HTML/Markdown evaluation report of a run directory",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory (eval/, runs/, rm/, sweep/, pareto/)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    p.add_argument("--title", default="MOLMA evaluation report")
    p.add_argument("--versus", help="model whose win rates are shown (default: from eval/summary.json)")
    p.add_argument("--hv-reference", type=_reference, metavar="OBJ=V,...",
                   help="hypervolume reference point (default: the reference model's mean rewards)")
    p.add_argument("--reference-model", help="reference model name (default: 'ref' if evaluated)")
    p.add_argument("--examples", type=int, default=3, help="example prompts shown with responses")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from molma.eval.report import build_report

    try:
        report = build_report(args.run_dir, args.out, title=args.title, versus=args.versus,
                              hv_reference=args.hv_reference, reference_model=args.reference_model,
                              n_examples=args.examples)
    except ValueError as err:
        print(f"molma report: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {report.html}\nmarkdown: {report.markdown}")
    print(f"{len(report.tables)} tables, {len(report.figures)} figures" +
          (f"; not run: {', '.join(report.missing)}" if report.missing else ""))
    return 0
