"""The full comparison table of one evaluation protocol: ours (SFT, PPO, LPO; seeds) and peers.

    .venv/bin/python bench/protocol_table.py --protocol loo --seeds 0,1,2
    .venv/bin/python bench/protocol_table.py --protocol pagellm --seeds 0,1,2
    .venv/bin/python bench/protocol_table.py --protocol loo --seeds 0 --smoke     # plumbing check, minutes
    .venv/bin/python bench/protocol_table.py --protocol loo --seeds 0,1,2 --retrain ppo,lpo  # after a change to them

Protocols (``rlhf_ray.evaluation.PROTOCOLS``):

* ``loo``: leave-one-out, the sequential-recommender protocol of SASRec and LPO4Rec: one
  held-out positive per user; full-catalogue ranking (seen items excluded) at K = 10, 20;
  WAS/PWKT are n/a.
* ``pagellm``: PageLLM's per-user temporal 80/10/10 split: every held-out positive is a
  target; the generated page (20 items) is judged (page Recall/NDCG@10/20, WAS, PWKT, ILD,
  redundancy) and the full ranking at K = 20, 40, 100.

Tail items: the data is prepared with ``tail_fraction 0.8``, i.e. head = the 20% most
popular training items, tail = the other 80% (the Pareto split). LPO4Rec's own code tags
only the 20% least frequent items as tail; on ml-100k that leaves 30 leave-one-out test
users with a tail target (26 on validation), too few to show or refute any tail effect, so
the measurement departs from it (428 test users under leave-one-out; 2163 tail targets of
648 users under the temporal split).

Ours: for each seed the whole pipeline (``rlhf-ray pipeline``) runs with the shipped config
(``--config``), every stage's seed set, the protocol's split, and evaluation pages of 20;
its per-user test metrics come from the pipeline's ``predictions-{stage}.parquet``. The row
``lpo_ppo`` runs the end of the chain the other way round (LPO, then PPO from LPO's policy)
in ``seed{s}/lpo_then_ppo``, reusing that seed's data, pre-training, SFT and reward.
Checkpoints are chosen on validation inside each stage (early stopping); test is read once,
here. Peers: the top-100 lists that ``bench/peers_bench.py`` wrote to
``runs/peers/{protocol}/{model}.npz`` (its JSON says how each was trained and selected),
scored here by the same ``rlhf_ray.evaluation.score_lists`` (a peer's page = its top 20).

Every cell: mean over seeds (spread = sample std over seeds, for ours) and a 95% bootstrap
interval over users of the seed-averaged per-user value. Comparisons are paired over the
same users (``rlhf_ray.stats.paired_diff``); a difference is called higher/lower only
when its interval excludes 0. Writes ``bench/results/protocol_{protocol}.json`` (with
provenance) and prints the markdown tables that ``bench/readme_tables.py`` puts in README.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from protocol_runs import seed_list  # noqa: E402
from provenance import Run  # noqa: E402

from rlhf_ray import metrics as M  # noqa: E402
from rlhf_ray import stats  # noqa: E402
from rlhf_ray import targets as T  # noqa: E402
from rlhf_ray.data.prepared import load_prepared  # noqa: E402
from rlhf_ray.evaluation import PROTOCOLS, pad_lists, score_lists  # noqa: E402

OURS = ("sft", "ppo", "lpo", "lpo_ppo")
#: rows that re-run the end of the chain in another order, beside the seed's pipeline:
#: row -> (sub-directory of the seed's run, its ``pipeline.order``, the stage whose predictions are the row)
REORDERED = {"lpo_ppo": ("lpo_then_ppo", ["lpo", "ppo"], "ppo")}
#: what each of our rows is (printed under the table)
ROW_NOTES = {"sft": "SFT", "ppo": "SFT then PPO", "lpo": "SFT then PPO then LPO (the shipped chain)",
             "lpo_ppo": "SFT then LPO then PPO (`pipeline.order: [lpo, ppo]`)"}
PEERS = ("SASRec", "GRU4Rec", "BPR", "LightGCN", "most_popular")
SPLIT = {"loo": "leave_one_out", "pagellm": "temporal"}
#: columns of the printed table per protocol (per-user metrics, then list-level scalars)
COLUMNS = {
    "loo": ["ndcg@10", "recall@10", "ndcg@20", "recall@20", "tail_recall@20", "page_ndcg@10", "page_ild@10",
            "page_ild", "page_redundancy"],
    "pagellm": ["page_recall@10", "page_ndcg@10", "page_recall@20", "page_ndcg@20", "recall@20", "recall@40",
                "recall@100", "ndcg@100", "page_was", "page_pwkt", "page_ild@10", "page_ild", "page_redundancy",
                "tail_page_recall@20"],
}
HEADLINE = {"loo": "ndcg@10", "pagellm": "page_ndcg@10"}
VALID_COLUMNS = ("ndcg@10", "tail_recall@20", "page_ndcg@10")
#: list-level columns (one figure per ranking or page set, no per-user interval): catalogue coverage
#: of every user's top 20 and of the pages (a peer's page = its top 20)
SCALARS = ("coverage@20", "page_coverage")


def coverage(top: np.ndarray, page: np.ndarray, n_items: int) -> dict[str, float]:
    """The :data:`SCALARS` of one method's lists: distinct items over the catalogue."""
    return {"coverage@20": M.coverage(top[:, :20], n_items), "page_coverage": M.coverage(page, n_items)}


