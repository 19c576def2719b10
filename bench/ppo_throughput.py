"""PPO iteration throughput on Ray actors: pages/s and where the time goes.

    python bench/ppo_throughput.py [--data /tmp/ml100k-prepared] [--sft DIR] [--reward DIR|rule]
                                   [--iterations 3] [--batch 64] [--smoke-test]

One PPO iteration = sync + generate (rollout actor) + score (reward, reference and critic
at once) + advantage (a Ray task beside the data: KL, token rewards, GAE, whitening) + train
(policy and critic groups at once, ppo_epochs passes). ``driver_get_bytes`` /
``driver_put_bytes``: what the controller process fetched and put per iteration (actors.ledger).
Setups differ only in the ZeRO stage of the policy and critic groups (2 ranks each; stage 0
is DDP), in placement: colocated (one placement group, fractional CPUs) or spread (one
placement group per role), and (``-ptx1``) in the policy's PPO-ptx term. One warm-up iteration, then ``--iterations`` measured ones.
Missing inputs are trained first with the CLI (bench/ppo_common.py).

Writes bench/results/ppo_throughput.json (through bench/provenance.py) and prints a table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, add_input_args, bench_env, prepare_inputs, results_dir, table  # noqa: E402

SETUPS = {
    "zero0-1rank-colocated": {"ranks": 1, "zero": 0, "colocate": True},
    "zero0-2rank-colocated": {"ranks": 2, "zero": 0, "colocate": True},
    "zero2-2rank-colocated": {"ranks": 2, "zero": 2, "colocate": True},
    "zero3-2rank-colocated": {"ranks": 2, "zero": 3, "colocate": True},
    "zero2-2rank-spread": {"ranks": 2, "zero": 2, "colocate": False},
    # the shipped PPO-ptx term (ppo.policy.ptx_coef 1.0) on the default setup: what it costs
    "zero2-2rank-colocated-ptx1": {"ranks": 2, "zero": 2, "colocate": True, "ptx": 1.0},
}
PHASES = ("sync", "generate", "score", "advantage", "train")


def ppo_config(setup: dict, batch: int, page_size: int, max_history: int, iterations: int):
    from rlhf_ray.config import PPOConfig

    train = {"zero_stage": setup["zero"], "batch_size": batch // 2}
    return PPOConfig.from_dict({
        "page_size": page_size, "max_history": max_history, "iterations": iterations + 1,
        "rollout_batch_size": batch, "ppo_epochs": 2, "eval_every": 0, "save_every": 0,
        "colocate": setup["colocate"], "strategy": "PACK" if setup["colocate"] else "SPREAD",
        "policy": {"ranks": setup["ranks"], "train": train, "ptx_coef": setup.get("ptx", 0.0)},
        "critic": {"ranks": setup["ranks"], "train": train},
    })


def measure(name: str, setup: dict, args, K: int, H: int) -> dict:
    from actors.orchestrator import PHASES as ORCH_PHASES, PPOOrchestrator

    assert tuple(ORCH_PHASES) == PHASES
    cfg = ppo_config(setup, args.batch, K, H, args.iterations)
    with tempfile.TemporaryDirectory(prefix="ppo-tp-") as out:
        orch = PPOOrchestrator(cfg, args.sft, args.reward, args.data, out, log=lambda s: None)
        t0 = time.perf_counter()
        orch.start()
        startup = time.perf_counter() - t0
        try:
            orch.iteration(0)  # warm-up: first forward passes, allocator, DeepSpeed buffers
            runs = [orch.iteration(i) for i in range(1, args.iterations + 1)]
        finally:
            orch.shutdown()
    wall = sum(m["time/iteration_s"] for m in runs)
    row = {"setup": name, **setup, "startup_s": startup, "iteration_s": wall / len(runs),
           "pages_per_s": args.batch * len(runs) / wall}
    row.update({f"{p}_s": sum(m[f"time/{p}_s"] for m in runs) / len(runs) for p in PHASES})
    row.update({k: sum(m[f"perf/driver_{k}"] for m in runs) / len(runs) for k in ("get_bytes", "put_bytes")})
    for role in ("policy", "critic"):  # inside the role's train call: rank-mean seconds per iteration
        row.update({f"{role}_{k}_s": sum(m[f"{role}/time_{k}_s"] for m in runs) / len(runs)
                    for k in ("batch", "forward", "backward", "step")})
    row["reward"] = float(sum(m["reward/total"] for m in runs) / len(runs))
    print(f"[bench] {name}: {row['pages_per_s']:.1f} pages/s, {row['iteration_s']:.2f} s/iteration "
          f"(startup {startup:.0f} s)", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(p)
    p.add_argument("--iterations", type=int, default=3, help="measured iterations per setup")
    p.add_argument("--batch", type=int, default=64, help="pages per iteration (rollout_batch_size)")
    p.add_argument("--setups", default=",".join(SETUPS), help="comma-separated subset of " + ",".join(SETUPS))
    p.add_argument("--smoke", "--smoke-test", dest="smoke_test", action="store_true",
                   help="1 measured iteration, 2 setups; result to the smoke directory")
    args = p.parse_args()
    bench_env()
    run = Run()
    if args.smoke_test:
        args.iterations, args.setups = 1, "zero0-1rank-colocated,zero2-2rank-colocated"
    K, H = prepare_inputs(args, run)
    from rlhf_ray.rayutil import init_ray

    init_ray(num_cpus=2, log_to_driver=False)
    rows = [measure(name, SETUPS[name], args, K, H) for name in args.setups.split(",")]
    cols = ["setup", "pages_per_s", "iteration_s", *[f"{ph}_s" for ph in PHASES], "startup_s", "get_bytes",
            "put_bytes"]
    print(table(rows, cols, "{:.3f}"))
    path = run.write("ppo_throughput", {
        "what": "PPO iteration throughput (pages/s) and per-phase seconds on Ray actors",
        "smoke": args.smoke_test,
        "settings": {"reward": args.reward, "batch": args.batch,
                   "page_size": K, "max_history": H,
                   "ppo_epochs": 2, "minibatch": args.batch // 2, "measured_iterations": args.iterations},
        "results": rows}, results_dir=results_dir(args.smoke_test))
    print(f"[bench] wrote {path}")


if __name__ == "__main__":
    main()
