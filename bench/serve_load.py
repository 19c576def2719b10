"""Load test of the Serve ranker on loopback, against an in-process ceiling measured between the loads.

    .venv/bin/python bench/serve_load.py --checkpoint runs/ml-100k/sft --data runs/ml-100k/data \
        --requests 2000 --concurrency 1,8,32 --ks 10,20 --max-seconds 25 [--smoke]

Phases, for each page size k:  ceiling, load c1, ceiling, load c2, ceiling, ...

* load: c closed-loop clients (raw asyncio HTTP/1.1, one keep-alive connection each: see
  :class:`Connection`) send
  ``POST /v1/rank {"user_id": ..., "k": k}`` for the data's users in turn, until ``--requests``
  are answered or ``--max-seconds`` have passed, whichever comes first. Reported: throughput
  (answered requests = pages per second), latency percentiles, errors (non-200 or transport
  errors), the batches the replica formed in that phase (its ``/v1/stats`` histogram before
  and after: mean batch size and the histogram itself), the replica's mean ms per request in
  each stage (parse, queue, batch_wait, model, serialise, total: ``rlhf_ray.serve.latency``)
  and the 1-minute load average after the phase.
* ceiling: the same requests ranked in this process by :class:`rlhf_ray.serve.ranker.Ranker`
  (built as the replica builds it, with the replica's torch thread count), no HTTP, no Ray:
  seconds per batch at every batch size 1..``--max-batch-size`` (at least ``--ceiling-batches``
  batches and ``--ceiling-seconds`` per size, bounded by ``--max-seconds``).

Each load phase is compared with the ceiling *at the batch sizes the server formed in it*: the
phase's histogram {size s: n_s batches} replayed with the adjacent ceilings' seconds per batch,
ceiling = sum n_s s / sum n_s t(s), once with the ceiling phase before the load and once with
the one after; ``ratio`` = served pages/s / the mean of the two, and ``ceiling_drift`` = after /
before says how much the machine moved meanwhile.

The server (local Ray, one replica, 127.0.0.1, a free port) is started here unless ``--url``
points at a running one, which must be on loopback. Client and server share this machine's
cores, so the client's own CPU use is part of what is measured (``client cores``: its CPU
seconds per wall second in the phase); the ceiling has no client.
Results go to bench/results/serve_load.json through bench/provenance.py.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import httpx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, results_dir  # noqa: E402
from provenance import load_average  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory to serve")
    p.add_argument("--data", required=True, help="prepared data dir (users whose histories are ranked)")
    p.add_argument("--requests", type=int, default=2000, help="requests per load phase (upper bound)")
    p.add_argument("--max-seconds", type=float, default=25.0, help="seconds per load phase (upper bound)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--ks", default="10,20", help="comma-separated page sizes")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=20.0)
    p.add_argument("--ingress", choices=("proxy", "haproxy"), default="proxy",
                   help="HTTP path when this script starts the server (ServeConfig.ingress)")
    p.add_argument("--worker-niceness", type=int, default=0,
                   help="niceness of the replica when this script starts the server (ServeConfig.worker_niceness; "
                        "Ray's own default is 15)")
    p.add_argument("--separate-model", action="store_true",
                   help="the model in a deployment of its own fed whole batches (ServeConfig.separate_model)")
    p.add_argument("--shortlist", type=int, default=0, help="decode pages among the first slot's best M items "
                   "(ServeConfig.shortlist; the ceiling decodes the same way); 0 = the whole catalogue")
    p.add_argument("--torch-threads", type=int, default=1, help="replica (and ceiling) torch threads")
    p.add_argument("--max-ongoing-requests", type=int, default=0,
                   help="Serve's max_ongoing_requests per replica (0: max(64, 2 x the largest concurrency))")
    p.add_argument("--ceiling-batches", type=int, default=5, help="at least this many batches per size per ceiling")
    p.add_argument("--ceiling-seconds", type=float, default=0.3, help="at least this long per size per ceiling")
    p.add_argument("--url", default=None, help="benchmark a running loopback server instead of starting one")
    p.add_argument("--out", default=None, help="result file (default bench/results/serve_load.json, "
                                               "serve_load_haproxy.json with --ingress haproxy, "
                                               "a _separate suffix with --separate-model)")
    p.add_argument("--smoke", "--smoke-test", dest="smoke", action="store_true",
                   help="k=10, clients 1,4, batches up to 4, 60 requests / 5 s per phase; to the smoke directory")
    a = p.parse_args(argv)
    if a.smoke:
        a.ks, a.concurrency, a.max_batch_size, a.requests, a.max_seconds = "10", "1,4", 4, 60, 5.0
        a.ceiling_batches, a.ceiling_seconds = 3, 0.1
    a.concurrency = [int(c) for c in a.concurrency.split(",")]
    a.ks = [int(k) for k in a.ks.split(",")]
    if a.url and urlparse(a.url).hostname not in LOOPBACK:
        p.error(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))}), got {a.url}")
    return a


def percentile(sorted_xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (q in [0, 100]); None for no data."""
    if not sorted_xs:
        return None
    i = max(0, min(len(sorted_xs) - 1, int(round(q / 100 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[i]


class Connection:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams: the load client.

    The client shares the machine's cores with the server, so its own CPU is taken from what
    is measured; httpx's async client spent 2.1 ms of CPU per request here, this 0.1 ms
    (3000 requests on 8 connections to a trivial uvicorn app). Sends a JSON body; reads a
    ``Content-Length`` response (what uvicorn and HAProxy send for JSON); anything else is a
    ``ProtocolError``."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\n\r\n").encode()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(head + payload)
            raw = await self.reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
            if "content-length" not in headers:
                raise ProtocolError(f"response without content-length (status {status})")
            data = await self.reader.readexactly(int(headers["content-length"]))  # type: ignore[union-attr]
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, data
        except BaseException:
            self.close()  # a broken or cancelled exchange leaves the stream mid-response
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class ProtocolError(Exception):
    """A response the load client cannot read."""


async def load(url: str, users: list[str], k: int, concurrency: int, n: int, max_s: float) -> dict:
    """``concurrency`` closed-loop clients (one :class:`Connection` each); stop at ``n``
    requests or ``max_s`` seconds."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + max_s
    parsed = urlparse(url)
    prefix = parsed.path.rstrip("/")

    async def client() -> None:
        nonlocal issued
        conn = Connection(parsed.hostname or "127.0.0.1", parsed.port or 80)
        try:
            while issued < n and time.perf_counter() < deadline:
                body = {"user_id": users[issued % len(users)], "k": k}
                issued += 1
                t0 = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(conn.post(prefix + "/v1/rank", body), 60)
                    ok = status == 200 and len(json.loads(data)["items"]) == k
                    key = None if ok else f"HTTP {status}"
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ProtocolError, ValueError) as e:
                    key = type(e).__name__
                if key is None:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors[key] = errors.get(key, 0) + 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    lat.sort()
    ms = [x * 1000 for x in lat]
    return {
        "answered": len(lat), "errors": sum(errors.values()), "error_kinds": errors, "seconds": wall,
        "throughput_rps": len(lat) / wall if wall else 0.0,
        "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else None,
    }


def ceiling_table(ranker, users: list[str], k: int, sizes: list[int], min_batches: int, min_s: float,
                  max_s: float) -> dict[int, dict]:
    """{size: {"batches", "seconds_per_batch", "pages_per_s"}}: in-process ranking, no HTTP, no Ray."""
    from rlhf_ray.serve.ranker import RankRequest

    out, cursor = {}, 0
    for s in sizes:
        ranker.rank([RankRequest(user_id=users[(cursor + i) % len(users)], k=k) for i in range(s)])  # warm-up
        times: list[float] = []
        t_start = time.perf_counter()
        while len(times) < min_batches or time.perf_counter() - t_start < min_s:
            reqs = [RankRequest(user_id=users[(cursor + i) % len(users)], k=k) for i in range(s)]
            cursor += s
            t0 = time.perf_counter()
            ranker.rank(reqs)
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - t_start > max_s:
                break
        spb = statistics.median(times)
        out[s] = {"batches": len(times), "seconds_per_batch": spb, "pages_per_s": s / spb}
    return out


def replay(histogram: dict[int, int], table: dict[int, dict]) -> float | None:
    """Pages/s of the batches in ``histogram`` ({size: count}) at ``table``'s seconds per batch."""
    pages = sum(s * n for s, n in histogram.items())
    secs = sum(n * table[s]["seconds_per_batch"] for s, n in histogram.items() if s in table)
    return pages / secs if secs else None


def serve_config(a: argparse.Namespace):
    from rlhf_ray.config import ServeConfig
    from rlhf_ray.rayutil import free_port

    return ServeConfig(checkpoint=a.checkpoint, data=a.data, port=free_port(), host="127.0.0.1",
                       max_k=max(a.ks), default_k=min(a.ks), max_batch_size=a.max_batch_size,
                       batch_wait_ms=a.batch_wait_ms, torch_threads=a.torch_threads,
                       max_ongoing_requests=a.max_ongoing_requests or max(64, 2 * max(a.concurrency)),
                       ingress=a.ingress, worker_niceness=a.worker_niceness, separate_model=a.separate_model,
                       shortlist=a.shortlist)


def start_server(cfg) -> str:
    from rlhf_ray.serve.app import deploy, init_serve_ray

    init_serve_ray(cfg, num_cpus=os.cpu_count(), log_to_driver=False)
    deploy(cfg)
    return f"http://127.0.0.1:{cfg.port}"


def histogram_between(before: dict, after: dict) -> dict[int, int]:
    """Batches decoded between two /v1/stats snapshots: {size: count}."""
    h0, h1 = before["batch_size_histogram"], after["batch_size_histogram"]
    diff = {int(s): n - h0.get(s, 0) for s, n in h1.items()}
    return {s: n for s, n in sorted(diff.items()) if n > 0}


def stages_between(before: dict, after: dict) -> dict[str, float] | None:
    """Mean ms per request in each replica stage (parse, queue, batch_wait, model, serialise, total)
    between two /v1/stats snapshots; None for a server without the breakdown."""
    if "stage_ms_sum" not in after:
        return None
    n = after["timed_requests"] - before["timed_requests"]
    return {k: (v - before["stage_ms_sum"][k]) / n for k, v in after["stage_ms_sum"].items()} if n else None


def main(argv=None) -> int:
    a = parse_args(argv)
    run = Run(inputs={"checkpoint": a.checkpoint, "data": a.data})
    import torch

    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.serve.ranker import Ranker, UserHistories

    users = load_prepared(a.data).users["user"].astype(str).tolist()
    manifest = json.loads((Path(a.checkpoint) / "manifest.json").read_text())
    print(f"checkpoint {manifest['id']} ({manifest['stage']}), {len(users)} users", flush=True)
    cfg = serve_config(a)
    torch.set_num_threads(a.torch_threads)
    ranker = Ranker.load(a.checkpoint, UserHistories.load(a.data), **cfg.ranker_options())
    sizes = list(range(1, a.max_batch_size + 1))

    def ceiling(k: int) -> dict[int, dict]:
        t = ceiling_table(ranker, users, k, sizes, a.ceiling_batches, a.ceiling_seconds, a.max_seconds)
        print(f"  ceiling k={k}: " + " ".join(f"{s}:{v['pages_per_s']:.0f}" for s, v in t.items()) + " pages/s",
              flush=True)
        return t

    started_here = a.url is None
    url = start_server(cfg) if started_here else a.url
    phases, rows = [], []
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            for k in a.ks:
                for _ in range(3):  # warm-up (not counted)
                    c.post("/v1/rank", json={"user_id": users[0], "k": k}).raise_for_status()
                before_table = ceiling(k)
                phases.append({"phase": "ceiling", "k": k, "table": before_table})
                for conc in a.concurrency:
                    before = c.get("/v1/stats").json()
                    cpu0 = time.process_time()
                    res = asyncio.run(load(url, users, k, conc, a.requests, a.max_seconds))
                    # the load client's own CPU (this process, all threads) per wall second: the
                    # share of the box's cores the client took from the server during the phase
                    res["client_cores"] = (time.process_time() - cpu0) / res["seconds"] if res["seconds"] else None
                    stats = c.get("/v1/stats").json()
                    hist = histogram_between(before, stats)
                    n_batches = sum(hist.values())
                    res.update(k=k, concurrency=conc, batch_size_histogram=hist, batches=n_batches,
                               mean_batch=sum(s * n for s, n in hist.items()) / n_batches if n_batches else None,
                               replica_stage_ms=stages_between(before, stats), load_1min=load_average()[:1])
                    phases.append({"phase": "load", "k": k, "concurrency": conc})
                    after_table = ceiling(k)
                    phases.append({"phase": "ceiling", "k": k, "table": after_table})
                    cb, ca = replay(hist, before_table), replay(hist, after_table)
                    res.update(ceiling_before_pages_per_s=cb, ceiling_after_pages_per_s=ca)
                    if cb and ca:
                        res.update(ceiling_pages_per_s=(cb + ca) / 2, ratio=res["throughput_rps"] / ((cb + ca) / 2),
                                   ratio_vs_before=res["throughput_rps"] / cb, ratio_vs_after=res["throughput_rps"] / ca,
                                   ceiling_drift=ca / cb)
                    rows.append(res)
                    print(f"k={k:<3} c={conc:<3} {res['throughput_rps']:8.1f} req/s  p50 {res['p50_ms'] or 0:7.1f} ms  "
                          f"p99 {res['p99_ms'] or 0:7.1f} ms  errors {res['errors']}  batch "
                          f"{res['mean_batch'] or 0:.1f}  ratio {res.get('ratio') or 0:.2f}", flush=True)
                    if res["replica_stage_ms"]:
                        print("        replica ms/request: " + "  ".join(
                            f"{st} {ms:.1f}" for st, ms in res["replica_stage_ms"].items()), flush=True)
                    before_table = after_table
            model = c.get("/v1/model").json()
    finally:
        if started_here:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()

    default_name = "serve_load" + ("_haproxy" if cfg.ingress == "haproxy" and started_here else "") \
        + ("_separate" if cfg.separate_model and started_here else "") + ".json"
    out = Path(a.out) if a.out else results_dir(a.smoke) / default_name
    path = run.write(out.stem, {
        "what": "Serve /v1/rank on loopback under closed-loop load vs the in-process ceiling at the same batch "
                "sizes, ceilings interleaved with the load phases",
        "smoke": a.smoke,
        "checkpoint": {"path": a.checkpoint, "id": manifest["id"], "stage": manifest["stage"],
                       "n_items": model["n_items"], "max_history": model["max_history"]},
        "settings": {"requests_per_phase": a.requests, "max_seconds_per_phase": a.max_seconds,
                     "max_batch_size": a.max_batch_size, "batch_wait_ms": a.batch_wait_ms,
                     "max_ongoing_requests": cfg.max_ongoing_requests,
                     "ingress": cfg.ingress if started_here else "unknown (--url)",
                     "worker_niceness": cfg.worker_niceness if started_here else "unknown (--url)",
                     "separate_model": cfg.separate_model if started_here else "unknown (--url)",
                     "torch_threads": a.torch_threads, "replicas": 1, "ceiling_sizes": sizes,
                     "ceiling_batches": a.ceiling_batches, "ceiling_seconds": a.ceiling_seconds,
                     "server": url if not started_here else "local (127.0.0.1)"},
        "results": rows,
        "phases": [{**ph, "table": {str(s): v for s, v in ph["table"].items()}} if "table" in ph else ph
                   for ph in phases],
        "batch_size_histogram": model["batch_size_histogram"],
        "table_markdown": table_markdown(rows),
    }, results_dir=out.parent)
    print(table_markdown(rows))
    print(f"load average {run.load_before} at start; client, Serve proxy and replica share {os.cpu_count()} CPUs")
    print(f"wrote {path}")
    return 0


def table_markdown(rows: list[dict]) -> str:
    """One row per load phase; ratio = served pages/s over the in-process ceiling at the served batch sizes."""
    head = f"| {'k':>3} | {'clients':>7} | {'answered':>8} | {'errors':>6} | {'req/s':>7} | {'p50 ms':>7} | " \
           f"{'p99 ms':>7} | {'batch':>5} | {'ceiling/s':>9} | {'ratio':>5} | {'drift':>5} | {'client cores':>12} |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    f = lambda x, w, d=1: f"{x:>{w}.{d}f}" if isinstance(x, (int, float)) else f"{'n/a':>{w}}"  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['k']:>3} | {r['concurrency']:>7} | {r['answered']:>8} | {r['errors']:>6} | "
            f"{f(r['throughput_rps'], 7)} | {f(r['p50_ms'], 7)} | {f(r['p99_ms'], 7)} | {f(r['mean_batch'], 5)} | "
            f"{f(r.get('ceiling_pages_per_s'), 9)} | {f(r.get('ratio'), 5, 2)} | {f(r.get('ceiling_drift'), 5, 2)} | "
            f"{f(r.get('client_cores'), 12, 2)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