def protocol_config(base: str, protocol: str, seed: int, smoke: bool) -> dict:
    """The shipped pipeline config with this protocol's split, Pareto tail, seeds and 20-item pages."""
    raw = yaml.safe_load(Path(base).read_text()) or {}
    raw.setdefault("data", {}).update({"split": SPLIT[protocol], "tail_fraction": 0.8})
    raw.setdefault("generation", {})["page_size"] = 20
    for stage in ("pretrain", "sft", "reward", "lpo"):
        raw.setdefault(stage, {}).setdefault("train", {})["seed"] = seed
    raw.setdefault("ppo", {})["seed"] = seed
    if smoke:
        raw["data"].update({"dataset": "synthetic", "synthetic_users": 150, "synthetic_items": 200})
    return raw


def run_ours(args, seed: int, work: Path) -> Path:
    """Run (or reuse) the pipeline for one seed; returns its output directory."""
    out = work / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.yaml"
    cfg.write_text(yaml.safe_dump(protocol_config(args.config, args.protocol, seed, args.smoke)))
    cmd = [sys.executable, "-m", "rlhf_ray.cli", "pipeline", "--config", str(cfg), "--out", str(out)]
    if args.smoke:
        cmd.append("--smoke")
    print(f"[protocol] $ {' '.join(cmd)}", flush=True)
    t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cost = {"wall_s": round(time.time() - t0, 1),
            # CPU of the pipeline process and the descendants it waited for (Ray's own worker
            # processes are reaped by Ray, so PPO's actors are under-counted)
            "cpu_s": round((c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime), 1)}
    summary = out / "summary.json"
    if summary.is_file():
        stages = json.loads(summary.read_text()).get("stages", {})
        cost["stage_seconds"] = {k: round(v.get("seconds", 0.0), 1) for k, v in stages.items()}
        cost["sft"] = {k: stages.get("sft", {}).get(k) for k in ("train/stopped_by", "train/best_epoch",
                                                                  "train/epochs_run", "val/ndcg@10")}
    (out / "cost.json").write_text(json.dumps(cost, indent=2))
    return out


