"""Peer benchmark of the SFT ranker (issue 3): ours vs most-popular, SASRec and BPR, one split.

    .venv/bin/python bench/sft_vs_peers.py --data /tmp/ml100k-prepared --sft runs/ml-100k/sft

One split, one metric code path for every row:

* split: our prepared leave-one-out (``rlhf_ray.data``): test target = each user's last
  positive (rating > 3), history = everything before it, seen items excluded, full
  ranking over the whole catalogue;
* metrics: ``rlhf_ray.metrics`` in this process on every model's top-20 list, K in
  {10, 20}: NDCG, Recall, HR, MRR, tail Recall (target is a tail item), category ILD of
  the list, catalogue coverage of the lists.

Rows:

1. ``sft``: our checkpoint ``--sft DIR``, ranked by ``rlhf_ray.evaluation.evaluate``
   (skipped with a note when the directory does not exist);
2. ``most_popular``: training popularity, seen items excluded;
3. ``SASRec`` and ``BPR``: RecBole 1.2.1 in its own venv (``bench/peers/setup_recbole.sh``),
   trained by ``bench/peers/recbole_runner.py`` as a subprocess on our train part only
   (``bench/peers/atomic.py`` says how the split is matched); the runner returns raw
   full-catalogue scores and this script excludes seen items and takes the top-k with
   ``rlhf_ray.metrics.topk_from_scores``, exactly as for the other rows.

Writes ``bench/results/sft_vs_peers.json`` and prints a markdown table. Training is CPU-only:
``--threads`` sets OMP/torch threads for every model (default 1, the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH / "peers"))

from atomic import export_atomic, write_job  # noqa: E402  (bench/peers/atomic.py)

from rlhf_ray import metrics as M  # noqa: E402
from rlhf_ray.data.prepared import load_prepared  # noqa: E402
from rlhf_ray.evaluation import pad_lists  # noqa: E402

KS = (10, 20)
KMAX = max(KS)
RECBOLE_PYTHON = BENCH / ".venv-recbole" / "bin" / "python"
RUNNER = BENCH / "peers" / "recbole_runner.py"

SPLIT_NOTES = [
    "Leave-one-out from our prepared data: per user, test target = last positive (rating > 3) "
    "interaction, validation = second-last positive, train = everything before the validation "
    "item; interactions after the test item are dropped. Full ranking over all catalogue items, "
    "every item of the user's history items[:test_start] excluded, for every row.",
    "All metrics are computed here with rlhf_ray.metrics from each model's top-20 list "
    "(RecBole's own evaluation is not used). With one target per user Recall@K == HR@K.",
    "RecBole gets our filtered interactions as atomic files (.inter: user_id:token "
    "item_id:token rating:float timestamp:float; .item: all catalogue items) holding only "
    "items[:valid_start + 1] per user, with timestamp = chronological position (MovieLens has "
    "same-second ties); config split {LS: valid_only}, order TO, no filtering, so its train "
    "part is items[:valid_start] and its single validation item (early stopping only) is ours; "
    "the runner checks the latter user by user. The test item is never in RecBole's files.",
    "RecBole models are then scored on each test user's history items[:test_start] "
    "(SASRec: the last max_seq_length items through full_sort_predict; BPR: user embedding . "
    "item embeddings, user trained on items[:valid_start]); ids are mapped back to our item_idx.",
    "most_popular: number of training interactions per item (items.parquet popularity), "
    "ties to the lower item_idx.",
    "ILD is the category intra-list diversity of the top-K ranking list (not of a generated "
    "page) for every row; tail Recall is Recall over users whose target is a tail item.",
]


# --------------------------------------------------------------------------- metrics, shared by every row


def list_metrics(top: np.ndarray, targets: np.ndarray, tail_target: np.ndarray, prepared) -> dict:
    """{"10": {...}, "20": {...}} from (U, >=20) top lists, all with rlhf_ray.metrics."""
    rep = M.ranking_report(top, targets, ks=KS, is_tail_target=tail_target)
    cats = np.asarray(prepared.item_categories, dtype=np.int64)
    out = {}
    for k in KS:
        out[str(k)] = {
            "ndcg": rep[f"ndcg@{k}"],
            "recall": rep[f"recall@{k}"],
            "hr": rep[f"hr@{k}"],
            "mrr": rep[f"mrr@{k}"],
            "tail_recall": rep[f"tail_recall@{k}"],
            "head_recall": rep[f"head_recall@{k}"],
            "ild": M.mean(M.ild(top[:, :k], item_categories=cats)),
            "coverage": M.coverage(top[:, :k], prepared.n_items),
        }
    return out


def seen_mask(histories: list[list[int]], n_items: int) -> np.ndarray:
    """(U, n_items) bool: item in the user's history."""
    mask = np.zeros((len(histories), n_items), dtype=bool)
    for u, h in enumerate(histories):
        mask[u, h] = True
    return mask


