"""Long PPO checks (minutes; `make test-slow`): ZeRO-1/3 two-rank policy groups stay in sync,
resume gives exactly the uninterrupted run, and the CLI end to end with a trained reward
model, exporting a policy that `rlhf-ray eval` loads."""
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_ppo_common import ppo_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def ray_local():
    from rlhf_ray.rayutil import init_ray

    ray = init_ray(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


def _experience(sft: Path, data: Path, B: int = 16, K: int = 5):
    """A real batch made in-process: the prompt batch, and an Experience of sampled pages of the
    SFT policy with seeded advantages."""
    from actors.experience import PromptBatch, RewardMix, assemble
    from actors.models import load_policy
    from rlhf_ray.config import GenerationConfig
    from rlhf_ray.generation import generate_pages
    from rlhf_ray.stages.common import open_data

    ck = load_policy(str(sft))
    train = open_data(data).histories("train")
    batch = PromptBatch.make(train.histories[:B], torch.as_tensor(train.user_idx[:B]), ck.vocab, 20)
    g = torch.Generator().manual_seed(0)
    pages = generate_pages(ck.model.eval(), ck.vocab, batch.prompts(ck.vocab),
                           GenerationConfig(page_size=K, strategy="sample"), g)
    items = torch.randn(B, K, generator=g)
    return batch, assemble(pages.items, pages.logprobs, pages.logprobs.clone(), torch.zeros(B, K),
                           torch.randn(B, generator=g), items, torch.zeros(B), mix=RewardMix(0.5, 0.5), kl_coef=0.1)


@pytest.mark.parametrize("zero", [1, 3])
def test_two_rank_policy_group_stays_in_sync(ray_local, tiny_sft, synth_data, zero):
    from actors.group import ModelGroup
    from actors.policy import PolicyActor
    from rlhf_ray.config import PPOPolicyConfig

    cfg = PPOPolicyConfig.from_dict({"ranks": 2, "train": {"zero_stage": zero, "batch_size": 8, "lr": 1e-3}})
    batch, exp = _experience(tiny_sft, synth_data)
    group = ModelGroup(PolicyActor, "policy", 2, num_cpus=0.5)
    try:
        group.call("setup", str(tiny_sft), cfg, 8)
        before = group.call("checksums")
        stats = group.get(group.run_sharded("train", batch, exp, epochs=2, seed=0))
        assert stats[0]["steps"] == stats[1]["steps"] == 4
        after = group.call("checksums")
        assert after[0] == after[1], f"ZeRO-{zero} ranks diverged"
        assert after[0] != before[0]
        state = group.call("state_dict")[0]  # consolidated on rank 0 (a gather under ZeRO-3)
        for name, sha in after[0].items():
            if name in state:
                assert hashlib.sha256(state[name].float().contiguous().numpy().tobytes()).hexdigest() == sha
    finally:
        group.kill()


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def _assert_same_history(a: list, b: list, tol: float = 1e-6) -> None:
    """Per-iteration metrics equal to ``tol`` (timings aside; NaN equals NaN)."""
    assert len(a) == len(b)
    for ma, mb in zip(a, b):
        timing = lambda k: k.startswith(("time/", "perf/")) or "/time_" in k  # noqa: E731  (e.g. critic/time_forward_s)
        keys = {k for k in ma if not timing(k)}
        assert keys == {k for k in mb if not timing(k)}
        for k in keys:
            x, y = float(ma[k]), float(mb[k])
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol, (ma.get("iteration"), k, x, y)


def test_resume_equals_uninterrupted_run(ray_local, tiny_sft, synth_data, tmp_path):
    from actors.orchestrator import PPOOrchestrator
    from actors.state import iter_name
    from rlhf_ray.errors import UserError

    cfg = ppo_config(iterations=4, save_every=1, eval_every=2, adaptive_kl=True, kl_target=0.01, kl_horizon=16,
                     policy={"ranks": 2, "train": {"zero_stage": 2}})

    def orch(out: Path) -> PPOOrchestrator:
        return PPOOrchestrator(cfg, str(tiny_sft), "rule", str(synth_data), str(out), log=lambda s: None)

    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    straight = orch(straight_dir)
    final_a = straight.run()
    first = orch(split_dir)
    part = first.run(stop_after=2)  # preempted after 2 iterations: a state, no export
    assert "checkpoint" not in part and part["iterations"] == 2
    state = split_dir.with_name("split.state")
    assert (state / "latest").read_text() == iter_name(2)
    # leftovers of a crash while writing iteration 3 are never taken for a complete state
    (state / f".{iter_name(3)}.tmp-999-dead").mkdir()
    (state / iter_name(3) / "policy").mkdir(parents=True)  # no controller.json
    with pytest.raises(UserError, match="--resume"):
        orch(split_dir).run()
    resumed = orch(split_dir)
    final_b = resumed.run(resume=True)
    assert final_b["iterations"] == final_a["iterations"] == 4
    wa, wb = _weights(straight_dir), _weights(split_dir)
    assert wa.keys() == wb.keys()
    # bit-exact on CPU (gloo, one thread per rank); a lost KL-controller state alone shows up here
    assert all(torch.equal(wa[k], wb[k]) for k in wa), max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    _assert_same_history(straight.history, resumed.history, tol=0.0)
    _assert_same_history(straight.validations, resumed.validations, tol=0.0)
    assert straight.kl_ctl.value == pytest.approx(resumed.kl_ctl.value, abs=1e-12)


def test_auto_resume_continues_its_own_config_and_sets_another_configs_state_aside(ray_local, tiny_sft, synth_data,
                                                                                   tmp_path):
    """The pipeline's and sweep trials' resume="auto": a state saved with the same config is
    continued; one saved with another config (the stage's config changed) is moved aside, never
    deleted, and the run starts over instead of failing."""
    from actors.orchestrator import PPOOrchestrator

    cfg = ppo_config(iterations=2, save_every=1, eval_every=0)
    out = tmp_path / "ppo"
    logs: list[str] = []

    def orch(c) -> PPOOrchestrator:
        return PPOOrchestrator(c, str(tiny_sft), "rule", str(synth_data), str(out), log=logs.append)

    assert orch(cfg).run(stop_after=1)["iterations"] == 1
    done = orch(cfg).run(resume="auto")
    assert done["iterations"] == 2 and any("resumed from" in m for m in logs)
    assert not list(tmp_path.glob("ppo.state.stale-*"))
    logs.clear()
    other = orch(cfg.replace(kl_coef=cfg.kl_coef * 2)).run(resume="auto")
    stale = list(tmp_path.glob("ppo.state.stale-*"))
    assert len(stale) == 1 and (stale[0] / "latest").is_file()  # kept, not deleted
    assert other["iterations"] == 2 and any("saved with another config (kl_coef)" in m for m in logs)
    assert not any("resumed from" in m for m in logs)


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_ray.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_ppo_with_reward_model_then_eval(tiny_sft, synth_data, tmp_path):
    reward = tmp_path / "reward"
    r = _cli("reward", "--sft", str(tiny_sft), "--data", str(synth_data), "--out", str(reward), "--max-history", "20",
             "--train.max-steps", "3", "--train.batch-size", "8", "--no-train.progress", "--no-train.tensorboard",
             "--norm-pairs", "16", "--pairs.page-size", "5", "--pairs.min-page", "3", "--alpha", "0.3")
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "ppo"
    ppo = ["ppo", "--sft", str(tiny_sft), "--reward", str(reward), "--data", str(synth_data), "--out", str(out),
           "--num-cpus", "2", "--page-size", "5", "--max-history", "20", "--iterations", "2",
           "--rollout-batch-size", "16", "--policy.train.batch-size", "8", "--critic.train.batch-size", "8",
           "--eval-every", "1", "--eval-users", "20", "--reward.alpha", "0.7", "--json"]
    r = _cli(*ppo)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads(r.stdout[r.stdout.rindex("\n{\n") + 1:])  # the logs come first
    assert metrics["iterations"] == 2 and Path(metrics["checkpoint"]) == out.resolve()
    assert "val/ndcg@10" in metrics and "reward ModelReward {'page_coef': 0.7" in r.stdout
    lines = [json.loads(x) for x in (tmp_path / "ppo.logs" / "metrics.jsonl").read_text().splitlines()]
    assert sum("reward/total" in x for x in lines) == 2 and sum("val/ndcg@10" in x for x in lines) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "ppo" and manifest["config"]["reward"]["alpha"] == 0.7
    r = _cli("eval", "--checkpoint", str(out), "--data", str(synth_data), "--max-users", "20",
             "--page-size", "5", "--max-history", "20", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["stage"] == "ppo"
    # a second run into the same directory without --resume is refused with one clear line
    r = _cli(*ppo)
    assert r.returncode == 2 and "--resume" in r.stderr
