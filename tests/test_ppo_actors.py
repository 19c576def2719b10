"""PPO on real Ray actors and real DeepSpeed: one colocated set of roles (policy = 2 ranks
ZeRO-2, critic, reference, rule reward, rollout) started once for the module.

Checks: KL is zero and recorded log-probs equal recomputed ones while policy == reference;
token rewards of a real batch add up; a full iteration trains policy and critic and keeps
the two ZeRO-2 ranks identical; the driver fetches no tensor and puts only the batch's
description (its ledger); weight sync reaches the rollout actor; validation and
export; a killed actor's error names its role and rank, also when recovery has no restart left,
and with a restart left the lost group comes back inside the shared placement group and trains.
"""
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from test_ppo_common import ppo_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@contextmanager
def _no_timer(_phase):
    yield


@pytest.fixture(scope="module")
def ray_local():
    from rlhf_ray.rayutil import init_ray

    ray = init_ray(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def orch(ray_local, tiny_sft, synth_data, tmp_path_factory):
    from actors.orchestrator import PPOOrchestrator

    # ptx on: the policy's loss carries SFT's next-item and page terms too (PPO-ptx; the page term on the
    # prompts' 3 held-out interactions), through ZeRO-2 on 2 ranks
    cfg = ppo_config(holdout=3, policy={"ranks": 2, "ptx_coef": 0.5, "ptx_page_coef": 0.5,
                                        "train": {"batch_size": 8, "zero_stage": 2, "lr": 1e-3}})
    o = PPOOrchestrator(cfg, str(tiny_sft), "rule", str(synth_data), str(tmp_path_factory.mktemp("ppo")),
                        log=lambda s: None)
    o.start()
    yield o
    o.shutdown()


def test_first_batch_kl_zero_and_logprobs_agree(orch):
    import ray

    from actors.experience import experience_stats

    prompts, shared, stats = orch.make_experience(0, _no_timer)
    batch, exp = ray.get(prompts.refs[0]), ray.get(shared.refs[0])  # fetched by the test, not the controller
    stats.pop("time/assemble_s")
    assert stats == experience_stats(exp)  # the advantage task's scalars describe the Experience it left
    B, K = exp.pages.shape
    assert (B, K) == (orch.cfg.rollout_batch_size, orch.cfg.page_size)
    assert bool(exp.mask.all())
    for hist, page in zip(batch.histories, exp.pages.tolist()):
        assert len(set(page)) == K and not set(page) & set(hist)  # distinct, never seen
    # PPO-ptx's page targets: the users' held-out pages, row for row (never in the prompt)
    assert batch.targets == [orch.ptx_pages[i] for i in orch.batch_users(0)]
    assert sum(map(bool, batch.targets)) > 0 and not any(set(t) & set(h) for t, h in zip(batch.targets,
                                                                                         batch.histories))
    # policy == reference at the start: the per-slot KL vanishes
    assert float(exp.kl.abs().max()) < 1e-5
    # the rollout's recorded log-probs are what the policy group recomputes
    recomputed = torch.cat(ray.get(orch.policy.run_sharded("logprobs", prompts, exp.pages)))
    assert torch.allclose(recomputed, exp.logprobs, atol=1e-5)
    # token rewards: the KL-free part adds up to the reward function's total
    kl_part = orch.kl_ctl.value * exp.kl.sum(-1)
    assert torch.allclose(exp.rewards.sum(-1) + kl_part, exp.total_reward, atol=1e-5)
    assert float(exp.advantages[exp.mask].mean()) == pytest.approx(0.0, abs=1e-5)  # whitened


def test_rollout_shortlist_reaches_reference_and_policy(orch):
    """``ppo.rollout.shortlist``: pages sampled among each prompt's first-slot top M; the reference's
    KL and the policy's recomputed log-probs use the same restricted distribution (runs before any
    training step: policy, reference and rollout still hold the same weights)."""
    import ray

    from rlhf_ray.config import GenerationConfig

    c, m = orch.cfg, 12
    gen = GenerationConfig(**c.prompt.to_dict(), strategy="sample", temperature=c.rollout.temperature, shortlist=m)
    ray.get(orch.rollout.run_all("setup", orch.sft, gen, c.seed))
    try:
        prompts, shared, _ = orch.make_experience(0, _no_timer)
        exp = ray.get(shared.refs[0])
        assert exp.shortlist is not None and exp.shortlist.shape == (c.rollout_batch_size, m)
        for page, allowed in zip(exp.pages.tolist(), exp.shortlist.tolist()):
            assert set(page) <= set(allowed)
        assert float(exp.kl.abs().max()) < 1e-5  # the reference restricted to the same shortlist
        recomputed = torch.cat(ray.get(orch.policy.run_sharded("logprobs", prompts, exp.pages, exp.shortlist)))
        assert torch.allclose(recomputed, exp.logprobs, atol=1e-5)
        whole = torch.cat(ray.get(orch.policy.run_sharded("logprobs", prompts, exp.pages)))
        assert bool((whole < exp.logprobs - 1e-3).any())  # over all items the same pages are less likely
    finally:
        plain = GenerationConfig(**c.prompt.to_dict(), strategy="sample", temperature=c.rollout.temperature)
        ray.get(orch.rollout.run_all("setup", orch.sft, plain, c.seed))


def test_full_iteration_trains_and_zero2_ranks_stay_in_sync(orch):
    before_p = orch.policy.call("checksums")
    before_c = orch.critic.call("checksums")
    m = orch.iteration(0)
    for k in ("reward/total", "kl/per_page", "policy/policy_loss", "policy/entropy", "critic/value_loss",
              "policy/grad_norm", "perf/pages_per_s", "policy/ptx_nll", "policy/ptx_page_nll"):
        assert math.isfinite(m[k]), k
    assert m["policy/ptx_nll"] > 0 and m["policy/ptx_page_nll"] > 0
    assert m["policy/steps"] == orch.cfg.ppo_epochs * orch.cfg.rollout_batch_size // orch.cfg.policy.train.batch_size
    after_p = orch.policy.call("checksums")
    after_c = orch.critic.call("checksums")
    assert after_p[0] == after_p[1], "ZeRO-2 ranks diverged"
    assert after_p[0] != before_p[0] and after_c[0] != before_c[0], "a PPO step changed nothing"
    changed = [n for n in after_p[0] if after_p[0][n] != before_p[0][n]]
    assert any("wte" in n for n in changed)  # the item embeddings learn
    # the consolidated state (what rollouts load and export writes) is the ranks' weights
    state = orch.policy.call("state_dict")
    assert state[1] is None
    named = dict(orch.policy.call("checksums")[0])
    import hashlib

    for name, tensor in state[0].items():
        if name in named:
            assert hashlib.sha256(tensor.float().contiguous().numpy().tobytes()).hexdigest() == named[name], name


def test_driver_fetches_no_tensor_and_puts_no_catalogue_mask(orch):
    """The controller's ledger over one iteration with a weight sync (the policy changed): the driver
    fetched scalars only (stats, acknowledgements: no (B, K) answer, no Experience, no weights) and
    put one object, the batch's description, whose only tensor is the (B,) user ids; the (B, N)
    seen-item mask and the prompt tokens were built by the roles."""
    B, N = orch.cfg.rollout_batch_size, orch.vocab.n_items
    assert orch._dirty
    m = orch.iteration(1)
    relay = orch.relay
    assert relay.shapes("get") == [], relay.tensors
    assert relay.shapes("put") == [(B,)], relay.tensors
    assert relay.put_objects == 1 and relay.get_objects >= 4  # publish, load, experience stats, training stats
    assert m["perf/driver_get_bytes"] == relay.get_bytes > 0 and m["perf/driver_put_bytes"] == relay.put_bytes > 0
    weights = sum(p.numel() * 4 for p in orch.policy.call("state_dict")[0].values())  # what a relayed sync would cost
    assert relay.get_bytes < min(16 * 1024, weights / 4), relay
    assert N not in {d for _, s, _ in relay.tensors for d in s}
    assert math.isfinite(m["reward/total"]) and m["time/assemble_s"] >= 0.0


def test_advantage_actor_lives_across_iterations(orch):
    """The advantage step runs in one long-lived process (a fresh task worker per iteration
    re-imported torch every time); a lost actor is replaced on the next call."""
    import ray

    orch.iteration(2)
    actor = orch.advantage.actor
    pid = ray.get(actor.pid.remote())
    orch.iteration(3)
    assert orch.advantage.actor is actor and ray.get(actor.pid.remote()) == pid
    ray.kill(actor)
    m = orch.iteration(4)  # the dead actor is noticed and replaced; the step is redone
    assert orch.advantage.actor is not actor and math.isfinite(m["reward/total"])


def test_weight_sync_reaches_rollouts(orch):
    import ray

    assert orch._dirty
    prompts, shared, _ = orch.make_experience(2, _no_timer)  # syncs first
    exp = ray.get(shared.refs[0])
    assert not orch._dirty
    recomputed = torch.cat(ray.get(orch.policy.run_sharded("logprobs", prompts, exp.pages)))
    assert torch.allclose(recomputed, exp.logprobs, atol=1e-5)
    assert float(exp.kl.abs().max()) > 1e-4  # the trained policy has left the reference


def test_validation_and_export(orch, tmp_path):
    from rlhf_ray.checkpoint import load_checkpoint

    v = orch.validate(1)
    for k in ("val/ndcg@10", "val/recall@20", "val/tail_recall@20", "val/page_ild", "val/page_cat_entropy"):
        assert k in v and math.isfinite(v[k]), k
    assert "per_user" not in v  # the monitor's per-user values stay out of the logged validation
    assert sorted(orch.val_users) == ["val/ndcg@10", "val/page_ild"]
    for k, vals in orch.val_users.items():
        assert len(vals) == int(v["val/users"]) and math.isclose(float(np.nanmean(vals)), v[k], rel_tol=1e-6), k
    orch.out = tmp_path  # export into this test's directory
    path = orch.export({"val/ndcg@10": v["val/ndcg@10"]})
    ck = load_checkpoint(path)
    assert ck.stage == "ppo" and ck.manifest["parent"]["stage"] == "sft"
    state = orch.policy.call("state_dict")[0]
    loaded = ck.model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state if k in loaded)


