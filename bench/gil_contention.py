"""Does other Python work slow the served model down, and does it matter where that work runs?

    python bench/gil_contention.py --checkpoint runs/ml-100k/sft --data runs/ml-100k/data [--batch 16]

A Serve replica runs the model in a worker thread while its event loop parses and answers the
requests in flight. This measures the ranker's batch (``Ranker.rank``, 1 torch thread) three
ways, interleaved over ``--rounds`` rounds: alone; beside a thread of the same process that
round-trips a response-sized dict through JSON with short sleeps (what an event loop does
between requests); and beside the same work in another process. If the thread slows the model
and the process does not, the cost is the GIL, not the cores: the model would serve faster in a
process of its own. Medians per setting and round; writes ``bench/results/gil_contention.json``.
Run it on a quiet box (2 cores: the busy process takes the second one).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, results_dir, spread  # noqa: E402

SETTINGS = ("alone", "busy_thread", "busy_process")


def busy(stop) -> None:
    """JSON round trips of a page-sized response with 0.5 ms sleeps, until ``stop`` is set."""
    doc = {"items": [str(i) for i in range(10)], "titles": ["x" * 30] * 10, "scores": [0.1] * 10}
    while not stop.is_set():
        for _ in range(20):
            json.loads(json.dumps(doc))
        time.sleep(0.0005)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory to rank with")
    p.add_argument("--data", required=True, help="prepared data dir (the users whose pages are ranked)")
    p.add_argument("--batch", type=int, default=16, help="requests per ranker batch")
    p.add_argument("--batches", type=int, default=40, help="timed batches per setting and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three settings")
    p.add_argument("--smoke", action="store_true", help="2 rounds of 3 batches; to the smoke directory")
    p.add_argument("--out", default=None, help="result file (default bench/results/gil_contention.json)")
    a = p.parse_args(argv)
    if a.smoke:
        a.rounds, a.batches = 2, 3
    if a.batch < 1 or a.batches < 1 or a.rounds < 1:
        p.error("--batch, --batches and --rounds must be >= 1")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    run = Run(inputs={"checkpoint": a.checkpoint, "data": a.data})
    import torch

    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.serve.ranker import Ranker, RankRequest, UserHistories

    torch.set_num_threads(1)
    users = load_prepared(a.data).users["user"].astype(str).tolist()
    ranker = Ranker.load(a.checkpoint, UserHistories.load(a.data), max_k=10, max_history=0)
    cursor = 0

    def timed_batches() -> float:
        nonlocal cursor
        times = []
        for _ in range(a.batches):
            reqs = [RankRequest(user_id=users[(cursor + j) % len(users)], k=10) for j in range(a.batch)]
            cursor += a.batch
            t0 = time.perf_counter()
            ranker.rank(reqs)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    def beside(worker, event) -> float:
        stop = event()
        w = worker(target=busy, args=(stop,), daemon=True)
        w.start()
        try:
            return timed_batches()
        finally:
            stop.set()
            w.join()

    for _ in range(3):
        ranker.rank([RankRequest(user_id=users[0], k=10)] * a.batch)  # warm-up
    ms: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for r in range(a.rounds):
        for setting in SETTINGS:
            if setting == "alone":
                ms[setting].append(timed_batches())
            else:  # the busy work in a thread of this process, or in a process of its own
                ms[setting].append(beside(*((threading.Thread, threading.Event) if setting == "busy_thread"
                                            else (mp.Process, mp.Event))))
            print(f"round {r + 1} {setting:>12}: {ms[setting][-1]:.1f} ms per batch of {a.batch}", flush=True)
    out = {s: spread(v) for s, v in ms.items()}
    base = out["alone"]["median"]
    ratios = {s: out[s]["median"] / base for s in SETTINGS if base}
    labels = {"alone": "alone", "busy_thread": "beside a busy thread of the same process",
              "busy_process": "beside the same work in another process"}
    md = [f"| ranker batch of {a.batch} | ms per batch, median [min, max] over {a.rounds} rounds | x alone |",
          "|---|---|---|"]
    md += [f"| {labels[s]} | {out[s]['median']:.1f} [{out[s]['min']:.1f}, {out[s]['max']:.1f}] | "
           f"{ratios.get(s, 0):.2f} |" for s in SETTINGS]
    out_path = Path(a.out) if a.out else results_dir(a.smoke) / "gil_contention.json"
    path = run.write(out_path.stem, {
        "what": "Ranker.rank ms per batch (median of the batches of a round), alone / beside a busy thread of "
                "the same process / beside a busy process, interleaved rounds",
        "batch": a.batch, "batches_per_round": a.batches, "rounds": a.rounds, "torch_threads": 1,
        "cpus": os.cpu_count(), "ms_per_batch": out, "ratio_to_alone": ratios, "smoke": a.smoke,
        "table_markdown": "\n".join(md),
    }, results_dir=out_path.parent)
    print(" | ".join(f"{s} {out[s]['median']:.1f} ms (x{ratios.get(s, 0):.2f})" for s in SETTINGS))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
