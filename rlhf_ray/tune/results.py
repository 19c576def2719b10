"""A finished (or continued) sweep's outputs: the trial table, the Pareto front, the selection
on validation, the one test evaluation of the selected and the default trial, and the export.

Selection uses validation only: among *completed* trials (every ``trial`` stage finished and
exported; a trial ASHA stopped early is listed but never selected), the best value of the
objective at the trial's last evaluation (its final policy). The test split is then
evaluated once, for that trial and for the default trial (the base config's own values; run
here if the scheduler stopped it), with 95% bootstrap intervals over users and the paired
difference best - default.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from rlhf_ray.checkpoint import atomic_dir, verify_checkpoint
from rlhf_ray.errors import CheckpointError, UserError
from rlhf_ray.jsonio import write_atomic, write_json_atomic
from rlhf_ray.tune.spec import Sweep
from rlhf_ray.tune.trial import final_policy, run_trial

SHOWN = ("val/ndcg@10", "val/recall@20", "val/page_ild", "val/tail_recall@20", "val/page_ndcg@10",
         "reward/total", "kl/per_page")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _complete(path: Path | None) -> bool:
    if path is None:
        return False
    try:
        verify_checkpoint(path)
        return True
    except CheckpointError:
        return False


def collect(grid, sweep: Sweep, out: Path) -> list[dict]:
    """One row per trial: id, knobs, status, last and best validation metrics, curve, policy."""
    defaults = sweep.defaults()
    rows = []
    for res in grid:
        m = dict(res.metrics or {})
        trial_id = m.get("trial_id") or Path(res.path).name
        df = res.metrics_dataframe
        curve = [float(v) for v in df["objective"]] if df is not None and "objective" in df else []
        policy = final_policy(sweep, out / "trials" / str(trial_id))
        done = _complete(policy)
        knobs = {d.path: res.config.get(d.path) for d in sweep.dims}
        rows.append({
            "trial": str(trial_id), "default": all(_same(knobs[k], defaults[k]) for k in knobs), **knobs,
            "status": "error" if res.error else "completed" if done else "stopped",
            "evaluations": len(curve), "objective": m.get("objective"),
            "best_objective": (max if sweep.cfg.objective.mode == "max" else min)(curve) if curve else None,
            **{k: m[k] for k in m if k.startswith(("val/", "reward/", "kl/"))},
            "wall_s": m.get("time_total_s"), "policy": str(policy) if done else None,
            "curve": curve, "error": str(res.error).splitlines()[0][:200] if res.error else None,
        })
    rows.sort(key=lambda r: r["trial"])
    return rows


def _same(a: Any, b: Any) -> bool:
    if _finite(a) and _finite(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def pareto_front(rows: list[dict], keys: list[str]) -> list[dict]:
    """Completed trials not dominated on ``keys`` (all higher-is-better): no other trial is at
    least as good on every key and better on one. Trials missing a key are left out."""
    pts = [r for r in rows if r["status"] == "completed" and all(_finite(r.get(k)) for k in keys)]

    def dominates(a: dict, b: dict) -> bool:
        return all(a[k] >= b[k] for k in keys) and any(a[k] > b[k] for k in keys)

    return [r for r in pts if not any(dominates(o, r) for o in pts if o is not r)]


def select(rows: list[dict], mode: str) -> dict | None:
    done = [r for r in rows if r["status"] == "completed" and _finite(r.get("objective"))]
    if not done:
        return None
    return (max if mode == "max" else min)(done, key=lambda r: r["objective"])


def test_metrics(policy: str, sweep: Sweep, prepared) -> tuple[dict, pd.DataFrame, str]:
    """Test-split metrics of one policy (every test user), per user, and the protocol."""
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.evaluation import evaluate_full

    cfgs = sweep.pipeline_configs()
    ck = load_checkpoint(policy)
    ev = evaluate_full(ck.model, ck.vocab, prepared, "test", cfgs["generation"], max_users=cfgs["pipeline"].eval_users)
    return ev.metrics, ev.per_user, ev.protocol


def compare_on_test(best: dict, default_policy: str, sweep: Sweep, shared: Path) -> dict:
    """Test metrics of the selected and the default policy: intervals and paired differences."""
    from rlhf_ray.pipeline import REPORT_KEYS
    from rlhf_ray.stats import bootstrap_ci, paired_diff

    from rlhf_ray.data.prepared import load_prepared

    prepared = load_prepared(shared / "data")
    (_, pu_best, protocol), (_, pu_def, _) = (test_metrics(best["policy"], sweep, prepared),
                                              test_metrics(default_policy, sweep, prepared))
    keys = [k for k in REPORT_KEYS[protocol] if k in pu_best.columns and k in pu_def.columns]
    return {"protocol": protocol, "users": int(len(pu_best)),
            "best": {k: bootstrap_ci(pu_best[k].to_numpy(float)) for k in keys},
            "default": {k: bootstrap_ci(pu_def[k].to_numpy(float)) for k in keys},
            "best_minus_default": {k: paired_diff(pu_best[k].to_numpy(float), pu_def[k].to_numpy(float))
                                   for k in keys}}


def export_best(policy: str, dst: Path) -> Path:
    """Copy the selected policy to ``dst`` (atomically; a servable checkpoint)."""
    verify_checkpoint(policy)
    with atomic_dir(dst) as tmp:
        shutil.copytree(policy, tmp, dirs_exist_ok=True)
    verify_checkpoint(dst)
    return dst


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict], sweep: Sweep, best: dict | None, front: list[dict]) -> str:
    knobs = [d.path for d in sweep.dims]
    metrics = [k for k in SHOWN if any(k in r for r in rows)]
    cols = ["trial", "default", *knobs, "status", "evaluations", "objective", *metrics, "wall_s"]
    on_front = {r["trial"] for r in front}
    lines = [f"# Sweep {sweep.cfg.name}", "",
             f"Objective ({sweep.cfg.objective.mode}): " +
             " + ".join(f"{w:g} x {k}" for k, w in sweep.cfg.objective.terms.items()) +
             " on validation, at each trial's last evaluation. * = selected, P = on the Pareto front over "
             f"{', '.join(sweep.cfg.pareto)}.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        mark = ("*" if best is not None and r["trial"] == best["trial"] else "") + ("P" if r["trial"] in on_front else "")
        cells = [_cell(r.get(c)) for c in cols]
        cells[0] = f"{r['trial']} {mark}".strip()
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def test_markdown(test: dict) -> str:
    lines = ["", f"## Test split ({test['protocol']} protocol, {test['users']} users), evaluated once", "",
             "| metric | selected | default | selected - default [95% CI] | verdict |", "|---|---|---|---|---|"]
    for k, b in test["best"].items():
        d, p = test["default"][k], test["best_minus_default"][k]
        if b["mean"] is None or d["mean"] is None:
            continue
        diff = "-" if p["diff"] is None else f"{p['diff']:+.4f} [{p['lo']:+.4f}, {p['hi']:+.4f}]"
        lines.append(f"| {k} | {b['mean']:.4f} [{b['lo']:.4f}, {b['hi']:.4f}] | {d['mean']:.4f} "
                     f"[{d['lo']:.4f}, {d['hi']:.4f}] | {diff} | {p['verdict']} |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict], sweep: Sweep, out: Path, evaluate_test: bool = True) -> dict:
    from rlhf_ray.tune.plots import write_plots

    front = pareto_front(rows, sweep.cfg.pareto)
    best = select(rows, sweep.cfg.objective.mode)
    def frame(rs: list[dict]) -> str:
        return pd.DataFrame([{k: v for k, v in r.items() if k != "curve"} for r in rs]).to_csv(index=False)

    write_atomic(out / "results.csv", frame(rows))
    write_atomic(out / "pareto.csv", frame(front))
    summary: dict[str, Any] = {"name": sweep.cfg.name, "sweep_file": str(sweep.path), "trials": len(rows),
                               "completed": sum(r["status"] == "completed" for r in rows),
                               "stopped": sum(r["status"] == "stopped" for r in rows),
                               "errors": sum(r["status"] == "error" for r in rows),
                               "objective": sweep.cfg.objective.to_dict(), "pareto_keys": sweep.cfg.pareto,
                               "pareto": [r["trial"] for r in front],
                               "space": {d.path: d.describe() for d in sweep.dims}}
    md = markdown(rows, sweep, best, front)
    if best is None:
        print("[tune] no trial completed: nothing selected (see results.md for errors)")
    else:
        summary["best"] = {k: v for k, v in best.items() if k != "curve"}
        summary["best_checkpoint"] = str(export_best(best["policy"], out / "best"))
        print(f"[tune] selected {best['trial']} (objective {best['objective']:.4f}); policy exported to "
              f"{summary['best_checkpoint']}")
        if evaluate_test:
            default = next((r for r in rows if r["default"] and r["status"] == "completed"), None)
            if default is None:
                raise UserError("the default config has no completed trial to compare with (see results.md)")
            default_policy = default["policy"]
            summary["default_policy"] = default_policy
            summary["test"] = compare_on_test(best, default_policy, sweep, out / "shared")
            md += test_markdown(summary["test"])
    summary["plots"] = write_plots(rows, sweep, out / "plots", best, front)
    write_atomic(out / "results.md", md)
    write_json_atomic(out / "sweep.json", summary)
    print(md)
    from rlhf_ray.pipeline import write_report_safely

    write_report_safely(out)  # OUT/report/: the sweep's report (a failure only warns)
    return summary


def add_default(rows: list[dict], sweep: Sweep, out: Path) -> list[dict]:
    """Make sure the default config (the base config's own values) has a completed row: when the
    scheduler stopped its trial, or it was not a trial (a default outside the space), it is
    trained here once, outside Tune, in ``trials/default``."""
    if any(r["default"] and r["status"] == "completed" for r in rows):
        return rows
    work = out / "trials" / "default"
    print(f"[tune] training the default config (no completed default trial) in {work}")
    t = time.time()
    final = run_trial(sweep.defaults(), sweep, out / "shared", work)
    policy = final_policy(sweep, work)
    obj = sweep.cfg.objective.value(final)
    row = {"trial": "default", "default": True, **sweep.defaults(), "status": "completed" if _complete(policy)
           else "error", "evaluations": 0, "objective": obj, "best_objective": obj,
           **{k: v for k, v in final.items() if k.startswith(("val/", "reward/", "kl/")) and _finite(v)},
           "wall_s": time.time() - t, "policy": str(policy), "curve": [], "error": None}
    return [*[r for r in rows if not r["default"]], row, *[r for r in rows if r["default"]]]