def test_killed_actor_error_names_role_and_rank(orch):
    import ray

    from actors.group import ActorDied

    ray.kill(orch.policy.actors[1], no_restart=True)
    for _ in range(100):  # ray.kill is asynchronous: a call sent at once may still run before the kill lands
        if orch.policy.lost(timeout_s=5) is not None:
            break
    with pytest.raises(ActorDied, match=r"policy rank 1 \(node 127\.0\.0\.1.*\) died: .*ray.kill") as died:
        orch.sync_weights()
    # with no restart left, recovery stops the run with the same naming (role, rank, node, pid, cause)
    orch.recovery.max_restarts = 0
    with pytest.raises(ActorDied, match=r"policy rank 1 \(node 127\.0\.0\.1, pid \d+\) died: .*ray.kill.*"
                                        r"gave up after 0 restart\(s\): ppo.max_restarts = 0"):
        orch.recovery.recover(died.value, 3)
    with pytest.raises(ValueError, match="a bug"):  # anything but a lost actor is never retried
        orch.recovery.recover(ValueError("a bug"), 3)
    # with a restart left: the policy group is started again inside the shared (colocated) placement
    # group; with no state saved, policy and critic restart from SFT and the run goes back to its start
    orch.history, orch.validations = [], []
    orch.recovery.max_restarts = 1
    orch.recovery.mark_start(0)
    assert orch.recovery.recover(died.value, 3) == 0
    (r,) = orch.recovery.restarts
    assert r["roles"] == ["critic", "policy"] and r["recomputed"] == 3
    assert all(g.lost() is None for g in orch.groups.values())
    m = orch.iteration(0)
    assert math.isfinite(m["reward/total"])
    after = orch.policy.call("checksums")
    assert after[0] == after[1], "the restarted ZeRO-2 ranks diverged"
