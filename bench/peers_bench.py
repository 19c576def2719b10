"""Peers trained to convergence on one protocol: SASRec, GRU4Rec, BPR, LightGCN (RecBole 1.2.1), most-popular.

    .venv/bin/python bench/peers_bench.py --protocol loo --data /tmp/ml100k-loo80
    .venv/bin/python bench/peers_bench.py --protocol pagellm --data /tmp/ml100k-temporal80
    .venv/bin/python bench/peers_bench.py --protocol loo --data DIR --smoke     # plumbing only

Protocols (the prepared directory must have been prepared with the matching split):

* ``loo``: leave-one-out (``--split leave_one_out``): per user, validation target = the
  second-last positive, test target = the last positive, train = ``items[:valid_start]``.
* ``pagellm``: PageLLM's per-user temporal 80/10/10 (``--split temporal``): every positive
  of the validation (test) range is a target; history = everything before the range.

Per peer, a small validation search (``GRIDS``): every config is trained by RecBole in its
own venv (``bench/peers/recbole_runner.py``, a subprocess) on exactly our train part, with
early stopping on NDCG@10 of exactly our validation targets (patience ``--patience``, an
epoch cap ``--max-epochs`` meant not to bind); the config with the best validation NDCG@10
is selected, nothing else. For the selected config the top-100 full-catalogue ranking of
every test user (the user's whole history before the test range excluded,
``rlhf_ray.metrics.topk_from_scores``) is saved to ``{out-dir}/{model}.npz`` (``user_idx``
(U,), ``top`` (U, 100), in the order of ``Prepared.histories("test")``); the same for
``most_popular`` (training popularity). Test NDCG@10 / Recall@20 of the selected configs
are computed with ``rlhf_ray.metrics`` as a sanity print only.

Writes ``bench/results/peers_{protocol}.json`` (``bench/provenance.py``) after every run,
so an interrupted bench keeps what finished; a rerun reuses every (model, config) whose
runner result exists for the same data fingerprint, config, epoch cap, patience and
threads (``{out-dir}/runs/{model}/{key}/``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH / "peers"))

import atomic  # noqa: E402  (bench/peers/atomic.py)
from provenance import Run  # noqa: E402  (bench/provenance.py)

from rlhf_ray import metrics as M  # noqa: E402
from rlhf_ray.data.prepared import load_prepared  # noqa: E402

RECBOLE_PYTHON = BENCH / ".venv-recbole" / "bin" / "python"
RUNNER = BENCH / "peers" / "recbole_runner.py"
RUNNER_VERSION = 2  # bump when the runner's training or scoring changes: part of each run's key
TOP = 100
PROTOCOLS = {"loo": "leave_one_out", "pagellm": "temporal"}
FAMILY = {"SASRec": "sequential", "GRU4Rec": "sequential", "BPR": "general", "LightGCN": "general"}
PEERS = ("BPR", "LightGCN", "GRU4Rec", "SASRec")  # cheapest first

# Fixed settings of each peer (RecBole names), then the searched knobs. Sequential models
# use the full softmax (CE) over the catalogue, general ones BPR loss with one uniform negative.
BASE = {
    "SASRec": {"train_batch_size": 256, "eval_batch_size": 2048, "n_layers": 2, "n_heads": 2,
               "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02,
               "loss_type": "CE", "train_neg_sample_args": None},
    "GRU4Rec": {"train_batch_size": 256, "eval_batch_size": 2048, "num_layers": 1,
                "loss_type": "CE", "train_neg_sample_args": None},
    "BPR": {"train_batch_size": 2048, "eval_batch_size": 2048,
            "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
    "LightGCN": {"train_batch_size": 2048, "eval_batch_size": 2048, "embedding_size": 64,
                 "learning_rate": 0.005,
                 "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
}
# The validation search: 2 configs per peer over its main knobs, cheaper config first. SASRec
# stays at history length 20: at 50 one epoch took ~100 s of CPU (several minutes of wall time
# on this shared 2-core box), too slow for patience-10 runs on two protocols.
GRIDS = {
    "SASRec": [
        {"MAX_ITEM_LIST_LENGTH": 20, "hidden_size": 64, "inner_size": 256, "hidden_dropout_prob": 0.5,
         "attn_dropout_prob": 0.5, "learning_rate": 0.002},
        {"MAX_ITEM_LIST_LENGTH": 20, "hidden_size": 64, "inner_size": 256, "hidden_dropout_prob": 0.2,
         "attn_dropout_prob": 0.2, "learning_rate": 0.002},
    ],
    "GRU4Rec": [
        {"MAX_ITEM_LIST_LENGTH": 20, "embedding_size": 64, "hidden_size": 128, "dropout_prob": 0.3,
         "learning_rate": 0.002},
        {"MAX_ITEM_LIST_LENGTH": 50, "embedding_size": 64, "hidden_size": 64, "dropout_prob": 0.2,
         "learning_rate": 0.002},
    ],
    "BPR": [
        {"embedding_size": 64, "learning_rate": 0.005},
        {"embedding_size": 128, "learning_rate": 0.002},
    ],
    "LightGCN": [
        {"n_layers": 2, "reg_weight": 1e-4},
        {"n_layers": 3, "reg_weight": 1e-3},
    ],
}
# Epoch caps, meant never to bind (early stopping ends every run first); an epoch of BPR or
# LightGCN takes about a second, so theirs is higher.
EPOCH_CAP = {"SASRec": 300, "GRU4Rec": 300, "BPR": 1000, "LightGCN": 1000}

PROTOCOL_NOTES = {
    "loo": "Leave-one-out from our prepared data: per user, test target = last positive (rating > 3), "
           "validation target = second-last positive, train = items[:valid_start] (every interaction, "
           "implicit). Test users are ranked on their history items[:test_start].",
    "pagellm": "PageLLM's per-user temporal 80/10/10 split: train = items[:valid_start], validation "
               "targets = every positive (rating > 3) in items[valid_start:test_start], test targets = every "
               "positive in items[test_start:end]; a test user's history is items[:test_start].",
}
NOTES = [
    "RecBole reads our split as pre-split atomic files (benchmark_filename train/valid/test, no filtering): "
    "general models get the train interactions and one row per validation target; sequential models get "
    "next-item examples over items[:valid_start] (history <= MAX_ITEM_LIST_LENGTH) and one row per "
    "validation target with history items[:valid_start]. The runner recomputes digests of RecBole's train "
    "and validation parts and refuses to train on a mismatch (split_check). No test item is in any file.",
    "Early stopping and selection: NDCG@10 of our validation split (all targets of a user relevant, seen "
    "items excluded, full catalogue), computed in the runner with rlhf_ray/metrics.py, every epoch; RecBole's "
    "early_stopping with stopping_step = patience; the best-validation weights are reloaded. "
    "stopped_by = early_stopping (converged) | epochs (the cap bound: not converged) | time_budget.",
    "Test: full-catalogue scores of every test user, the user's whole history before the test range "
    "excluded, top-100 with rlhf_ray.metrics.topk_from_scores (ties to the lower item_idx); BPR/LightGCN "
    "score by user vector (trained on the train part), SASRec/GRU4Rec on the last MAX_ITEM_LIST_LENGTH "
    "items of the test history.",
    "wall_s / cpu_s: the runner process (RecBole dataset build, training, scoring); cpu_s is its "
    "time.process_time(). Every run uses the same --threads.",
    "most_popular: training interactions per item (items.parquet popularity), ties to the lower item_idx.",
]


# --------------------------------------------------------------------------- helpers


def pad(lists: list[list[int]]) -> np.ndarray:
    width = max(1, max((len(x) for x in lists), default=1))
    out = np.full((len(lists), width), -1, dtype=np.int64)
    for r, x in enumerate(lists):
        out[r, : len(x)] = x
    return out


def seen_mask(histories: list[list[int]], n_items: int) -> np.ndarray:
    mask = np.zeros((len(histories), n_items), dtype=bool)
    for r, h in enumerate(histories):
        mask[r, h] = True
    return mask


def test_metrics(top: np.ndarray, targets: np.ndarray) -> dict:
    return {"ndcg@10": M.mean(M.ndcg(top[:, :10], targets)), "recall@20": M.mean(M.recall(top[:, :20], targets)),
            "ndcg@20": M.mean(M.ndcg(top[:, :20], targets)), "recall@10": M.mean(M.recall(top[:, :10], targets))}


def save_npz(path: Path, users: np.ndarray, top: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, user_idx=np.asarray(users, dtype=np.int64), top=np.asarray(top, dtype=np.int64))
    os.replace(tmp, path)


def run_key(model: str, config: dict, fingerprint: str, threads: int) -> str:
    blob = json.dumps({"model": model, "config": config, "data": fingerprint, "threads": threads,
                       "atomic": atomic.FORMAT, "runner": RUNNER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def past(stop_at: str | None) -> bool:
    """True once the UTC wall clock is at or past HH:MM (no new runs are started then)."""
    if not stop_at:
        return False
    now = dt.datetime.now(dt.timezone.utc)
    hh, mm = (int(x) for x in stop_at.split(":"))
    return (now.hour, now.minute) >= (hh, mm)


# --------------------------------------------------------------------------- one RecBole run


class Bench:
    def __init__(self, args, prepared):
        self.args, self.prepared = args, prepared
        self.out = Path(args.out_dir)
        self.valid = prepared.histories("valid")
        self.test = prepared.histories("test")
        self.test_targets = pad(self.test.targets)
        self.test_seen = seen_mask(self.test.histories, prepared.n_items)
        self.exports: dict[tuple, dict] = {}

    def export(self, family: str, max_len: int | None) -> dict:
        key = (family, max_len)
        if key not in self.exports:
            name = f"{family}{'' if max_len is None else f'_L{max_len}'}"
            path = self.out / "atomic" / self.prepared.fingerprint[:12]
            self.exports[key] = atomic.export_atomic(self.prepared, path, name, family, max_len)
            self.exports[key]["name"] = name
            self.exports[key]["path"] = str(path)
        return self.exports[key]

    def full_config(self, model: str, knobs: dict) -> dict:
        a = self.args
        return {**BASE[model], **knobs, "epochs": a.max_epochs or EPOCH_CAP[model], "stopping_step": a.patience}

    def run(self, model: str, knobs: dict) -> dict:
        """Train one (model, config) or reuse its finished result; returns the record."""
        a, p = self.args, self.prepared
        config = self.full_config(model, knobs)
        key = run_key(model, config, p.fingerprint, a.threads)
        rdir = self.out / "runs" / model / key
        record_path = rdir / "record.json"
        base = {"knobs": knobs, "config": config, "key": key, "dir": str(rdir)}
        if record_path.is_file():
            rec = json.loads(record_path.read_text())
            budget_ok = rec.get("stopped_by") != "time_budget" or rec.get("time_budget_s") == (a.time_budget or None)
            if rec.get("status") == "ok" and rec.get("fingerprint") == p.fingerprint and rec.get("config") == config \
                    and budget_ok and (rdir / f"{model}.scores.npy").is_file():
                print(f"[{model} {key}] reusing the finished run ({rec['stopped_by']}, best epoch {rec['best_epoch']}, "
                      f"valid NDCG@10 {rec['valid_ndcg@10']:.4f})", flush=True)
                return {**rec, "reused": True}
        if past(a.stop_launching_at):
            return {**base, "status": "not_run", "note": f"not started: past --stop-launching-at {a.stop_launching_at} UTC"}
        python = Path(a.recbole_python)
        if not python.is_file():
            return {**base, "status": "skipped", "note": f"{python} not found: run bench/peers/setup_recbole.sh"}
        family = FAMILY[model]
        max_len = knobs.get("MAX_ITEM_LIST_LENGTH") if family == "sequential" else None
        exp = self.export(family, max_len)
        rdir.mkdir(parents=True, exist_ok=True)
        job = atomic.write_job(
            rdir / "job.json", model=model, family=family, max_len=max_len, data_path=exp["path"],
            dataset=exp["name"], expected={"train": exp["train"], "valid": exp["valid"]}, config=config,
            time_budget_s=a.time_budget or None, threads=a.threads, n_items=p.n_items,
            valid={"users": self.valid.user_idx, "histories": self.valid.histories, "targets": self.valid.targets},
            test={"users": self.test.user_idx, "histories": self.test.histories},
            work_dir=str(rdir), out=str(rdir / model))
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
               "PYTHONHASHSEED": "0"}
        env.pop("PYTHONPATH", None)
        log = rdir / "runner.log"
        print(f"[{model} {key}] training {knobs} (log: {log}) ...", flush=True)
        t0 = time.perf_counter()
        try:
            with open(log, "w") as f:
                proc = subprocess.run([str(python), str(RUNNER), str(job)], stdout=f, stderr=subprocess.STDOUT,
                                      env=env, timeout=a.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.perf_counter() - t0
        if rc != 0:
            tail = log.read_text()[-2000:]
            print(f"[{model} {key}] FAILED ({rc}); end of {log}:\n{tail}", flush=True)
            return {**base, "status": "failed", "returncode": rc, "log_tail": tail}
        info = json.loads((rdir / f"{model}.json").read_text())
        scores = np.load(rdir / f"{model}.scores.npy", mmap_mode="r")
        if scores.shape != (len(self.test.user_idx), p.n_items):
            return {**base, "status": "failed", "note": f"scores shape {scores.shape}"}
        rec = {
            **base, "status": "ok", "fingerprint": p.fingerprint,
            "valid_ndcg@10": info["best_valid_ndcg@10"],
            "stopped_by": info["stopped_by"], "converged": info["converged"],
            "best_epoch": info["best_epoch"], "epochs_run": info["epochs_run"],
            "epoch_cap": info["epoch_cap"], "stopping_step": info["stopping_step"],
            "wall_s": info["wall_s"], "cpu_s": info["cpu_s"], "train_wall_s": info["train"]["wall_s"],
            "train_cpu_s": info["train"]["cpu_s"], "subprocess_wall_s": round(wall, 1),
            "threads": info["threads"], "time_budget_s": a.time_budget or None,
            "split_check": info["split_check"], "valid_curve": info["valid_curve"],
            "versions": info["versions"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_json(record_path, rec)
        print(f"[{model} {key}] {rec['stopped_by']} after {rec['epochs_run']} epochs (best {rec['best_epoch']}), "
              f"valid NDCG@10 {rec['valid_ndcg@10']:.4f}, {rec['wall_s']:.0f} s wall, {rec['cpu_s']:.0f} s CPU",
              flush=True)
        return rec

    def finish_peer(self, model: str, runs: list[dict]) -> dict:
        """Select on validation NDCG@10, write the npz of the selected config, sanity test metrics."""
        ok = [r for r in runs if r["status"] == "ok"]
        peer = {"family": FAMILY[model], "base_config": BASE[model], "configs": runs}
        if not ok:
            peer["status"] = "no finished run"
            return peer
        best = max(ok, key=lambda r: r["valid_ndcg@10"])
        scores = np.load(Path(best["dir"]) / f"{model}.scores.npy")
        top = M.topk_from_scores(scores, TOP, exclude=self.test_seen)
        npz = self.out / f"{model}.npz"
        save_npz(npz, self.test.user_idx, top)
        peer.update({
            "status": "ok" if len(ok) == len(runs) else "partial",
            "selected": {k: best[k] for k in ("knobs", "key", "valid_ndcg@10", "stopped_by", "converged",
                                              "best_epoch", "epochs_run", "wall_s", "cpu_s", "threads")},
            "selected_by": "validation NDCG@10 only",
            "npz": str(npz),
            "test": test_metrics(top, self.test_targets),
            "all_converged": all(r.get("converged") for r in ok),
        })
        return peer

    def most_popular(self) -> dict:
        t0 = time.perf_counter()
        pop = np.asarray(self.prepared.popularity, dtype=np.float64)
        scores = np.broadcast_to(pop, (len(self.test.user_idx), self.prepared.n_items))
        top = M.topk_from_scores(scores, TOP, exclude=self.test_seen)
        npz = self.out / "most_popular.npz"
        save_npz(npz, self.test.user_idx, top)
        return {"status": "ok", "config": {"score": "training interactions per item"}, "npz": str(npz),
                "wall_s": round(time.perf_counter() - t0, 2), "test": test_metrics(top, self.test_targets)}


def atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def markdown(peers: dict) -> str:
    lines = ["| model | selected config | valid NDCG@10 | stopped_by | best/run epochs | wall s | CPU s "
             "| test NDCG@10 | test Recall@20 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, peer in peers.items():
        if name == "most_popular":
            t = peer["test"]
            lines.append(f"| most_popular | popularity | - | - | - | - | - | {t['ndcg@10']:.4f} | {t['recall@20']:.4f} |")
            continue
        if "selected" not in peer:
            lines.append(f"| {name} | ({peer.get('status')}) | | | | | | | |")
            continue
        s, t = peer["selected"], peer["test"]
        knobs = ", ".join(f"{k}={v}" for k, v in s["knobs"].items())
        lines.append(f"| {name} | {knobs} | {s['valid_ndcg@10']:.4f} | {s['stopped_by']} | {s['best_epoch']}/"
                     f"{s['epochs_run']} | {s['wall_s']:.0f} | {s['cpu_s']:.0f} | {t['ndcg@10']:.4f} | "
                     f"{t['recall@20']:.4f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS), help="loo | pagellm")
    p.add_argument("--data", required=True, help="prepared data directory with the protocol's split")
    p.add_argument("--models", default="most_popular," + ",".join(PEERS),
                   help="comma-separated subset of most_popular," + ",".join(PEERS) + " (run in this order)")
    p.add_argument("--threads", type=int, default=1, help="torch/OMP threads of every RecBole run (default 1)")
    p.add_argument("--max-epochs", type=int, default=0,
                   help="epoch cap of every peer (default: EPOCH_CAP, 300 for SASRec/GRU4Rec, 1000 for BPR/LightGCN; "
                        "meant not to bind)")
    p.add_argument("--patience", type=int, default=10, help="RecBole stopping_step (>= 10 for the real bench)")
    p.add_argument("--max-configs", type=int, default=0, help="train at most the first N configs of each grid (0 = all)")
    p.add_argument("--grid-from", default=None, metavar="JSON",
                   help="instead of GRIDS, train only each peer's selected config in this results JSON "
                        "(e.g. bench/results/peers_loo.json: a one-config search when time is short)")
    p.add_argument("--time-budget", type=float, default=0,
                   help="per run: stop after the first validation past this many seconds "
                        "(recorded as stopped_by time_budget, converged false; 0 = none)")
    p.add_argument("--stop-launching-at", default=None, metavar="HH:MM",
                   help="UTC time after which no new run is started (finished runs are still written)")
    p.add_argument("--smoke", action="store_true",
                   help="plumbing check: 2 epochs, first config of each grid, written under runs/peers-smoke "
                        "and peers_{protocol}_smoke.json there")
    p.add_argument("--out-dir", default=None, help="runs directory (default runs/peers/{protocol})")
    p.add_argument("--results-dir", default=None, help="results JSON directory (default bench/results)")
    p.add_argument("--recbole-python", default=str(RECBOLE_PYTHON), help="python of the RecBole venv")
    p.add_argument("--timeout", type=int, default=6 * 3600, help="seconds per RecBole subprocess")
    args = p.parse_args(argv)
    if args.smoke:
        args.max_epochs, args.max_configs = 2, 1
        args.out_dir = args.out_dir or str(ROOT / "runs" / "peers-smoke" / args.protocol)
        args.results_dir = args.results_dir or str(ROOT / "runs" / "peers-smoke")
    args.out_dir = args.out_dir or str(ROOT / "runs" / "peers" / args.protocol)
    args.results_dir = args.results_dir or str(BENCH / "results")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = {"most_popular", *PEERS}
    if set(models) - known:
        raise SystemExit(f"--models: unknown {sorted(set(models) - known)}; choose from {sorted(known)}")
    if args.patience < 10 and not args.smoke:
        print(f"warning: --patience {args.patience} < 10", flush=True)
    prepared = load_prepared(args.data)
    method = prepared.stats.get("split", {}).get("method")
    if method != PROTOCOLS[args.protocol]:
        raise SystemExit(f"--protocol {args.protocol} needs data prepared with --split {PROTOCOLS[args.protocol]}; "
                         f"{args.data} has split {method!r}")
    run = Run(inputs={"data": args.data})
    bench = Bench(args, prepared)
    v, t = bench.valid, bench.test
    print(f"data {args.data} ({args.protocol}): {prepared.n_users} users, {prepared.n_items} items; validation "
          f"{len(v.user_idx)} users / {sum(map(len, v.targets))} targets; test {len(t.user_idx)} users / "
          f"{sum(map(len, t.targets))} targets", flush=True)
    name = f"peers_{args.protocol}" + ("_smoke" if args.smoke else "")
    peers: dict[str, dict] = {}
    previous = Path(args.results_dir) / f"{name}.json"
    if previous.is_file():  # entries of the last invocation stay until this one replaces them (same data only)
        old = json.loads(previous.read_text())
        if old.get("data", {}).get("fingerprint") == prepared.fingerprint:
            for m in ("most_popular", *PEERS):
                if m in old.get("peers", {}):
                    entry = old["peers"][m]
                    cmd = entry.get("from_earlier_invocation") or old.get("provenance", {}).get("command")
                    peers[m] = {**entry, "from_earlier_invocation": cmd}

    def write() -> Path:
        payload = {
            "bench": "peers", "protocol": args.protocol,
            "data": {"path": str(args.data), "fingerprint": prepared.fingerprint, "split": prepared.stats.get("split"),
                     "users": prepared.n_users, "items": prepared.n_items,
                     "valid_users": len(v.user_idx), "valid_targets": sum(map(len, v.targets)),
                     "test_users": len(t.user_idx), "test_targets": sum(map(len, t.targets))},
            "protocol_notes": PROTOCOL_NOTES[args.protocol], "notes": NOTES,
            "settings": {"epoch_cap": {m: args.max_epochs or EPOCH_CAP[m] for m in PEERS}, "patience": args.patience, "threads": args.threads,
                         "time_budget_s": args.time_budget or None, "smoke": args.smoke,
                         "max_configs": args.max_configs or None, "stop_launching_at": args.stop_launching_at,
                         "top": TOP, "grids": grids, "grid_from": args.grid_from},
            "exports": {f"{f}{'' if L is None else f'_L{L}'}": e for (f, L), e in bench.exports.items()},
            "peers": peers, "table_markdown": markdown(peers),
        }
        return run.write(name, payload, results_dir=args.results_dir)

    grids = {m: list(GRIDS[m]) for m in PEERS}
    if args.grid_from:
        chosen = json.loads(Path(args.grid_from).read_text())["peers"]
        for m in PEERS:
            if "selected" in chosen.get(m, {}):
                grids[m] = [chosen[m]["selected"]["knobs"]]
        print(f"configs: the selected ones of {args.grid_from}: {grids}", flush=True)
    for model in models:
        if model == "most_popular":
            peers[model] = bench.most_popular()
            write()
            continue
        grid = grids[model][: args.max_configs] if args.max_configs else grids[model]
        source = (f"the selected config of {args.grid_from}" if args.grid_from else "GRIDS") + \
            (f", first {args.max_configs}" if args.max_configs else "")
        runs: list[dict] = []
        for knobs in grid:
            runs.append(bench.run(model, knobs))
            peers[model] = {**bench.finish_peer(model, runs), "grid_source": source}
            write()
    ordered = {m: peers.pop(m) for m in ("most_popular", *PEERS) if m in peers}
    peers.update(ordered)
    path = write()
    print()
    print(markdown(peers))
    for model, peer in peers.items():
        for r in peer.get("configs", []):
            if r["status"] != "ok":
                print(f"{model} {r['knobs']}: {r['status']} {r.get('note', '')}")
            elif not r["converged"]:
                print(f"{model} {r['knobs']}: NOT converged (stopped_by {r['stopped_by']})")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
