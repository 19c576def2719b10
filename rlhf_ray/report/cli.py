"""``rlhf-ray report DIR``: the report of a pipeline run or a sweep."""
from __future__ import annotations

import argparse


def _report(args: argparse.Namespace) -> int:
    from rlhf_ray.report import write_report

    html = write_report(args.dir)
    print(f"report: {html}\n        {html.with_name('report.md')} (Markdown, with the PNGs beside it)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write a run's (or a sweep's) report: DIR/report/report.html and report.md",
        description="Plots and tables of a pipeline run directory (stages, training curves, PPO over iterations, "
                    "reward model scores, test metrics with intervals, head vs tail) or of a sweep directory "
                    "(one holding sweep.json). Writes DIR/report/report.md with its PNGs and "
                    "DIR/report/report.html, one self-contained file (images embedded) that opens offline.")
    p.add_argument("dir", metavar="DIR", help="a pipeline --out directory (summary.json) or a sweep directory")
    p.set_defaults(func=_report)