def run_reordered(args, seed: int, out: Path, row: str) -> Path:
    """Re-run the end of seed ``seed``'s chain in ``REORDERED[row]``'s order: a sibling run
    directory whose data, pre-training, SFT and reward are links to the seed's own (reused, not
    retrained: the pipeline finds them complete), so only the reordered stages train."""
    sub, order, _ = REORDERED[row]
    run_dir = out / sub
    run_dir.mkdir(parents=True, exist_ok=True)
    for shared in ("data", "pretrain", "sft", "reward"):
        link = run_dir / shared
        if not link.exists():
            link.symlink_to(Path("..") / shared)
    raw = protocol_config(args.config, args.protocol, seed, args.smoke)
    raw.setdefault("pipeline", {})["order"] = order
    cfg = run_dir / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "rlhf_ray.cli", "pipeline", "--config", str(cfg), "--out", str(run_dir),
           "--stages", ",".join([*order, "eval"])] + (["--smoke"] if args.smoke else [])
    print(f"[protocol] $ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)
    return run_dir


def set_aside(run_dir: Path, stages: list[str], stamp: str) -> list[Path]:
    """Move ``stages``' outputs (checkpoint, logs, resumable state, test predictions) of one run
    directory into ``run_dir/replaced-<stamp>/``, so the next pipeline call trains them again
    (a later stage whose parent changed retrains by itself). Returns the new paths."""
    moved = []
    for stage in stages:
        for name in (stage, f"{stage}.logs", f"{stage}.state", f"predictions-{stage}.parquet"):
            src = run_dir / name
            if src.exists() or src.is_symlink():
                dest = run_dir / f"replaced-{stamp}" / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                src.rename(dest)
                moved.append(dest)
    return moved


def run_and_stage(out: Path, row: str) -> tuple[Path, str]:
    """(run directory, stage) that hold a seed's ``row``: the seed's own run, or its reordered sibling."""
    if row in REORDERED:
        sub, _, stage = REORDERED[row]
        return out / sub, stage
    return out, row


def checkpoint_of(out: Path, row: str) -> Path:
    """A seed's final checkpoint of ``row``."""
    run_dir, stage = run_and_stage(out, row)
    return run_dir / stage / "policy" if (run_dir / stage / "policy").is_dir() else run_dir / stage  # old PPO layout


def valid_means(outs: list[Path], rows=OURS) -> dict[str, dict]:
    """{row: {metric: seed summary}}: each row's final checkpoint on the whole validation split
    (pages of 20), what a choice between our rows (a chain order) is made on; test is read once,
    in the table. The stages' own validation figures cannot stand in: each uses its own subset
    of users."""
    from rlhf_ray.checkpoint import generation_for, load_checkpoint
    from rlhf_ray.evaluation import evaluate_full

    found: dict[str, dict[str, list[float]]] = {}
    for out in outs:
        prepared = load_prepared(out / "data")
        for row in rows:
            path = checkpoint_of(out, row)
            if not (path / "manifest.json").is_file():
                continue
            ck = load_checkpoint(path)
            per_user = evaluate_full(ck.model.eval(), ck.vocab, prepared, "valid",
                                     generation_for(ck.manifest, page_size=20)).per_user
            for m in VALID_COLUMNS:
                found.setdefault(row, {}).setdefault(m, []).append(M.mean(per_user[m].to_numpy(dtype=float)))
    return {row: {m: stats.seed_summary(v) for m, v in d.items()} for row, d in found.items()}


def prediction_file(out: Path, row: str) -> Path:
    """Where a seed's per-user test predictions of ``row`` are."""
    run_dir, stage = run_and_stage(out, row)
    return run_dir / f"predictions-{stage}.parquet"


def per_user_ours(outs: list[Path], prepared, protocol: str) -> dict[str, list[pd.DataFrame]]:
    """{row: [per-user frame of each seed]}: the ranking and page of each user that the pipelines
    wrote to their prediction files, scored here by ``score_lists`` as the peers are, so every
    row is scored by the code of this run (a metric added since a pipeline ran is filled in by
    ``--no-train``). Where the file carries the pipeline's own value of a metric, the two must
    agree: a mismatch means the metric's code changed under a finished run, and stops the table."""
    frames: dict[str, list[pd.DataFrame]] = {}
    _, targets, ratings, test_users = prepared.histories("test")
    users = [int(u) for u in test_users]
    for out in outs:
        for stage in OURS:
            f = prediction_file(out, stage)
            if not f.is_file():
                continue
            df = pd.read_parquet(f)
            if df["user_idx"].tolist() != users:
                raise RuntimeError(f"{f}: users differ from the prepared test users (different data?)")
            top = np.stack([np.asarray(r, dtype=np.int64) for r in df["ranking"]])
            page = np.asarray(pad_lists([list(p) for p in df["page"]]), dtype=np.int64)
            s = score_lists(top, page, targets, ratings, prepared, protocol)
            for m, v in s.per_user.items():
                if m in df and not np.allclose(df[m].to_numpy(dtype=float), v, equal_nan=True, atol=1e-9):
                    raise RuntimeError(f"{f}: {m} rescored here differs from the pipeline's own value")
            df = pd.DataFrame({"user_idx": users, **s.per_user})
            df.attrs["coverage"] = coverage(top, page, prepared.n_items)
            frames.setdefault(stage, []).append(df)
    return frames


def per_user_peers(peers_dir: Path, prepared, protocol: str) -> dict[str, pd.DataFrame]:
    """{peer: per-user frame} scored here from the peers' top-100 lists."""
    hist, targets, ratings, users = prepared.histories("test")
    out = {}
    for name in PEERS:
        f = peers_dir / f"{name}.npz"
        if not f.is_file():
            print(f"[protocol] peer {name}: {f} missing, row left out", flush=True)
            continue
        try:
            with np.load(f) as z:  # a .npy under an .npz name loads as an array: no context manager
                listed, top = z["user_idx"], z["top"].astype(np.int64)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise RuntimeError(f"{f}: not a peer list of bench/peers_bench.py (user_idx, top): {e}") from e
        if not np.array_equal(listed, users):
            raise RuntimeError(f"{f}: users differ from the prepared test users")
        depth = max(20, *PROTOCOLS[protocol]["ks"])
        if top.ndim != 2 or top.shape[0] != len(users) or top.shape[1] < depth or top.size == 0 \
                or top.min() < 0 or top.max() >= prepared.n_items:
            lo, hi = (int(top.min()), int(top.max())) if top.size else (None, None)
            raise RuntimeError(f"{f}: top must be ({len(users)} users, >= {depth}) item indices in "
                               f"[0, {prepared.n_items}), got shape {top.shape}, indices {lo}..{hi}")
        s = score_lists(top, top[:, :20], targets, ratings, prepared, protocol)
        df = pd.DataFrame({"user_idx": users, **s.per_user})
        df.attrs["coverage"] = coverage(top, top[:, :20], prepared.n_items)
        out[name] = df
    return out


def seed_avg(frames: list[pd.DataFrame], metric: str) -> np.ndarray:
    """(U,) each user's value averaged over seeds (NaN where undefined in every seed)."""
    a = np.stack([f[metric].to_numpy(dtype=float) for f in frames])
    n = (~np.isnan(a)).sum(axis=0)
    return np.where(n > 0, np.nansum(a, axis=0) / np.maximum(n, 1), np.nan)


def cell(frames: list[pd.DataFrame], metric: str, seed: int = 0) -> dict | None:
    """Mean over seeds, seed spread, and the user bootstrap interval of the seed-averaged values."""
    if not frames or metric not in frames[0]:
        return None
    per_seed = [M.mean(f[metric].to_numpy(dtype=float)) for f in frames]
    ci = stats.bootstrap_ci(seed_avg(frames, metric), seed=seed)
    return {**ci, "seeds": stats.seed_summary(per_seed)}


def build_table(protocol: str, ours: dict, peers: dict, na: dict) -> dict:
    rows: dict[str, dict] = {}
    methods = {**{k: v for k, v in ours.items()}, **{k: [v] for k, v in peers.items()}}
    for name, frames in methods.items():
        row = {m: cell(frames, m) for m in COLUMNS[protocol]}
        cov = [f.attrs["coverage"] for f in frames if "coverage" in f.attrs]
        rows[name] = {"kind": "ours" if name in OURS else "peer", "n_seeds": len(frames),
                      "metrics": {m: v for m, v in row.items() if v is not None},
                      "coverage": {k: stats.seed_summary([c[k] for c in cov]) for k in SCALARS} if cov else {},
                      "n/a": {m: na.get(m, "n/a: not produced") for m, v in row.items() if v is None}}
    comparisons = {}
    head = HEADLINE[protocol]
    if "sft" in methods:
        for name, frames in methods.items():
            if name == "sft":
                continue
            comparisons[f"{name} vs sft"] = {
                m: stats.paired_diff(seed_avg(frames, m), seed_avg(methods["sft"], m))
                for m in COLUMNS[protocol] if m in frames[0] and m in methods["sft"][0]}
        peer_means = {p: rows[p]["metrics"][head]["mean"] for p in peers if head in rows[p]["metrics"]}
        if peer_means:
            best = max(peer_means, key=peer_means.get)
            comparisons["sft vs best peer"] = {"peer": best, head: stats.paired_diff(
                seed_avg(methods["sft"], head), seed_avg([peers[best]], head))}
    return {"rows": rows, "comparisons": comparisons, "headline": head}


def alignment_targets(ours: dict[str, list[pd.DataFrame]], outs: list[Path]) -> list[dict]:
    """The pipeline's alignment targets (:mod:`rlhf_ray.targets`) on the seed-averaged per-user
    values, each row with ``met`` per seed too (``per_seed``); the hacking row counts each seed's alerts."""
    from rlhf_ray.pipeline import hacking_alerts

    stages = [s for s in ("sft", "ppo", "lpo") if s in ours]
    pooled = {s: pd.DataFrame({"user_idx": ours[s][0]["user_idx"],
                               **{m: seed_avg(ours[s], m) for m in ours[s][0].columns if m != "user_idx"
                                  and pd.api.types.is_numeric_dtype(ours[s][0][m])}}) for s in stages}
    alerts = [hacking_alerts({"ppo": str(checkpoint_of(o, "ppo"))}) for o in outs]
    known = [a for a in alerts if a is not None]
    rows = T.check(pooled, sum(known) if known else None)
    seeds = [T.check({s: ours[s][i] for s in stages}, alerts[i]) for i in range(len(outs))
             if all(len(ours[s]) == len(outs) for s in stages)]
    for r in rows:
        r["per_seed"] = [next((x["met"] for x in seed if x["target"] == r["target"]), None) for seed in seeds]
        if r["metric"] == "hacking_alerts":
            r["verdict"] = "alerts per seed: " + ", ".join("?" if a is None else str(a) for a in alerts)
    return rows


def targets_markdown(rows: list[dict]) -> str:
    """The targets as a markdown table (pooled over seeds, then met per seed)."""
    lines = ["| alignment target (against sft) | ratio | diff [95% CI] | users | met (seeds pooled) | met per seed |",
             "|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no", None: "n/a"}
    for r in rows:
        diff = (f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}] ({r['verdict']})" if r["diff"] is not None
                else r["verdict"])
        ratio = f"x{r['ratio']:.3f}" if r["ratio"] is not None else ""
        lines.append(f"| {r['target'].replace(' >= ', ' ≥ ')} | {ratio} | {diff} | {r['users'] or ''} | "
                     f"{yes[r['met']]} | {', '.join(yes[m] for m in r['per_seed'])} |")
    return "\n".join(lines)


