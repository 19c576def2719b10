"""Report sections about results: the reward model's scores, the test table, head vs tail."""
from __future__ import annotations

import numpy as np

from rlhf_ray.report import plots
from rlhf_ray.report.collect import RunData
from rlhf_ray.report.render import Report

INTERVAL_PLOT = (("ndcg@10", f"NDCG@10 ({plots.SCORE})"), ("recall@20", f"recall@20 ({plots.FRACTION})"),
                 ("tail_recall@20", "recall@20, tail users (0-1)"),
                 ("page_ild", "intra-list distance, 0-1"))
HEAD_TAIL = ("recall@10", "recall@20")


def reward_section(rep: Report, run: RunData) -> None:
    from rlhf_ray.report.scores import PER_FAMILY, family_scores

    rep.heading("Reward model scores")
    st = run.stages.get("reward")
    if st is None or st.manifest is None:
        rep.skip("no reward model checkpoint in this run")
        return
    pairs = run.pairs_file()
    if pairs is None:
        rep.skip(f"the reward model's pairs file is gone (looked for {run.root / 'reward.pairs.parquet'} "
                 "and the path its manifest records)")
        return
    scores, split = family_scores(run.root / "reward", pairs, PER_FAMILY)
    rows = [[f, len(s["chosen"]), float(s["chosen"].mean()), float(s["rejected"].mean()),
             f"{np.mean(s['chosen'] > s['rejected']):.1%}"] for f, s in scores.items()]
    rep.table(["family", "pairs", "chosen: mean score", "rejected: mean score", "chosen scored higher"], rows)
    rep.figure(plots.reward_scores(scores, split), "reward-scores",
               f"The reward model's total score (alpha-mixed page and item heads, normalised) of the chosen and "
               f"the rejected page of up to {PER_FAMILY} {split} pairs per family from {pairs.name}.")


def _cis(run: RunData, keys: set[str]) -> dict[str, dict]:
    """policy -> {metric: bootstrap_ci} over its per-user test predictions."""
    import pandas as pd

    from rlhf_ray.stats import bootstrap_ci

    out = {}
    for policy in run.evaluation:
        path = run.predictions(policy)
        if path is not None:
            df = pd.read_parquet(path)
            out[policy] = {k: bootstrap_ci(df[k].to_numpy(dtype=float)) for k in sorted(keys) if k in df}
    return out


def _ci_cell(c: dict | None) -> str:
    if not c or c["mean"] is None:
        return "n/a"
    return f"{c['mean']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}]"


def _paired(run: RunData, keys: list[str]) -> tuple[str, list[list]] | None:
    """Per-user paired differences of every policy against the first evaluated one."""
    import pandas as pd

    from rlhf_ray.stats import paired_diff

    pols = [p for p in run.evaluation if run.predictions(p)]
    if len(pols) < 2:
        return None
    base = pd.read_parquet(run.predictions(pols[0])).set_index("user_idx")
    rows = []
    for p in pols[1:]:
        other = pd.read_parquet(run.predictions(p)).set_index("user_idx").reindex(base.index)
        for k in keys:
            if k in base and k in other:
                d = paired_diff(other[k].to_numpy(dtype=float), base[k].to_numpy(dtype=float))
                if d["n"]:
                    rows.append([f"{p} - {pols[0]}", k, f"{d['diff']:+.4f}", f"[{d['lo']:+.4f}, {d['hi']:+.4f}]",
                                 d["n"], d["verdict"]])
    return pols[0], rows


def test_section(rep: Report, run: RunData) -> None:
    from rlhf_ray.metrics import direction
    from rlhf_ray.pipeline import REPORT_KEYS

    rep.heading("Test metrics")
    ev = run.evaluation
    if not ev:
        rep.skip("no test evaluation in this run (the pipeline's eval step did not run)")
        rep.heading("Head vs tail")
        rep.skip("no test evaluation in this run")
        return
    protocol = next(iter(ev.values())).get("protocol", "loo")
    keys = list(REPORT_KEYS.get(protocol, REPORT_KEYS["loo"]))
    ht = {f"{g}_{m}" for g in ("head", "tail") for m in HEAD_TAIL}
    cis = _cis(run, set(keys) | ht | {k for k, _ in INTERVAL_PLOT})
    users = {p: int(m.get("users", 0)) for p, m in ev.items()}
    rows = []
    for k in keys:
        arrow = "higher is better" if direction(k) == "max" else "lower is better"
        cells = []
        for p, m in ev.items():
            if k in (m.get("n/a") or {}):
                cells.append("n/a")
            elif k in cis.get(p, {}):
                cells.append(_ci_cell(cis[p][k]))
            else:
                cells.append(f"{m[k]:.4f} (aggregate)" if isinstance(m.get(k), float) else "-")
        rows.append([k, arrow, *cells])
    rep.text(f"Protocol `{protocol}`, {', '.join(f'{p}: {n} users' for p, n in users.items())}. Cells: mean "
             "[95% bootstrap interval over users]; *aggregate* = one figure over all users (no per-user value).")
    rep.table(["metric", "direction", *ev], rows)
    reasons = {k: r for m in ev.values() for k, r in (m.get("n/a") or {}).items()}
    for k, r in reasons.items():
        rep.text(f"- `{k}`: {r}")
    if cis:
        shown = [(k, u) for k, u in INTERVAL_PLOT if any(k in c for c in cis.values())]
        rep.figure(plots.intervals(cis, shown, "Test metrics per policy, mean and 95% bootstrap interval"),
                   "test-intervals", "Test metrics of every policy with 95% bootstrap intervals over users.")
    paired = _paired(run, ["ndcg@10", "recall@20", "tail_recall@20", "page_ild"])
    if paired:
        base, prow = paired
        rep.text(f"Paired differences against **{base}** on the same users (a difference is claimed only when its "
                 "interval excludes 0):")
        rep.table(["policies", "metric", "difference", "95% interval", "users", "verdict"], prow)
    rep.heading("Head vs tail")
    have = [m for m in HEAD_TAIL if any(f"head_{m}" in c and f"tail_{m}" in c for c in cis.values())]
    if not have:
        rep.skip("the predictions files have no head_/tail_ per-user columns")
        return
    rep.figure(plots.head_tail(cis, have), "head-tail",
               "Test recall of each policy for users whose held-out item is a head (popular) item vs a tail item, "
               "with 95% bootstrap intervals.")


def targets_section(rep: Report, run: RunData) -> None:
    """The alignment targets the pipeline checked on its test predictions (:mod:`rlhf_ray.targets`)."""
    rep.heading("Alignment targets")
    rows = run.summary.get("targets")
    if not rows:
        rep.skip("no targets checked in this run (they need the SFT policy and PPO or LPO evaluated on test)")
        return

    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    rep.text("Each stage against SFT on the same test users: the ratio of means and the paired 95% bootstrap "
             "interval of the per-user difference (README, Alignment targets).")
    rep.table(["target", "ratio", "difference", "95% interval", "users", "met"],
              [[r["target"], num(r["ratio"], ".3f"), num(r["diff"], "+.4f") or r["verdict"],
                "" if r["lo"] is None else f"[{r['lo']:+.4f}, {r['hi']:+.4f}]", num(r["users"], "d"),
                {True: "yes", False: "no", None: "n/a"}[r["met"]]] for r in rows])
