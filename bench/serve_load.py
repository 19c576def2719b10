"""Load test of the Serve ranker on loopback, against the in-process ceiling.

    .venv/bin/python bench/serve_load.py --checkpoint runs/ml-100k/sft --data data/ml-100k \
        --requests 2000 --concurrency 1,8,32 --ks 10,20 --max-seconds 25

For each page size k and each concurrency c, c closed-loop clients (httpx async,
one connection each) send ``POST /v1/rank {"user_id": ..., "k": k}`` for the data's
users in turn, until ``--requests`` are answered or ``--max-seconds`` have passed,
whichever comes first. Reported: throughput (answered requests per second), latency
percentiles, errors (non-200 or transport errors) and the mean batch size the
replica decoded. The *ceiling* is the same requests ranked in-process by
:class:`rlhf_ray.serve.ranker.Ranker` in batches of ``--max-batch-size`` with the
replica's thread count, before and after the load (the mean is used): the server
cannot beat it; ``ratio`` = served / ceiling.

The server (local Ray, one replica, 127.0.0.1, a free port) is started here unless
``--url`` points at a running one. Client and server share this machine's cores,
so the client's own CPU use is part of what is measured. Results go to
``bench/results/serve_load.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory to serve")
    p.add_argument("--data", required=True, help="prepared data dir (users whose histories are ranked)")
    p.add_argument("--requests", type=int, default=2000, help="requests per setting (upper bound)")
    p.add_argument("--max-seconds", type=float, default=25.0, help="seconds per setting (upper bound)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--ks", default="10,20", help="comma-separated page sizes")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=20.0)
    p.add_argument("--torch-threads", type=int, default=1, help="replica (and ceiling) torch threads")
    p.add_argument("--ceiling-pages", type=int, default=512,
                   help="pages per k for the ceiling, measured before and after the load (upper bound)")
    p.add_argument("--url", default=None, help="benchmark a running server instead of starting one")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    a.concurrency = [int(c) for c in a.concurrency.split(",")]
    a.ks = [int(k) for k in a.ks.split(",")]
    return a


def percentile(sorted_xs: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100])."""
    if not sorted_xs:
        return float("nan")
    i = max(0, min(len(sorted_xs) - 1, int(round(q / 100 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[i]


async def load(url: str, users: list[str], k: int, concurrency: int, n: int, max_s: float) -> dict:
    """``concurrency`` closed-loop clients; stop at ``n`` requests or ``max_s`` seconds."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + max_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < n and time.perf_counter() < deadline:
            body = {"user_id": users[issued % len(users)], "k": k}
            issued += 1
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/rank", json=body)
                ok = r.status_code == 200 and len(r.json()["items"]) == k
                key = None if ok else f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                key = type(e).__name__
            if key is None:
                lat.append(time.perf_counter() - t0)
            else:
                errors[key] = errors.get(key, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    ms = [x * 1000 for x in lat]
    return {
        "answered": len(lat), "errors": sum(errors.values()), "error_kinds": errors, "seconds": wall,
        "throughput_rps": len(lat) / wall if wall else 0.0,
        "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
    }


def ceiling(checkpoint: str, data: str, users: list[str], ks: list[int], batch: int, threads: int,
            pages: int, max_s: float) -> dict[int, dict]:
    """Pages per second of in-process batched ranking (no HTTP, no Ray)."""
    import torch

    from rlhf_ray.serve.ranker import Ranker, RankRequest, UserHistories

    torch.set_num_threads(threads)
    ranker = Ranker.load(checkpoint, UserHistories.load(data), max_k=max(ks))
    out = {}
    for k in ks:
        ranker.rank([RankRequest(user_id=u, k=k) for u in users[:batch]])  # warm-up
        done, t0 = 0, time.perf_counter()
        while done < pages and time.perf_counter() - t0 < max_s:
            reqs = [RankRequest(user_id=users[(done + i) % len(users)], k=k) for i in range(batch)]
            ranker.rank(reqs)
            done += batch
        wall = time.perf_counter() - t0
        out[k] = {"pages": done, "seconds": wall, "pages_per_s": done / wall, "batch_size": batch}
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(a: argparse.Namespace) -> str:
    from rlhf_ray.config import ServeConfig
    from rlhf_ray.rayutil import init_ray
    from rlhf_ray.serve.app import deploy

    cfg = ServeConfig(checkpoint=a.checkpoint, data=a.data, port=_free_port(), max_k=max(a.ks),
                      default_k=min(a.ks),
                      max_batch_size=a.max_batch_size, batch_wait_ms=a.batch_wait_ms,
                      torch_threads=a.torch_threads, max_ongoing_requests=max(64, 2 * max(a.concurrency)))
    init_ray(num_cpus=os.cpu_count(), log_to_driver=False)
    deploy(cfg)
    return f"http://127.0.0.1:{cfg.port}"


def batches_between(before: dict, after: dict) -> float:
    """Mean batch size of the batches decoded between two /v1/stats snapshots."""
    h0, h1 = before["batch_size_histogram"], after["batch_size_histogram"]
    diff = {int(s): n - h0.get(s, 0) for s, n in h1.items()}
    n = sum(diff.values())
    return sum(s * c for s, c in diff.items()) / n if n else float("nan")


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    from rlhf_ray.data.prepared import load_prepared

    users = load_prepared(a.data).users["user"].astype(str).tolist()
    manifest = json.loads((Path(a.checkpoint) / "manifest.json").read_text())
    print(f"checkpoint {manifest['id']} ({manifest['stage']}), {len(users)} users", flush=True)
    ceil_args = (a.checkpoint, a.data, users, a.ks, a.max_batch_size, a.torch_threads, a.ceiling_pages,
                 a.max_seconds)
    ceil_before = ceiling(*ceil_args)
    for k, c in ceil_before.items():
        print(f"ceiling k={k}: {c['pages_per_s']:.1f} pages/s (in-process, batches of {c['batch_size']})", flush=True)

    started_here = a.url is None
    url = start_server(a) if started_here else a.url
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            for k in a.ks:
                for _ in range(3):  # warm-up (not counted)
                    c.post("/v1/rank", json={"user_id": users[0], "k": k}).raise_for_status()
                for conc in a.concurrency:
                    before = c.get("/v1/stats").json()
                    res = asyncio.run(load(url, users, k, conc, a.requests, a.max_seconds))
                    res["mean_batch"] = batches_between(before, c.get("/v1/stats").json())
                    res.update(k=k, concurrency=conc)
                    rows.append(res)
                    print(f"k={k:<3} c={conc:<3} {res['throughput_rps']:8.1f} req/s  p50 {res['p50_ms']:7.1f} ms  "
                          f"p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}  batch {res['mean_batch']:.1f}",
                          flush=True)
            model = c.get("/v1/model").json()
    finally:
        if started_here:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    # The machine's load drifts: measure the ceiling again after the load and use the mean.
    ceil_after = ceiling(*ceil_args)
    ceil = {k: {"batch_size": a.max_batch_size, "pages_per_pass": ceil_before[k]["pages"],
                "pages_per_s": (ceil_before[k]["pages_per_s"] + ceil_after[k]["pages_per_s"]) / 2,
                "pages_per_s_before": ceil_before[k]["pages_per_s"], "pages_per_s_after": ceil_after[k]["pages_per_s"]}
            for k in a.ks}
    for r in rows:
        r["ceiling_pages_per_s"] = ceil[r["k"]]["pages_per_s"]
        r["ratio"] = r["throughput_rps"] / r["ceiling_pages_per_s"]

    result = {
        "benchmark": "serve_load", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "loadavg_1m_start": load_start, "loadavg_1m_end": os.getloadavg()[0]},
        "checkpoint": {"path": a.checkpoint, "id": manifest["id"], "stage": manifest["stage"],
                       "n_items": model["n_items"], "max_history": model["max_history"]},
        "settings": {"requests_per_setting": a.requests, "max_seconds_per_setting": a.max_seconds,
                     "max_batch_size": a.max_batch_size, "batch_wait_ms": a.batch_wait_ms,
                     "torch_threads": a.torch_threads, "replicas": 1, "server": url if not started_here else "local"},
        "ceiling": {str(k): v for k, v in ceil.items()},
        "results": rows,
        "batch_size_histogram": model["batch_size_histogram"],
        "total_seconds": time.perf_counter() - t_start,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    print_table(rows)
    m = result["machine"]
    print(f"load average (1 min) {m['loadavg_1m_start']:.1f} at start, {m['loadavg_1m_end']:.1f} at end, "
          f"on {m['cpus']} CPUs shared by client, Serve proxy and replica (and anything else running)")
    print(f"wrote {out} ({result['total_seconds']:.0f} s in all)")
    return 0


def _finite(obj):
    """NaN (e.g. a percentile of nothing) -> None, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def print_table(rows: list[dict]) -> None:
    head = f"| {'k':>3} | {'clients':>7} | {'answered':>8} | {'errors':>6} | {'req/s':>7} | {'p50 ms':>7} | " \
           f"{'p95 ms':>7} | {'p99 ms':>7} | {'batch':>5} | {'ceiling/s':>9} | {'ratio':>5} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['k']:>3} | {r['concurrency']:>7} | {r['answered']:>8} | {r['errors']:>6} | "
              f"{r['throughput_rps']:>7.1f} | {r['p50_ms']:>7.1f} | {r['p95_ms']:>7.1f} | {r['p99_ms']:>7.1f} | "
              f"{r['mean_batch']:>5.1f} | {r['ceiling_pages_per_s']:>9.1f} | {r['ratio']:>5.2f} |")


if __name__ == "__main__":
    sys.exit(main())