def fmt(c: dict | None) -> str:
    if c is None or c.get("mean") is None:
        return "n/a"
    s = f"{c['mean']:.4f}"
    sd = (c.get("seeds") or {}).get("std")
    if sd is not None:
        s += f" ±{sd:.4f}"
    return s + f" [{c['lo']:.4f}, {c['hi']:.4f}]"


def fmt_scalar(c: dict | None) -> str:
    """A list-level figure: mean over seeds, ±std where there are several."""
    if c is None or c.get("mean") is None:
        return "n/a"
    return f"{c['mean']:.3f}" + (f" ±{c['std']:.3f}" if c.get("std") is not None else "")


def markdown(protocol: str, table: dict, counts: dict) -> str:
    cols = COLUMNS[protocol]
    lines = [f"| model | seeds | " + " | ".join(cols + list(SCALARS)) + " |",
             "|---|---|" + "---|" * (len(cols) + len(SCALARS))]
    for name, r in table["rows"].items():
        label = f"ours, {name}" if r["kind"] == "ours" else name
        cov = [fmt_scalar(r.get("coverage", {}).get(k)) for k in SCALARS]
        lines.append(f"| {label} | {r['n_seeds']} | " + " | ".join([fmt(r["metrics"].get(c)) for c in cols] + cov)
                     + " |")
    lines.append("")
    ours = [n for n, r in table["rows"].items() if r["kind"] == "ours"]
    lines.append("Ours: " + "; ".join(f"{n} = {ROW_NOTES.get(n, n)}" for n in ours) + ".")
    valid = table.get("valid") or {}
    if valid:
        lines += ["", "Validation, whole split, mean over seeds (what a choice between our rows is made on): " + "; ".join(
            f"{n} " + ", ".join(f"{m} " + ("n/a" if v["mean"] is None else f"{v['mean']:.4f}")
                                for m, v in valid[n].items()) for n in ours if n in valid) + "."]
    lines.append("")
    lines.append(f"Cells: mean over seeds ±std over seeds [95% bootstrap interval over users]. "
                 f"{int(counts['users'])} test users, {int(counts['targets'])} targets, "
                 f"{int(counts['tail_targets'])} tail targets of {int(counts['tail_users'])} users. "
                 "page_redundancy: lower is better; every other column higher is better. "
                 f"{' and '.join(SCALARS)}: distinct items over the catalogue in every user's top 20 / pages "
                 "(one figure per list set: mean ±std over seeds, no interval).")
    comp = table["comparisons"]
    if comp:
        lines += ["", f"| comparison (paired over users) | {table['headline']} diff [95% CI] | verdict |", "|---|---|---|"]
        for name, d in comp.items():
            x = d.get(table["headline"]) if isinstance(d, dict) else None
            if not x or x.get("diff") is None:
                continue
            label = name + (f" ({d['peer']})" if "peer" in d else "")
            lines.append(f"| {label} | {x['diff']:+.4f} [{x['lo']:+.4f}, {x['hi']:+.4f}] (x{x['rel']:.3f}) | "
                         f"{x['verdict']} |")
    if table.get("targets"):
        lines += ["", targets_markdown(table["targets"])]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS))
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="training seeds of our pipeline (default 0,1,2)")
    p.add_argument("--config", default=str(ROOT / "rlhf_ray" / "configs" / "ml-100k.yaml"),
                   help="pipeline config to run for our rows (default: the shipped ml-100k config)")
    p.add_argument("--work", default=None, help="run directory (default runs/bench/PROTOCOL)")
    p.add_argument("--peers-dir", default=None, help="peer top-100 lists (default runs/peers/PROTOCOL)")
    p.add_argument("--no-train", action="store_true", help="only read finished pipelines (no new runs)")
    p.add_argument("--retrain", default="", metavar="STAGE[,STAGE]",
                   help="train these stages again in every seed's run and its reordered runs (their old outputs "
                        "move to replaced-<time>/ beside them); stages after them retrain as their parent changed")
    p.add_argument("--smoke", action="store_true", help="synthetic data, tiny models: checks the plumbing")
    p.add_argument("--results", default=str(BENCH / "results"), help="where the JSON goes")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    seeds = args.seeds
    work = Path(args.work or ROOT / "runs" / "bench" / (args.protocol + ("-smoke" if args.smoke else "")))
    peers_dir = Path(args.peers_dir or ROOT / "runs" / "peers" / args.protocol)
    run = Run(inputs={"config": args.config, "peers_dir": peers_dir})
    t0 = time.time()
    retrain = [x for x in args.retrain.split(",") if x]
    if retrain and args.no_train:
        raise SystemExit("--retrain and --no-train contradict each other")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outs = []
    for s in seeds:
        out = work / f"seed{s}"
        for run_dir in [out, *(out / sub for sub, _, _ in REORDERED.values())] if retrain else []:
            for moved in set_aside(run_dir, retrain, stamp):
                print(f"[protocol] set aside {moved}", flush=True)
        outs.append(out if args.no_train else run_ours(args, s, work))
        if not args.no_train:
            for row in REORDERED:
                run_reordered(args, s, out, row)
    prepared = load_prepared(outs[0] / "data")
    run.add_input("data", outs[0] / "data")
    for out in outs:
        for stage in OURS:
            ckpt = checkpoint_of(out, stage)
            if ckpt.is_dir():
                run.add_input(f"{out.name}/{stage}", ckpt)
    costs = {o.name: json.loads((o / "cost.json").read_text()) for o in outs if (o / "cost.json").is_file()}
    ours = per_user_ours(outs, prepared, args.protocol)
    peers = {} if args.smoke else per_user_peers(peers_dir, prepared, args.protocol)
    hist, targets, ratings, users = prepared.histories("test")
    probe = score_lists(np.zeros((len(targets), 100), dtype=np.int64), None, targets, ratings, prepared,
                        args.protocol)
    counts = {k: probe.scalars[k] for k in ("users", "targets", "tail_targets", "tail_users")}
    table = build_table(args.protocol, ours, peers, probe.na)
    table["valid"] = valid_means(outs)
    table["targets"] = alignment_targets(ours, outs)
    md = markdown(args.protocol, table, counts)
    print(md)
    name = f"protocol_{args.protocol}" + ("_smoke" if args.smoke else "")
    path = run.write(name, {"protocol": args.protocol, "split": SPLIT[args.protocol], "seeds": seeds,
                            "counts": counts, "data_fingerprint": prepared.fingerprint,
                            "tail_definition": "head = 20% most popular training items, tail = the other 80%",
                            "columns": COLUMNS[args.protocol], **table, "markdown": md, "ours_cost": costs,
                            "seconds": round(time.time() - t0, 1)}, results_dir=args.results)
    print(f"[protocol] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
