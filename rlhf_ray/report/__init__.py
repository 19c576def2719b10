"""Run reports: ``rlhf-ray report DIR`` writes ``DIR/report/`` (report.md, report.html, PNGs).

    collect.py   reads a pipeline run directory (summary, manifests, logs, predictions)
    run.py       the run report: stages, training curves, PPO over iterations
    results.py   reward model scores, test metrics with intervals, head vs tail
    scores.py    the reward model's scores of sampled preference pairs
    sweep.py     the report of a sweep directory (``rlhf-ray tune`` output)
    plots.py     one function per figure (matplotlib, Agg)
    render.py    Markdown, and the same page as one self-contained HTML file
    cli.py       ``rlhf-ray report``
"""
from __future__ import annotations

from pathlib import Path


def write_report(directory: str | Path) -> Path:
    """The report of a pipeline run or (when it holds ``sweep.json``) a sweep; returns report.html."""
    from rlhf_ray.report.sweep import SWEEP_MARK, write_sweep_report

    if (Path(directory) / SWEEP_MARK).is_file():
        return write_sweep_report(directory)
    from rlhf_ray.report.run import write_run_report

    return write_run_report(directory)
