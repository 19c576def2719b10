"""The report of a sweep directory, as ``rlhf-ray tune`` writes it:

    sweep.json          marks the directory as a sweep (its settings)
    results.md          the sweep's own summary (Markdown), included as it is
    results.csv         one row per trial
    pareto.csv          the trials on the Pareto front
    plots/*.png         the sweep's figures (objective against each knob, top trials' curves, front)
    plots/index.json    [{"file": "x.png", "title": "..."}, ...]: which figures, in which order

Written to ``SWEEP_DIR/report/`` like a run's report; the figures are linked from the
Markdown and embedded in the HTML.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from rlhf_ray.errors import UserError
from rlhf_ray.report.collect import read_json
from rlhf_ray.report.render import Report

SWEEP_MARK = "sweep.json"
SECTIONS = ("Sweep", "Results", "Pareto front", "Plots")
MAX_ROWS = 30
MAX_COLS = 10


def _num(v: str) -> str:
    """A CSV cell, numbers to 4 significant digits."""
    try:
        return f"{float(v):.4g}"
    except ValueError:
        return v


def front_columns(header: list[str], settings: dict) -> list[int]:
    """Which pareto.csv columns to show: trial, the knobs, the objective and the Pareto metrics
    (as sweep.json names them), else the first few."""
    want = ["trial", *(settings.get("space") or {}), "objective", *(settings.get("pareto_keys") or [])]
    cols = [header.index(c) for c in dict.fromkeys(want) if c in header]
    return cols if len(cols) > 1 else list(range(min(MAX_COLS, len(header))))


def plot_index(path: Path) -> list[dict]:
    """``plots/index.json``, checked: a list of {"file": name, "title": text}."""
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    ok = isinstance(index, list) and all(isinstance(e, dict) and isinstance(e.get("file"), str)
                                         and isinstance(e.get("title"), str) for e in index)
    if not ok:
        raise UserError(f"{path}: expected a list of {{\"file\": name, \"title\": text}} entries")
    for e in index:
        if Path(e["file"]).name != e["file"]:
            raise UserError(f"{path}: {e['file']!r} must be a file name inside plots/")
    return index


def _demote(md: str) -> str:
    """Headings two levels down (# -> ###), so an included document nests under the report's section."""
    return re.sub(r"^(#{1,4}) ", r"##\1 ", md, flags=re.M)


def write_sweep_report(root: str | Path) -> Path:
    root = Path(root).expanduser().resolve()
    settings = read_json(root / SWEEP_MARK)
    rep = Report(f"Sweep report: {root.name}", root / "report")
    rep.text(f"Sweep directory `{root}`; trials: [results.csv](../results.csv), front: [pareto.csv](../pareto.csv). "
             f"Written by `rlhf-ray report {root}`.")
    shared = root / "shared" / "report" / "report.html"
    if shared.is_file():
        rep.text("The stages every trial starts from have their own report: "
                 "[shared/report/report.html](../shared/report/report.html).")
    rep.heading("Sweep")
    scalars = {k: v for k, v in settings.items() if not isinstance(v, (dict, list))} if isinstance(settings, dict) else {}
    if scalars:
        rep.table(["setting", "value"], [[k, v] for k, v in scalars.items()])
    else:
        rep.text("sweep.json holds no top-level settings to list.")
    rep.heading("Results")
    results = root / "results.md"
    if results.is_file():
        rep.text(_demote(results.read_text().strip()))
    else:
        rep.skip(f"{results} is missing")
    rep.heading("Pareto front")
    pareto = root / "pareto.csv"
    if pareto.is_file():
        with open(pareto, newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) > 1:
            cols = front_columns(rows[0], settings if isinstance(settings, dict) else {})
            rep.table([rows[0][i] for i in cols], [[_num(r[i]) for i in cols] for r in rows[1: 1 + MAX_ROWS]])
            more = len(rows) - 1 - MAX_ROWS
            rep.text(f"{len(cols)} of {len(rows[0])} columns" + (f", {more} more rows" if more > 0 else "")
                     + ": all of them in [pareto.csv](../pareto.csv).")
        else:
            rep.skip(f"{pareto} has no trials")
    else:
        rep.skip(f"{pareto} is missing")
    rep.heading("Plots")
    index = root / "plots" / "index.json"
    if not index.is_file():
        rep.skip(f"{index} is missing")
        return rep.write()
    for e in plot_index(index):
        png = root / "plots" / e["file"]
        if png.is_file():
            rep.heading(e["title"], level=3)
            rep.image(png, e["title"])
        else:
            rep.text(f"*Missing: {e['file']} ({e['title']}) is listed in plots/index.json but not in plots/.*")
    return rep.write()