def top_from_scores(scores: np.ndarray, histories: list[list[int]], n_items: int) -> np.ndarray:
    """(U, 20) best unseen items, ties to the lower item_idx (rlhf_ray.metrics.topk_from_scores)."""
    return M.topk_from_scores(scores, KMAX, exclude=seen_mask(histories, n_items))


# --------------------------------------------------------------------------- the rows


def run_sft(sft_dir: Path, prepared, users: np.ndarray) -> dict:
    """Our checkpoint, ranked by rlhf_ray.evaluation.evaluate (full ranking, seen excluded)."""
    if not (sft_dir / "manifest.json").is_file():
        return {"status": "skipped", "note": f"no checkpoint at {sft_dir} (train one, then rerun)"}
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.config import GenerationConfig
    from rlhf_ray.evaluation import evaluate
    from rlhf_ray.stages.common import check_compatible

    ck = load_checkpoint(sft_dir)
    check_compatible(ck.catalog, prepared, str(sft_dir))
    if ck.manifest.get("data_fingerprint") != prepared.fingerprint:
        print(f"note: {sft_dir} was trained on data with fingerprint "
              f"{str(ck.manifest.get('data_fingerprint'))[:12]}, evaluating on {prepared.fingerprint[:12]}")
    gen = GenerationConfig()
    t0 = time.perf_counter()
    ev, preds = evaluate(ck.model, ck.vocab, prepared, "test", gen, ks=KS)
    eval_s = time.perf_counter() - t0
    if not np.array_equal(preds["user_idx"].to_numpy(), users):
        raise RuntimeError("evaluate() ranked a different set of test users than Prepared.histories('test')")
    top = pad_lists(preds["ranking"].tolist(), width=KMAX)
    wall = ck.manifest.get("metrics", {}).get("train/wall_s")
    return {
        "status": "ok",
        "top": top,
        "train_seconds": None if wall is None else round(float(wall), 1),
        "eval_seconds": round(eval_s, 1),
        "config": {"checkpoint": str(sft_dir), "id": ck.id, "stage": ck.stage,
                   "generation": gen.to_dict(), "train_config": ck.manifest.get("config")},
        "evaluate_metrics": ev,
        "note": "train_seconds = SFT stage wall time from the checkpoint manifest (pre-training not included)",
    }


def run_most_popular(prepared, histories: list[list[int]]) -> dict:
    t0 = time.perf_counter()
    pop = np.asarray(prepared.popularity, dtype=np.float64)
    scores = np.broadcast_to(pop, (len(histories), prepared.n_items))
    top = top_from_scores(scores, histories, prepared.n_items)
    return {"status": "ok", "top": top, "train_seconds": round(time.perf_counter() - t0, 2),
            "config": {"score": "training interactions per item"}}


