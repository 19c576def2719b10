"""Multi-node Ray on one machine: a ``ray.cluster_utils.Cluster`` of 3 nodes on 127.0.0.1, each
with its own custom resource, so a config can put a role on a chosen node.

* PPO with its roles on three different nodes (node ids asserted), surviving the SIGKILL of
  one role's worker process: the controller restarts that role and continues from the last
  saved state, and the run finishes with every iteration.
* A Ray Train stage (SFT, 2 workers, STRICT_SPREAD) whose workers run on two different nodes,
  writing to a file:// storage URI (slow).
"""
import os
import signal

import pytest

from test_ppo_common import ppo_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NODES = [{"num_cpus": 1, "resources": {"head": 1}},
         {"num_cpus": 1, "resources": {"n1": 1, "trainer": 1}},
         {"num_cpus": 1, "resources": {"n2": 1, "trainer": 1}}]
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}


@pytest.fixture(scope="module")
def cluster3():
    from rlhf_ray.rayutil import simulated_cluster

    with simulated_cluster(NODES, FAST_NODE_DEATH) as c:
        yield c


def _pinned(**roles) -> dict:
    """PPO role sections putting each role on the node that offers its resource."""
    return {role: {"num_cpus": 0.2, "resources": {res: 0.1}} for role, res in roles.items()}


def test_ppo_roles_on_three_nodes_survive_a_killed_worker(cluster3, tiny_sft, synth_data, tmp_path):
    from actors.orchestrator import PPOOrchestrator
    from rlhf_ray.rayutil import node_of

    placed = _pinned(policy="n1", critic="n2", reference="head", reward="head", rollout="head")
    cfg = ppo_config(iterations=3, save_every=1, colocate=False, strategy="PACK", **{
        role: {**placed[role], **({"train": {"batch_size": 8, "lr": 1e-3}} if role in ("policy", "critic") else {})}
        for role in placed})
    out = tmp_path / "ppo"
    seen: dict = {}

    def log(line: str) -> None:
        if line.startswith("[ppo] state saved") and line.rstrip().endswith("iter_000002") and "critic" not in seen:
            # after iteration 2 is saved: where does everything run, then kill the critic's process
            seen.update({role: [g.node(r)["node_id"] for r in range(g.world)] for role, g in orch.groups.items()})
            seen["critic_pid"] = orch.critic.node(0)["pid"]
            os.kill(seen["critic_pid"], signal.SIGKILL)

    orch = PPOOrchestrator(cfg, str(tiny_sft), "rule", str(synth_data), str(out), log=log)
    final = orch.run()
    expected = {"policy": node_of("n1"), "critic": node_of("n2"), "reference": node_of("head"),
                "reward": node_of("head"), "rollout": node_of("head")}
    assert {role: seen[role] for role in expected} == {role: [n] for role, n in expected.items()}
    assert len(set(expected.values())) == 3
    # the kill was survived: the critic alone restarted (on its node), from the state of iteration 2
    assert final["restarts"] == 1 and final["iterations"] == 3
    (r,) = orch.recovery.restarts
    assert r["roles"] == ["critic"] and r["resumed_from"] == 2 and r["iteration"] == 3
    assert "critic rank 0" in r["cause"] and str(seen["critic_pid"]) in r["cause"]
    assert [m["iteration"] for m in orch.history] == [1, 2, 3]
    from rlhf_ray.checkpoint import verify_checkpoint

    assert verify_checkpoint(out)["stage"] == "ppo"


@pytest.mark.slow  # about a minute on 2 shared cores
def test_ray_train_stage_on_two_nodes_writes_to_a_storage_uri(cluster3, synth_data, tmp_path):
    import ray

    from rlhf_ray.checkpoint import verify_checkpoint
    from rlhf_ray.stages.launch import launch
    from tests.conftest import tiny_sft_config

    cfg = tiny_sft_config(num_workers=2, cpus_per_worker=0.5, placement_strategy="STRICT_SPREAD", max_steps=3,
                          batch_size=8)
    out = f"file://{tmp_path}/bucket/sft"
    metrics = launch("sft", cfg, str(synth_data), out)
    assert metrics["checkpoint"] == out and metrics["train/steps"] == 3
    assert verify_checkpoint(tmp_path / "bucket" / "sft")["stage"] == "sft"
    assert [metrics[f"dist/rank{r}/steps"] for r in (0, 1)] == [3, 3]
    recorded = verify_checkpoint(out)["metrics"]  # rank 0's final metrics, strings included
    nodes = {recorded[f"dist/rank{r}/node"] for r in (0, 1)}
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2 and nodes <= alive, nodes
