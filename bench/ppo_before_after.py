"""PPO pages/s before and after a change, interleaved: the same bench on two commits.

    python bench/ppo_before_after.py --old 0ef6f5f --data runs/bench/loo/seed0/data \\
        --sft runs/bench/loo/seed0/sft --reward runs/bench/loo/seed0/reward [--rounds 3]

Both sides run ``bench/ppo_throughput.py`` (one setup, default ZeRO-2 with 2 ranks colocated,
the shipped PPO shape) from a detached git worktree of their commit (``--new`` defaults to
HEAD), with the same inputs, batch, iterations and threads, one side after the other:
old, new, old, new, ... for ``--rounds`` rounds, so drift of the box hits both alike. Each
run starts its own Ray, builds the roles, does a warm-up iteration and ``--iterations``
measured ones. Reported per side: median, min and max over rounds of pages/s and of each
phase's seconds; the ratio new/old of the medians. The box must be quiet (refused above a
1-minute load average of ``--max-load``). Writes ``bench/results/ppo_before_after.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from ppo_common import Run, bench_env, results_dir, table  # noqa: E402

PHASES = ("sync", "generate", "score", "advantage", "train")


def worktree(rev: str, where: Path) -> Path:
    """A detached worktree of ``rev`` under ``where`` (removed by the caller's cleanup)."""
    path = where / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(path), rev],
                   check=True, capture_output=True)
    return path


def run_side(tree: Path, args) -> dict:
    """One ppo_throughput run in ``tree``; its result row."""
    out = tree / "bench" / "results" / "ppo_throughput.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "bench/ppo_throughput.py", "--data", os.path.abspath(args.data),
           "--sft", os.path.abspath(args.sft), "--reward",
           args.reward if args.reward == "rule" else os.path.abspath(args.reward),
           "--setups", args.setup, "--iterations", str(args.iterations), "--batch", str(args.batch)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    return json.loads(out.read_text())["results"][0]


def summary(rows: list[dict]) -> dict:
    keys = ["pages_per_s", "iteration_s", *[f"{p}_s" for p in PHASES]]
    return {k: {"median": statistics.median(r[k] for r in rows), "min": min(r[k] for r in rows),
                "max": max(r[k] for r in rows)} for k in keys if all(k in r for r in rows)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--old", required=True, help="commit before the change")
    p.add_argument("--new", default="HEAD", help="commit after the change (default HEAD)")
    p.add_argument("--data", required=True)
    p.add_argument("--sft", required=True)
    p.add_argument("--reward", required=True, help="reward checkpoint dir or 'rule'")
    p.add_argument("--setup", default="zero2-2rank-colocated", help="one of ppo_throughput.py's setups")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=3, help="measured iterations per run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-load", type=float, default=1.0, help="refuse to start above this 1-minute load")
    p.add_argument("--results", default=None, help="result file (default bench/results/ppo_before_after.json)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.iterations < 1:
        p.error("--rounds and --iterations must be >= 1")
    load = os.getloadavg()[0]
    if load > args.max_load:
        p.error(f"1-minute load average {load:.2f} > --max-load {args.max_load}: timings would be worthless")
    bench_env()
    old = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.old], capture_output=True, text=True)
    new = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.new], capture_output=True, text=True)
    if old.returncode or new.returncode:
        p.error(f"unknown commit: {args.old if old.returncode else args.new}")
    revs = {"old": old.stdout.strip(), "new": new.stdout.strip()}
    run = Run(inputs={"data": args.data, "sft": args.sft,
                      **({} if args.reward == "rule" else {"reward": args.reward})})
    rows: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="ppo-before-after-") as tmp:
        trees = {side: worktree(rev, Path(tmp)) for side, rev in revs.items()}
        try:
            for r in range(args.rounds):
                for side in ("old", "new"):
                    row = run_side(trees[side], args)
                    rows[side].append(row)
                    print(f"[before/after] round {r + 1} {side} ({revs[side][:7]}): "
                          f"{row['pages_per_s']:.2f} pages/s", flush=True)
        finally:
            for t in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(t)],
                               capture_output=True)
    sums = {side: summary(rs) for side, rs in rows.items()}
    ratio = sums["new"]["pages_per_s"]["median"] / sums["old"]["pages_per_s"]["median"]
    print(table([{"side": f"{s} {revs[s][:7]}", **{k: v["median"] for k, v in sums[s].items()}} for s in rows],
                ["side", "pages_per_s", "iteration_s", *[f"{p}_s" for p in PHASES]], "{:.3f}"))
    print(f"[before/after] pages/s new/old (medians over {args.rounds} interleaved rounds): x{ratio:.3f}")
    out = Path(args.results) if args.results else results_dir(False) / "ppo_before_after.json"
    path = run.write(out.stem, {
        "what": "PPO iteration pages/s, old commit vs new, interleaved runs of bench/ppo_throughput.py",
        "commits": revs, "setup": args.setup, "rounds": args.rounds, "iterations": args.iterations,
        "batch": args.batch, "runs": rows, "summary": sums, "pages_per_s_ratio": ratio}, results_dir=out.parent)
    print(f"[before/after] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
