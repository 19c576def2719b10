"""The report of one pipeline run: what ran, how training went, what the policies score.

Sections (in order; one with no inputs says why it is skipped):

    Stages                 time, checkpoint, settings changed from the defaults
    Training curves        per supervised stage: loss per step, validation per epoch
    PPO over iterations    reward parts, KL and its coefficient, entropy; validation with hacking alerts
    Reward model scores    chosen vs rejected pages per preference family (rlhf_ray.report.results)
    Test metrics           every policy, 95% bootstrap intervals, paired differences
    Head vs tail           per policy, users with a popular vs a long-tail held-out item
    Alignment targets      PPO and LPO against SFT, as the pipeline checked them (rlhf_ray.targets)
"""
from __future__ import annotations

import time
from pathlib import Path

from rlhf_ray.report import plots
from rlhf_ray.report.collect import RunData, StageRun, load_run, read_json
from rlhf_ray.report.render import Report

SECTIONS = ("Stages", "Training curves", "PPO over iterations", "Reward model scores", "Test metrics",
            "Head vs tail", "Alignment targets")
VAL_KEYS = ("val/ndcg@10", "val/recall@20", "val/tail_recall@20", "val/acc", "val/acc_relevance", "val/acc_ranking",
            "val/acc_diversity", "val/acc_redundancy", "val/rating_rmse")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(cls, config: dict | None) -> list[str]:
    """``key = value (default d)`` for every setting of ``config`` that differs from ``cls``'s default."""
    if cls is None or config is None:
        return []
    now, default = flatten(config), flatten(cls.from_dict({}).to_dict())
    return [f"`{k}` = {now.get(k)!r} (default {default.get(k)!r})"
            for k in sorted(set(now) | set(default)) if now.get(k) != default.get(k)]


def _minutes(s) -> str:
    if not isinstance(s, (int, float)):
        return "-"
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def _status(st: StageRun) -> tuple[str, str]:
    """(what happened in the last pipeline call, time)."""
    wall = (st.manifest or {}).get("metrics", {})
    wall = wall.get("train/wall_s", wall.get("wall_s"))
    if st.entry.get("skipped"):
        return "skipped: checkpoint complete", f"{_minutes(wall)} (when trained)"
    if st.entry:
        return ("trained" if st.manifest else "no checkpoint"), _minutes(st.entry.get("seconds"))
    return "not run by the last pipeline call", f"{_minutes(wall)} (when trained)"


def stages_section(rep: Report, run: RunData) -> None:
    from rlhf_ray.config import DataConfig
    from rlhf_ray.stages import registry

    rep.heading("Stages")
    entries = run.summary.get("stages") or {}
    rows, changes = [], {}
    stats = run.root / "data" / "stats.json"
    if stats.is_file():
        changes["data"] = config_changes(DataConfig, read_json(stats).get("config"))
        rows.append(["data", "prepared" if "data" in entries else "not run by the last pipeline call",
                     _minutes((entries.get("data") or {}).get("seconds")), "data/", len(changes["data"])])
    sections = registry.config_sections()
    for name, st in run.stages.items():
        status, took = _status(st)
        changes[name] = config_changes(sections.get(name), (st.manifest or {}).get("config"))
        ckpt = f"{name}/ ({st.manifest['id']})" if st.manifest else "-"
        rows.append([name, status, took, ckpt, len(changes[name])])
    if run.evaluation:
        rows.append(["eval", f"tested {', '.join(run.evaluation)}", _minutes(entries["eval"].get("seconds")),
                     "predictions-*.parquet", "-"])
    rep.table(["stage", "last pipeline call", "time", "checkpoint (id)", "settings changed"], rows)
    rep.text(f"Whole pipeline call: {_minutes(run.summary.get('seconds'))}. Settings changed from each "
             "stage's config defaults (`rlhf-ray <stage> --help` documents each one):")
    rep.bullets([f"**{name}**: " + ("; ".join(ch) if ch else "all defaults") for name, ch in changes.items()])


def _loss_key(k: str) -> bool:
    return k == "train/loss" or k.startswith("train/l_") or k in ("train/ce", "train/pref")


