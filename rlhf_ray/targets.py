"""The alignment targets, checked on one run's own test predictions.

What alignment has to show against the SFT policy it starts from (README, "Alignment
targets"), on the same test users, each stage's per-user metrics against SFT's:

* PPO: page NDCG@10 and Recall@20 at least SFT's, page ILD@10 at least 1.05x SFT's (``page_ild@10``:
  the page's first 10 slots, whatever its length, so pages of 20 are not judged deeper), at
  least one of these three a gain beyond its paired 95% interval, and the reward-hacking
  monitor silent over the whole run.
* LPO: tail Recall@20 (users whose held-out item is a tail item) at least 1.5x SFT's, with
  NDCG@10 at least 0.99x SFT's.

A ratio is mean(stage) / mean(SFT) over the users where both are defined (tail metrics:
the tail users only); the interval is the paired bootstrap of the per-user difference
(:func:`rlhf_ray.stats.paired_diff`). "met" compares the ratio with the bound; the interval
says whether the difference can be claimed at all. Checked by ``rlhf-ray pipeline`` after
its test table (printed, and written to ``summary.json`` under ``targets``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from rlhf_ray.stats import paired_diff

BASE = "sft"


@dataclass(frozen=True)
class Target:
    """``stage``'s ``metric`` at least ``ratio`` x the base's."""

    stage: str
    metric: str
    ratio: float


TARGETS = (
    Target("ppo", "page_ndcg@10", 1.0),
    Target("ppo", "recall@20", 1.0),
    Target("ppo", "page_ild@10", 1.05),
    Target("lpo", "tail_recall@20", 1.5),
    Target("lpo", "ndcg@10", 0.99),
)
#: stages that must also show one gain beyond the interval among their targets' metrics
NEEDS_GAIN = ("ppo",)


def check(per_user: Mapping[str, pd.DataFrame], hacking_alerts: int | None = None, base: str = BASE,
          targets=TARGETS) -> list[dict]:
    """One row per target whose stage and base both have per-user predictions (``user_idx``
    plus metric columns), then a "gain beyond the interval" row per stage of :data:`NEEDS_GAIN`,
    then the hacking monitor's row when ``hacking_alerts`` is known.

    Row: ``{"target", "stage", "metric", "need", "ratio", "diff", "lo", "hi", "users", "verdict", "met"}``
    (``met`` None where the figure is undefined)."""
    if base not in per_user:
        return []
    ref = per_user[base].set_index("user_idx")
    rows, verdicts = [], {}
    for t in targets:
        if t.stage not in per_user or t.metric not in ref:
            continue
        other = per_user[t.stage].set_index("user_idx").reindex(ref.index)
        d = paired_diff(other[t.metric].to_numpy(dtype=float), ref[t.metric].to_numpy(dtype=float))
        verdicts.setdefault(t.stage, []).append(d["verdict"])
        met = None if d["rel"] is None else bool(d["rel"] >= t.ratio)
        rows.append({"target": f"{t.stage} {t.metric} >= {t.ratio:.2f}x {base}", "stage": t.stage,
                     "metric": t.metric, "need": t.ratio, "ratio": d["rel"], "diff": d["diff"], "lo": d["lo"],
                     "hi": d["hi"], "users": d["n"], "verdict": d["verdict"], "met": met})
    for stage in NEEDS_GAIN:
        if stage in verdicts:
            rows.append({"target": f"{stage}: one of its gains beyond the interval", "stage": stage,
                         "metric": None, "need": None, "ratio": None, "diff": None, "lo": None, "hi": None,
                         "users": None, "verdict": ", ".join(verdicts[stage]), "met": "higher" in verdicts[stage]})
    if hacking_alerts is not None:
        rows.append({"target": "ppo: hacking monitor silent", "stage": "ppo", "metric": "hacking_alerts",
                     "need": 0, "ratio": None, "diff": None, "lo": None, "hi": None, "users": None,
                     "verdict": f"{hacking_alerts} alert(s)", "met": hacking_alerts == 0})
    return rows


def format_rows(rows: list[dict]) -> str:
    """The rows of :func:`check` as an aligned text table."""
    if not rows:
        return ""
    lines = [f"  {'target':44s} {'ratio':>7s} {'difference [95% interval]':>30s} {'users':>6s}  met"]
    for r in rows:
        ratio = f"x{r['ratio']:.3f}" if r["ratio"] is not None else ""
        diff = (f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]" if r["diff"] is not None else r["verdict"])
        met = {True: "yes", False: "NO", None: "n/a"}[r["met"]]
        if r["diff"] is not None and r["verdict"] != "within interval":
            met += f" ({r['verdict']})"
        lines.append(f"  {r['target']:44s} {ratio:>7s} {diff:>30s} {str(r['users'] or ''):>6s}  {met}")
    return "\n".join(lines)
