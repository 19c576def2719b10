"""A whole node lost mid-run (`make test-slow`): ``Cluster.remove_node`` kills a simulated node's
raylet and every process on it, as a crashed machine would.

* PPO: the node holding a trained role goes during iteration 3 of 4; the controller restarts
  the lost groups on the node that is left and continues from the state of iteration 2. The
  run finishes and every iteration's numbers equal those of an unkilled run with the same seed.
* Ray Train (SFT, 2 workers, ``train.max_failures: 1``): a worker's node goes mid-training;
  Ray Train starts the worker group again on the nodes that are left and the stage finishes.
"""
import threading
import time

import pytest

from test_ppo_common import ppo_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

NODES = [{"num_cpus": 1, "resources": {"head": 1}},
         {"num_cpus": 1, "resources": {"trainer": 1}},
         {"num_cpus": 1, "resources": {"trainer": 1}}]
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
COMPARED = ("reward/total", "kl/per_page", "policy/policy_loss", "critic/value_loss", "policy/grad_norm")


def _config():
    roles = {"policy": "trainer", "critic": "trainer", "reference": "head", "reward": "head", "rollout": "head"}
    sections = {role: {"num_cpus": 0.2, "resources": {res: 0.1}} for role, res in roles.items()}
    for role in ("policy", "critic"):
        sections[role]["train"] = {"batch_size": 8, "lr": 1e-3}
    return ppo_config(iterations=4, save_every=1, colocate=False, **sections)


def test_ppo_survives_a_lost_node_and_matches_an_unkilled_run(tiny_sft, synth_data, tmp_path):
    from actors.orchestrator import PPOOrchestrator
    from rlhf_ray.rayutil import simulated_cluster

    with simulated_cluster(NODES, FAST_NODE_DEATH) as (cluster, handles):
        ref = PPOOrchestrator(_config(), str(tiny_sft), "rule", str(synth_data), str(tmp_path / "ref"),
                              log=lambda s: None)
        ref.run()
        by_id = {h.node_id: h for h in handles}
        lost: dict = {}

        def log(line: str) -> None:
            if line.rstrip().endswith("iter_000002") and not lost:
                node = orch.critic.node(0)["node_id"]
                lost.update(node=node, before={r: g.node(0)["node_id"] for r, g in orch.groups.items()})
                cluster.remove_node(by_id[node], allow_graceful=False)

        orch = PPOOrchestrator(_config(), str(tiny_sft), "rule", str(synth_data), str(tmp_path / "ppo"), log=log)
        final = orch.run()
        after = {r: g.node(0)["node_id"] for r, g in orch.groups.items()}
    assert final["restarts"] == 1 and final["iterations"] == 4
    (r,) = orch.recovery.restarts
    assert r["resumed_from"] == 2 and "critic" in r["roles"]
    moved = [role for role, node in lost["before"].items() if node == lost["node"]]
    assert set(moved) <= set(r["roles"]) and lost["node"] not in after.values(), (lost, after)
    assert [m["iteration"] for m in orch.history] == [1, 2, 3, 4]
    for got, want in zip(orch.history, ref.history):
        for k in COMPARED:
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), (got["iteration"], k)


def test_ray_train_stage_survives_a_lost_node(synth_data, tmp_path):
    import ray
    from ray._private.state import available_resources_per_node

    from rlhf_ray.checkpoint import verify_checkpoint
    from rlhf_ray.rayutil import simulated_cluster
    from rlhf_ray.stages.launch import launch
    from tests.conftest import tiny_sft_config

    steps = 300
    cfg = tiny_sft_config(num_workers=2, cpus_per_worker=0.6, placement_strategy="STRICT_SPREAD", epochs=100,
                          max_steps=steps, batch_size=8, patience=0, eval_every=50, max_failures=1)
    with simulated_cluster([{"num_cpus": 1}] * 3, FAST_NODE_DEATH) as (cluster, handles):
        workers = {h.node_id: h for h in handles[1:]}
        killed: dict = {}

        def kill_a_busy_worker_node() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed:
                busy = [n for n, res in available_resources_per_node().items()
                        if n in workers and res.get("CPU", 1.0) < 0.5]
                if busy:
                    time.sleep(3.0)  # into training
                    killed["node"] = busy[0]
                    cluster.remove_node(workers[busy[0]], allow_graceful=False)
                time.sleep(0.2)

        killer = threading.Thread(target=kill_a_busy_worker_node, daemon=True)
        killer.start()
        out = tmp_path / "sft"
        metrics = launch("sft", cfg, str(synth_data), str(out))
        killer.join(timeout=10)
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert killed, "no worker node was found busy to kill"
    assert killed["node"] not in alive
    recorded = verify_checkpoint(out)["metrics"]
    assert metrics["train/steps"] == steps and recorded["train/steps"] == steps
    assert {recorded[f"dist/rank{r}/node"] for r in (0, 1)} <= alive  # the finishing group ran on live nodes
