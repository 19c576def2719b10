"""Fault injection on a simulated 3-node Ray cluster, and PPO pages/s on 1, 2 and 3 simulated nodes.

    .venv/bin/python bench/fault_injection.py [--data DIR] [--sft DIR] [--reward rule|DIR]
        [--ppo-runs 3 --ppo-kills 5] [--sft-runs 3 --sft-kills 3] [--scaling-rounds 2] [--seed 0] [--smoke]

Cluster: ``ray.cluster_utils.Cluster`` on 127.0.0.1 (rlhf_ray.rayutil.simulated_cluster): node
``head`` runs the inference roles (rollout, reference, reward), ``n1`` the policy group, ``n2``
the critic group (custom resources pin them). Nodes are separate raylets and object stores
sharing this machine's cores.

Faults, at random times (seeded) after the first training iteration / once the Ray Train workers
run, never during start-up (recovery covers the training loop, not start-up):

* PPO runs (``--ppo-runs``, ``--ppo-kills`` each, ``save_every: 1``, ``max_restarts`` high): SIGKILL
  of a random role's worker process at a random moment into an iteration, the kills spread over
  the run (each waits for iterations to complete after the previous one, so it lands on a run that
  works again), and once per run the loss of a whole node after a random iteration
  (``remove_node``: its raylet and every process on it; a replacement node with the same
  resources joins at once, as an autoscaler would bring one).
* SFT runs on a Ray Train worker group (2 workers, ``max_failures`` high): SIGKILL of a random
  Ray Train worker process at random times over 90% of the unkilled run's training time.

Reported per run and in total: kills landed (the target process existed), kills survived (the
run finished), restarts, iterations recomputed (PPO: completed after the last saved state and
done again), corrupt checkpoints (a final checkpoint that fails verification, or a complete PPO
state missing its engine files: 0 expected), and the final metrics beside an unkilled run with
the same seed (PPO: every iteration's reward and losses; SFT: final loss and validation NDCG).

Scaling (``--scaling-rounds``, interleaved 1, 2, 3, 1, 2, 3 ...): the same PPO run on 1, 2 and 3
simulated nodes offering the same 3 logical CPUs in all (3 | 1+2 | 1+1+1), roles pinned as above
(on one node, all on it). The nodes share the same physical cores, so this measures what
distribution costs (object transfers between raylets, remote calls), not added compute: the
efficiency pages/s(n) / pages/s(1) reads as overhead, never as a speedup. Per-phase seconds and
the load average (provenance) go with it.

Writes bench/results/fault_injection.json through bench/provenance.py.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, bench_env, ensure_sft, results_dir, sft_prompt, table  # noqa: E402

FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
PINS = {"policy": "n1", "critic": "n2", "rollout": "head", "reference": "head", "reward": "head"}
COMPARED = ("reward/total", "kl/per_page", "policy/policy_loss", "critic/value_loss")
LAYOUTS = {  # simulated nodes for the scaling runs: 3 logical CPUs in all
    1: [{"num_cpus": 3, "resources": {"head": 1, "n1": 1, "n2": 1}}],
    2: [{"num_cpus": 1, "resources": {"head": 1}}, {"num_cpus": 2, "resources": {"n1": 1, "n2": 1}}],
    3: [{"num_cpus": 1, "resources": {"head": 1}}, {"num_cpus": 1, "resources": {"n1": 1}},
        {"num_cpus": 1, "resources": {"n2": 1}}],
}


def ppo_config(args, K: int, H: int, iterations: int, save_every: int):
    from rlhf_ray.config import PPOConfig

    roles = {role: {"num_cpus": 0.2, "resources": {pin: 0.1}} for role, pin in PINS.items()}
    for role in ("policy", "critic"):
        roles[role]["train"] = {"batch_size": args.batch // 2}
    return PPOConfig.from_dict({
        "page_size": K, "max_history": H, "iterations": iterations, "rollout_batch_size": args.batch,
        "ppo_epochs": 1, "eval_every": 0, "save_every": save_every, "seed": args.seed, "max_restarts": 100,
        "colocate": False, "tensorboard": False, **roles})


# --------------------------------------------------------------------------- killing


class Killer(threading.Thread):
    """SIGKILLs, each of a target drawn from ``targets()`` -> [(what, pid)] at that moment.

    Unpaced: at the seeded ``delays`` (seconds after ``armed`` is set). Paced (``pace`` given, an
    event the run sets at each completed iteration): kill i waits for the ``gap``-th iteration
    completed after kill i - 1, then ``delays[i]`` seconds more, so every kill lands on a run
    that is working again (not on one still recovering from the previous kill)."""

    def __init__(self, delays: list[float], targets, rng: random.Random, pace: threading.Event | None = None,
                 gap: int = 1):
        super().__init__(daemon=True)
        self.delays, self.targets, self.rng, self.pace, self.gap = delays, targets, rng, pace, gap
        self.armed, self.done = threading.Event(), threading.Event()
        self.kills: list[dict] = []
        self.armed_at: float | None = None

    def _wait(self, delay: float, t0: float) -> bool:
        """False when the run ended first."""
        if self.pace is None:
            return not self.done.wait(timeout=max(0.0, t0 + delay - time.monotonic()))
        for _ in range(self.gap):
            while not self.pace.wait(timeout=1.0):
                if self.done.is_set():
                    return False
            self.pace.clear()
        return not self.done.wait(timeout=delay)

    def run(self) -> None:
        if not self.armed.wait(timeout=1800):
            return
        t0 = self.armed_at = time.monotonic()
        for delay in self.delays:
            if not self._wait(delay, t0):
                return
            at = round(time.monotonic() - t0, 2)
            candidates = self.targets()
            if not candidates:
                self.kills.append({"at_s": at, "kind": "process", "landed": False, "why": "no target"})
                continue
            what, pid = self.rng.choice(candidates)
            try:
                os.kill(pid, signal.SIGKILL)
                landed = True
            except ProcessLookupError:
                landed = False
            self.kills.append({"at_s": at, "kind": "process", "target": what, "pid": pid, "landed": landed})


def role_pids(orch) -> list[tuple[str, int]]:
    out = []
    for role, group in list(orch.groups.items()):
        for r in range(group.world):
            pid = group.node(r).get("pid")
            if pid:
                out.append((f"{role}[{r}]", pid))
    return out


def train_worker_pids(cluster) -> list[tuple[str, int]]:
    """Ray Train worker processes of this bench's cluster only (children of its raylets: other Ray
    users on the machine are never touched)."""
    import psutil

    out = []
    for node in [cluster.head_node, *cluster.worker_nodes]:
        try:
            kids = psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True)
        except (psutil.Error, KeyError, IndexError):
            continue
        for k in kids:
            try:
                if "RayTrainWorker" in " ".join(k.cmdline()):
                    out.append(("RayTrainWorker", k.pid))
            except psutil.Error:
                continue
    return out


# --------------------------------------------------------------------------- PPO


def state_problems(state_root: str) -> list[str]:
    """Complete PPO states (controller.json parses) whose engine states are missing or empty."""
    from actors.state import RunState

    bad = []
    for d in RunState(state_root)._complete_dirs():
        for role in ("policy", "critic"):
            files = [p for p in Path(d, role).rglob("*") if p.is_file()] if Path(d, role).is_dir() else []
            if not files or any(p.stat().st_size == 0 for p in files):
                bad.append(f"{d}/{role}")
    return bad


def ppo_run(args, K, H, kills: int, rng: random.Random, nodes=None) -> dict:
    """One PPO run on a fresh simulated cluster (``nodes``: a LAYOUTS entry, default 3 nodes);
    ``kills`` faults at random times (0: an unkilled run)."""
    from actors.orchestrator import PPOOrchestrator
    from actors.state import state_dir
    from rlhf_ray.checkpoint import verify_checkpoint
    from rlhf_ray.errors import CheckpointError
    from rlhf_ray.rayutil import simulated_cluster

    layout = nodes or LAYOUTS[3]
    cfg = ppo_config(args, K, H, args.ppo_iterations, save_every=1 if kills else 0)
    out_root = tempfile.mkdtemp(prefix="fault-ppo-")
    out = str(Path(out_root) / "ppo")
    t0 = time.perf_counter()
    try:
        with simulated_cluster(layout, FAST_NODE_DEATH) as (cluster, handles):
            orch_box: dict = {}
            node_losses: list[dict] = []
            # one fault of the run is a whole node, lost after a random iteration (from the driver's
            # thread: Ray adds the replacement node only there); the others are SIGKILLs at random times
            node_after = rng.randrange(1, args.ppo_iterations - 1) if kills else None

            def lose_a_node(t0: float) -> None:
                """Remove the node of a random trained role; a node with the same resources joins."""
                role = rng.choice(["policy", "critic"])
                node_id = orch_box["orch"].groups[role].node(0)["node_id"]
                victim = next(h for h in list(cluster.worker_nodes) if h.node_id == node_id)
                spec = next(n for n in layout if PINS[role] in n.get("resources", {}))
                cluster.remove_node(victim, allow_graceful=False)
                cluster.add_node(**spec)
                node_losses.append({"at_s": round(time.monotonic() - t0, 2), "kind": "node",
                                    "target": f"node of {role}", "landed": True})

            # process kills paced by iterations: each a random moment into the iteration after the
            # next one completes (``ppo_kill_window``: an unkilled iteration's seconds)
            delays = [rng.uniform(0, args.ppo_kill_window) for _ in range(max(0, kills - 1))]
            iteration_done = threading.Event()
            killer = Killer(delays, lambda: role_pids(orch_box["orch"]), rng, pace=iteration_done,
                            gap=max(1, (args.ppo_iterations - 2) // max(1, kills)))

            def log(line: str) -> None:
                if line.startswith("[ppo] iter "):
                    iteration_done.set()
                if line.startswith("[ppo] iter 1/"):
                    killer.armed.set()
                if node_after is not None and not node_losses and line.startswith(f"[ppo] iter {node_after}/"):
                    lose_a_node(killer.armed_at or time.monotonic())

            orch = PPOOrchestrator(cfg, args.sft, args.reward, args.data, out, log=log)
            orch_box["orch"] = orch
            killer.start()
            try:
                final = orch.run()
                survived, error = True, None
            except Exception as e:  # noqa: BLE001  a run that did not survive is a result, not a crash
                final, survived, error = {}, False, f"{type(e).__name__}: {e}"
            loop_s = time.monotonic() - killer.armed_at if killer.armed_at else None
            killer.done.set()
            killer.join(timeout=30)
        corrupt = state_problems(state_dir(out))
        if survived:
            try:
                verify_checkpoint(out)
            except CheckpointError as e:
                corrupt.append(str(e))
        steady = [m["perf/pages_per_s"] for m in orch.history[1:]] or [m["perf/pages_per_s"] for m in orch.history]
        return {"survived": survived, "error": error, "kills": killer.kills + node_losses,
                "restarts": orch.recovery.restarts, "history": orch.history, "final": final,
                "corrupt": corrupt, "wall_s": time.perf_counter() - t0, "loop_s": loop_s,
                "pages_per_s": statistics.median(steady) if steady else None,
                "phases_s": {p: statistics.mean(m[f"time/{p}_s"] for m in orch.history[1:] or orch.history)
                             for p in ("sync", "generate", "score", "advantage", "train")} if orch.history else {}}
    finally:
        shutil.rmtree(out_root, ignore_errors=True)


def compare_ppo(run: dict, ref: dict) -> dict:
    """Largest |difference| per compared metric over the iterations both runs completed."""
    pairs = list(zip(run["history"], ref["history"]))
    return {k: max((abs(a[k] - b[k]) for a, b in pairs), default=None) for k in COMPARED}


# --------------------------------------------------------------------------- SFT on Ray Train


def sft_run(args, kills: int, rng: random.Random) -> dict:
    from rlhf_ray.checkpoint import verify_checkpoint
    from rlhf_ray.config import SFTConfig
    from rlhf_ray.errors import CheckpointError
    from rlhf_ray.rayutil import simulated_cluster
    from rlhf_ray.stages.launch import launch

    cfg = SFTConfig.from_dict({"train": {
        "num_workers": 2, "cpus_per_worker": 0.5, "placement_strategy": "SPREAD", "max_failures": 100,
        "epochs": 1, "max_steps": args.sft_steps, "batch_size": 32, "seed": args.seed, "progress": False,
        "tensorboard": False, "eval_users": 200}})
    out_root = tempfile.mkdtemp(prefix="fault-sft-")
    out = str(Path(out_root) / "sft")
    t0 = time.perf_counter()
    try:
        with simulated_cluster([{"num_cpus": 1}] * 3, FAST_NODE_DEATH) as (cluster, _):
            delays = sorted(rng.uniform(0, args.sft_kill_window) for _ in range(kills))
            killer = Killer(delays, lambda: train_worker_pids(cluster), rng)

            def arm() -> None:  # once both Ray Train workers run
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline and not killer.done.is_set():
                    if len(train_worker_pids(cluster)) >= 2:
                        killer.armed.set()
                        return
                    time.sleep(0.2)

            threading.Thread(target=arm, daemon=True).start()
            killer.start()
            try:
                final = launch("sft", cfg, args.data, out)
                survived, error = True, None
            except Exception as e:  # noqa: BLE001
                final, survived, error = {}, False, f"{type(e).__name__}: {e}"
            loop_s = time.monotonic() - killer.armed_at if killer.armed_at else None
            killer.done.set()
            killer.join(timeout=30)
        corrupt = []
        if survived:
            try:
                verify_checkpoint(out)
            except CheckpointError as e:
                corrupt.append(str(e))
        keep = ("train/steps", "train/loss", "val/ndcg@10", "val/recall@10")
        return {"survived": survived, "error": error, "kills": killer.kills, "corrupt": corrupt,
                "final": {k: final.get(k) for k in keep}, "wall_s": time.perf_counter() - t0, "loop_s": loop_s}
    finally:
        shutil.rmtree(out_root, ignore_errors=True)


# --------------------------------------------------------------------------- main


def ensure_data(path: str) -> str:
    if not (Path(path) / "stats.json").is_file():
        subprocess.run([sys.executable, "-m", "rlhf_ray.cli", "data", "prepare", "--dataset", "ml-100k",
                        "--split", "leave_one_out", "--tail-fraction", "0.8", "--out", path], check=True)
    return path


def landed(runs: list[dict]) -> int:
    return sum(1 for r in runs for k in r["kills"] if k.get("landed"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/tmp/ml100k-prepared")
    p.add_argument("--sft", default="/tmp/fault-bench-sft", help="SFT checkpoint (trained with the CLI if missing)")
    p.add_argument("--reward", default="rule", help="reward checkpoint or 'rule'")
    p.add_argument("--batch", type=int, default=32, help="PPO pages per iteration")
    p.add_argument("--ppo-iterations", type=int, default=10)
    p.add_argument("--ppo-runs", type=int, default=3)
    p.add_argument("--ppo-kills", type=int, default=5, help="faults per PPO run (one of them a whole node)")
    p.add_argument("--ppo-kill-window", type=float, default=0.0,
                   help="a process kill falls this many seconds at most into an iteration (0: the unkilled "
                        "run's seconds per iteration)")
    p.add_argument("--sft-runs", type=int, default=3)
    p.add_argument("--sft-kills", type=int, default=3)
    p.add_argument("--sft-steps", type=int, default=150)
    p.add_argument("--sft-kill-window", type=float, default=0.0,
                   help="faults fall in this many seconds after the workers start (0: 90%% of the unkilled run's)")
    p.add_argument("--scaling-rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="few kills, short runs; result to the smoke directory")
    args = p.parse_args()
    bench_env()
    if args.smoke:
        args.ppo_runs, args.ppo_kills, args.ppo_iterations = 1, 2, 4
        args.sft_runs, args.sft_kills, args.sft_steps = 1, 1, 40
        args.scaling_rounds = 1
    run = Run()
    ensure_data(args.data)
    ensure_sft(args.data, args.sft, epochs=1, max_steps=200)
    for name in ("data", "sft", "reward"):
        run.add_input(name, None if getattr(args, name) == "rule" else getattr(args, name))
    K, H = sft_prompt(args.sft)
    rng = random.Random(args.seed)

    print("[bench] PPO, unkilled reference", flush=True)
    ppo_ref = ppo_run(args, K, H, 0, rng)
    print("[bench] PPO, unkilled again (the run-to-run noise floor)", flush=True)
    ppo_noise = compare_ppo(ppo_run(args, K, H, 0, rng), ppo_ref)
    args.ppo_kill_window = args.ppo_kill_window or (ppo_ref["loop_s"] or 10.0) / max(1, args.ppo_iterations - 1)
    ppo_runs = []
    for i in range(args.ppo_runs):
        print(f"[bench] PPO run {i + 1}/{args.ppo_runs} with {args.ppo_kills} faults", flush=True)
        r = ppo_run(args, K, H, args.ppo_kills, rng)
        r["vs_unkilled_max_abs_diff"] = compare_ppo(r, ppo_ref)
        print(f"[bench]   survived {r['survived']}, kills {r['kills']}, restarts {len(r['restarts'])}, "
              f"diff {r['vs_unkilled_max_abs_diff']}", flush=True)
        ppo_runs.append(r)
    print("[bench] SFT (Ray Train), unkilled reference", flush=True)
    sft_ref = sft_run(args, 0, rng)
    print("[bench] SFT, unkilled again (the run-to-run noise floor)", flush=True)
    sft_again = sft_run(args, 0, rng)
    sft_noise = {k: None if sft_again["final"][k] is None or sft_ref["final"][k] is None
                 else abs(sft_again["final"][k] - sft_ref["final"][k]) for k in sft_ref["final"]}
    args.sft_kill_window = args.sft_kill_window or 0.9 * (sft_ref["loop_s"] or 5.0)
    sft_runs = []
    for i in range(args.sft_runs):
        print(f"[bench] SFT run {i + 1}/{args.sft_runs} with {args.sft_kills} faults", flush=True)
        r = sft_run(args, args.sft_kills, rng)
        r["vs_unkilled"] = {k: (None if r["final"][k] is None or sft_ref["final"][k] is None
                                else r["final"][k] - sft_ref["final"][k]) for k in r["final"]}
        print(f"[bench]   survived {r['survived']}, kills {r['kills']}, final {r['final']}", flush=True)
        sft_runs.append(r)

    scaling: dict[int, list[dict]] = {n: [] for n in LAYOUTS}
    for rnd in range(args.scaling_rounds):
        for n in LAYOUTS:
            print(f"[bench] scaling round {rnd + 1}: {n} node(s)", flush=True)
            r = ppo_run(args, K, H, 0, rng, nodes=LAYOUTS[n])
            scaling[n].append({"pages_per_s": r["pages_per_s"], "phases_s": r["phases_s"], "wall_s": r["wall_s"]})
    base = statistics.median(x["pages_per_s"] for x in scaling[1])
    scale_rows = [{"nodes": n, "pages_per_s": statistics.median(x["pages_per_s"] for x in xs),
                   "efficiency": statistics.median(x["pages_per_s"] for x in xs) / base,
                   "rounds": [x["pages_per_s"] for x in xs]} for n, xs in scaling.items()]

    everything = ppo_runs + sft_runs
    summary = {
        "faults_injected": sum(len(r["kills"]) for r in everything),
        "kills_landed": landed(everything),
        "node_losses": sum(1 for r in ppo_runs for k in r["kills"] if k["kind"] == "node"),
        "runs": len(everything), "runs_survived": sum(r["survived"] for r in everything),
        "ppo_restarts": sum(len(r["restarts"]) for r in ppo_runs),
        "ppo_iterations_recomputed": sum(x.get("recomputed", 0) for r in ppo_runs for x in r["restarts"]),
        "corrupt_checkpoints": sum(len(r["corrupt"]) for r in everything),
        "ppo_max_abs_diff_vs_unkilled": {k: max((r["vs_unkilled_max_abs_diff"][k] or 0.0) for r in ppo_runs)
                                         for k in COMPARED} if ppo_runs else {},
        "sft_max_abs_diff_vs_unkilled": {k: max(abs(r["vs_unkilled"][k] or 0.0) for r in sft_runs)
                                         for k in sft_ref["final"]} if sft_runs else {},
        "noise_floor": {"ppo_unkilled_twice_max_abs_diff": ppo_noise, "sft_unkilled_twice_abs_diff": sft_noise},
    }
    print(table([summary], ["faults_injected", "kills_landed", "node_losses", "runs", "runs_survived",
                            "ppo_restarts", "ppo_iterations_recomputed", "corrupt_checkpoints"]))
    print(table(scale_rows, ["nodes", "pages_per_s", "efficiency"], "{:.3f}"))
    for r in ppo_runs:
        r.pop("history")
    ppo_ref.pop("history")
    path = run.write("fault_injection", {
        "what": "faults at random times over PPO and SFT (Ray Train) runs on a simulated 3-node cluster; "
                "PPO pages/s on 1, 2 and 3 simulated nodes",
        "smoke": args.smoke,
        "settings": {k: v for k, v in vars(args).items()},
        "cores_note": "all simulated nodes share this machine's cores; the scaling runs offer the same 3 logical "
                      "CPUs in all, so efficiency = the cost of distribution, not a speedup",
        "summary": summary, "scaling": scale_rows,
        "ppo": {"unkilled": ppo_ref, "runs": ppo_runs}, "sft": {"unkilled": sft_ref, "runs": sft_runs}},
        results_dir=results_dir(args.smoke))
    print(f"[bench] wrote {path}")


if __name__ == "__main__":
    main()