def run_recbole(model: str, config: dict, prepared, users, histories, work: Path, export: dict,
                python: Path, threads: int, timeout: int, time_budget_s: float | None) -> dict:
    """Train one RecBole model in its venv (subprocess) and rank with its scores."""
    if not python.is_file():
        return {"status": "skipped", "note": f"{python} not found: run bench/peers/setup_recbole.sh"}
    mdir = work / model
    mdir.mkdir(parents=True, exist_ok=True)
    job = write_job(mdir / "job.json", model=model, data_path=work / "atomic", name="bench", work_dir=mdir,
                    out=mdir / model, config=config, prepared=prepared, users=users, histories=histories,
                    expected_valid=export["expected_valid"], time_budget_s=time_budget_s)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)
    log = mdir / "runner.log"
    print(f"[{model}] training in the RecBole venv (log: {log}) ...", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([str(python), str(RUNNER), str(job)], stdout=f, stderr=subprocess.STDOUT,
                              env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{model}: recbole_runner.py exited {proc.returncode}; end of {log}:\n{tail}")
    info = json.loads((mdir / f"{model}.json").read_text())
    scores = np.load(mdir / f"{model}.scores.npy")
    if scores.shape != (len(users), prepared.n_items) or not np.isfinite(scores).all():
        raise RuntimeError(f"{model}: bad scores, shape {scores.shape} (expected {(len(users), prepared.n_items)})")
    top = top_from_scores(scores, histories, prepared.n_items)
    print(f"[{model}] trained {info['epochs_run']} epochs in {info['train_seconds']:.0f} s, stopped by "
          f"{info['stopped_by']} (best epoch {info['best_epoch']}, RecBole valid {info['best_valid_recbole']})",
          flush=True)
    return {
        "status": "ok",
        "top": top,
        "train_seconds": info["train_seconds"],
        "subprocess_seconds": round(wall, 1),
        "config": config,
        "threads": threads,
        "time_budget_s": time_budget_s,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recbole": {k: v for k, v in info.items() if k not in ("train_seconds", "config")},
    }


def reusable(previous: dict | None, name: str, config: dict, fingerprint: str) -> dict | None:
    """The row of ``name`` from an earlier run of this bench on the same data and config, if any."""
    if not previous or previous.get("data", {}).get("fingerprint") != fingerprint:
        return None
    row = previous.get("rows", {}).get(name)
    if not row or row.get("status") != "ok" or row.get("config") != config or "metrics" not in row:
        return None
    return row


# --------------------------------------------------------------------------- report


COLUMNS = [("NDCG", "ndcg"), ("Recall", "recall"), ("HR", "hr"), ("tail R", "tail_recall"),
           ("ILD", "ild"), ("Cov", "coverage")]


def markdown(rows: dict) -> str:
    head = ["model"] + [f"{c}@{k}" for k in KS for c, _ in COLUMNS] + ["train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        if row["status"] != "ok":
            lines.append(f"| {name} | " + " | ".join(["-"] * (len(head) - 2)) + f" | ({row['note']}) |")
            continue
        cells = [f"{row['metrics'][str(k)][key]:.4f}" for k in KS for _, key in COLUMNS]
        t = row.get("train_seconds")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if t is None else f'{t:.0f}'} |")
    return "\n".join(lines)


def ratios(rows: dict) -> dict:
    out = {}
    if rows.get("sft", {}).get("status") != "ok":
        return out
    ours = rows["sft"]["metrics"]
    for peer in ("SASRec", "BPR", "most_popular"):
        if rows.get(peer, {}).get("status") == "ok":
            for k in KS:
                theirs = rows[peer]["metrics"][str(k)]["ndcg"]
                out[f"sft/{peer} ndcg@{k}"] = ours[str(k)]["ndcg"] / theirs if theirs else float("nan")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared data directory (rlhf-ray data prepare)")
    p.add_argument("--sft", default="runs/ml-100k/sft", help="our SFT checkpoint directory")
    p.add_argument("--out", default=str(BENCH / "results" / "sft_vs_peers.json"), help="results JSON")
    p.add_argument("--models", default="sft,most_popular,SASRec,BPR",
                   help="comma-separated subset of sft,most_popular,SASRec,BPR")
    p.add_argument("--recbole-python", default=str(RECBOLE_PYTHON), help="python of the RecBole venv")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                   help="CPU threads for RecBole training (default: $OMP_NUM_THREADS or 1)")
    p.add_argument("--sasrec-epochs", type=int, default=10,
                   help="SASRec max epochs (early stopping on valid); 210-550 s each at length 50 on "
                        "this 2-core box while shared with other jobs")
    p.add_argument("--bpr-epochs", type=int, default=100, help="BPR max epochs (early stopping on valid)")
    p.add_argument("--stopping-step", type=int, default=5, help="epochs without validation gain before stopping")
    p.add_argument("--max-seq-length", type=int, default=50, help="SASRec history length (ours uses 50)")
    p.add_argument("--peer-time-budget", type=float, default=0,
                   help="stop a RecBole model's training after the first validation past this many "
                        "seconds (0 = no limit; for a busy machine)")
    p.add_argument("--retrain-peers", action="store_true",
                   help="train SASRec/BPR again even if --out holds rows for the same data and config")
    p.add_argument("--timeout", type=int, default=4 * 3600, help="seconds per RecBole subprocess")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (atomic files, logs, scores)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = {"sft", "most_popular", "SASRec", "BPR"}
    if set(models) - known:
        raise SystemExit(f"--models: unknown {sorted(set(models) - known)}; choose from {sorted(known)}")
    prepared = load_prepared(args.data)
    hist, targets, _, users = prepared.histories("test")
    tgt = pad_lists(targets)
    is_tail = np.asarray(prepared.is_tail, dtype=bool)
    tail_target = np.array([bool(len(t)) and bool(is_tail[t[0]]) for t in targets])  # as evaluate()
    print(f"data {args.data}: {prepared.n_users} users, {prepared.n_items} items, {len(hist)} test users "
          f"({int(tail_target.sum())} with a tail target)", flush=True)

    sasrec_cfg = {"epochs": args.sasrec_epochs, "stopping_step": args.stopping_step, "train_batch_size": 256,
                  "learning_rate": 0.001, "MAX_ITEM_LIST_LENGTH": args.max_seq_length, "hidden_size": 64,
                  "inner_size": 256, "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.2,
                  "attn_dropout_prob": 0.2, "loss_type": "CE", "train_neg_sample_args": None,
                  "eval_batch_size": 2048}
    bpr_cfg = {"epochs": args.bpr_epochs, "stopping_step": args.stopping_step, "train_batch_size": 2048,
               "learning_rate": 0.001, "embedding_size": 64, "eval_batch_size": 2048,
               "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}

    out = Path(args.out)
    previous = None
    if out.is_file() and not args.retrain_peers:
        try:
            previous = json.loads(out.read_text())
        except json.JSONDecodeError:
            previous = None
    work = Path(tempfile.mkdtemp(prefix="sft_vs_peers-"))
    rows: dict[str, dict] = {}
    export = None
    try:
        for name in models:
            t0 = time.perf_counter()
            if name == "sft":
                row = run_sft(Path(args.sft), prepared, users)
            elif name == "most_popular":
                row = run_most_popular(prepared, hist)
            else:
                cfg = sasrec_cfg if name == "SASRec" else bpr_cfg
                old = reusable(previous, name, cfg, prepared.fingerprint)
                if old is not None:
                    print(f"[{name}] reusing the row trained {old.get('trained_at')} from {out} "
                          f"(same data and config; --retrain-peers trains again)", flush=True)
                    rows[name] = {**old, "reused_from": str(out)}
                    continue
                if export is None:
                    export = export_atomic(prepared, work / "atomic", "bench")
                row = run_recbole(name, cfg, prepared, users, hist, work, export, Path(args.recbole_python),
                                  args.threads, args.timeout, args.peer_time_budget or None)
            if row["status"] == "ok":
                row["metrics"] = list_metrics(row.pop("top"), tgt, tail_target, prepared)
                if name == "sft":  # same lists, same functions: must equal evaluate()'s own numbers
                    for k in KS:
                        ours, theirs = row["metrics"][str(k)]["ndcg"], row["evaluate_metrics"][f"ndcg@{k}"]
                        if abs(ours - theirs) > 1e-9:
                            raise RuntimeError(f"sft ndcg@{k}: {ours} from its lists vs {theirs} from evaluate()")
            else:
                print(f"[{name}] skipped: {row['note']}", flush=True)
            row["wall_seconds"] = round(time.perf_counter() - t0, 1)
            rows[name] = row
    finally:
        if args.keep_workdir:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "bench": "sft_vs_peers",
        "data": {"path": str(args.data), "fingerprint": prepared.fingerprint, "users": prepared.n_users,
                 "items": prepared.n_items, "test_users": len(hist), "tail_test_users": int(tail_target.sum()),
                 "dataset": prepared.stats.get("dataset")},
        "ks": list(KS),
        "split_notes": SPLIT_NOTES,
        "recbole_export": ({k: v for k, v in export.items() if k != "expected_valid"} if export is not None
                           else (previous or {}).get("recbole_export")),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform()},
        "command": " ".join([".venv/bin/python", "bench/sft_vs_peers.py", *(argv or sys.argv[1:])]),
        "rows": rows,
        "ratios": ratios(rows),
        "table_markdown": markdown(rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(result["table_markdown"])
    for k, v in result["ratios"].items():
        print(f"{k}: {v:.3f}")
    print("\nsplit:\n" + "\n".join(f"- {n}" for n in SPLIT_NOTES))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