def curves_section(rep: Report, run: RunData) -> None:
    rep.heading("Training curves")
    supervised = [st for st in run.stages.values() if st.epochs]
    if not supervised:
        rep.skip("no stage logged per-epoch records (<stage>.logs/metrics.jsonl)")
        return
    for st in supervised:
        keys = sorted({k for r in st.epochs for k in r if _loss_key(k)})
        steps = st.step_scalars(keys)
        val = [k for k in VAL_KEYS if any(k in r for r in st.epochs)]
        m = (st.manifest or {}).get("metrics", {})
        note = (f"{len(st.epochs)} epoch(s), {m.get('train/steps', '?')} steps; best epoch "
                f"{m.get('train/best_epoch', '?')}, stopped by {m.get('train/stopped_by', '?')}")
        src = "per step from TensorBoard (faint: raw; bold: moving average)" if steps else "epoch means"
        best = m.get("train/best_epoch")
        rep.figure(plots.stage_curves(st.name, steps, st.epochs, val, best if isinstance(best, int) else None),
                   f"curves-{st.name}",
                   f"{st.name}: {note}. Loss {src}; validation after each epoch.")


def ppo_section(rep: Report, run: RunData) -> None:
    rep.heading("PPO over iterations")
    st = run.stages.get("ppo")
    if st is None:
        rep.skip("no PPO stage in this run")
        return
    iters = [r for r in st.records if "kl/coef" in r]
    vals = [r for r in st.records if "kl/coef" not in r and any(k.startswith("val/") for k in r)]
    if not iters:
        rep.skip(f"no PPO iterations logged in {st.logs / 'metrics.jsonl'}")
        return
    cfg = (st.manifest or {}).get("config") or {}
    mon = run.ppo_monitor()
    if mon is None:
        n = st.entry.get("hacking_alerts", (st.manifest or {}).get("metrics", {}).get("hacking_alerts", "?"))
        rep.text(f"Reward-hacking alerts: {n} (no PPO state under ppo.state/ to place them on the plots).")
        mon = {"alerts": [], "baseline": {}, "threshold": None}
    else:
        th = mon["threshold"]
        rep.text(f"Reward-hacking monitor: {len(mon['alerts'])} alert(s). It flags a validation where the reward "
                 f"has risen since the first iteration while validation NDCG@10 or page ILD fell more than "
                 f"{th:.0%} below its value for the SFT policy." if isinstance(th, (int, float)) else
                 f"Reward-hacking monitor: {len(mon['alerts'])} alert(s).")
    alerts = mon["alerts"]
    if alerts:
        rep.table(["iteration", "reward gain", "metric", "baseline", "now", "drop"],
                  [[a["iteration"], a["reward_gain"], a["metric"], a["baseline"], a["now"], f"{a['drop']:.1%}"]
                   for a in alerts])
    rep.figure(plots.ppo_training(iters, alerts), "ppo-training",
               f"PPO, {len(iters)} iterations: rollout reward (page and item heads, normalised), KL to the "
               "reference policy with its coefficient, and policy entropy. Red dashed lines: hacking alerts.")
    if not vals:
        rep.skip("no PPO validation records (eval_every = 0)")
        return
    rep.figure(plots.ppo_validation(vals, alerts, mon["baseline"], mon["threshold"]), "ppo-validation",
               f"PPO validation on {int(vals[-1].get('val/users', 0))} users every {cfg.get('eval_every', '?')} "
               "iterations (iteration 0 = the SFT policy); dotted: the monitor's alert level.")


def write_run_report(root: str | Path) -> Path:
    """Write ``RUN_DIR/report/`` (report.md, report.html, PNGs); returns the HTML path."""
    from rlhf_ray.report import results

    run = load_run(root)
    rep = Report(f"Run report: {run.root.name}", run.root / "report")
    stats = run.root / "data" / "stats.json"
    src = read_json(stats).get("source", "?") if stats.is_file() else "?"
    rep.text(f"Run directory `{run.root}`; data: {src}. Written {time.strftime('%Y-%m-%d %H:%M %Z')} by "
             f"`rlhf-ray report {run.root}`.")
    stages_section(rep, run)
    curves_section(rep, run)
    ppo_section(rep, run)
    results.reward_section(rep, run)
    results.test_section(rep, run)
    results.targets_section(rep, run)
    return rep.write()
