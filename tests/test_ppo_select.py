"""Which policy PPO exports (``ppo.select``, ``ppo.hack_stop``): the keeper's rules, and on real
Ray actors that the exported weights are those of the kept validation, through a preemption and
resume (the kept weights travel in the resumable state), and that a monitor-stopped run exports
the last policy the monitor did not flag.

The orchestrator runs for real (actors, DeepSpeed engines, validation on a rollout actor); the
test only scripts the validation figure the choice is made on (and, for the stop, the monitor's
verdict), so which validation must be kept is known in advance.
"""
import math

import pytest
import torch

from actors.selection import Keeper
from rlhf_ray.config import ConfigError, PPOConfig
from test_ppo_common import ppo_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

KEY = "val/page_ndcg@10"


def _keeper(select="best", holds=True):
    return Keeper(select=select, metric=KEY, holds_weights=holds)


def test_best_keeps_the_highest_unflagged_validation_and_the_earlier_of_ties():
    k = _keeper()
    assert k.offer(0, {KEY: 0.10})
    assert k.offer(5, {KEY: 0.12})
    assert not k.offer(10, {KEY: 0.12})  # a tie keeps the earlier
    assert not k.offer(15, {KEY: 0.30}, flagged=True)  # flagged by the monitor: never kept
    assert not k.offer(20, {KEY: float("nan")})
    assert not k.offer(25, {})
    assert (k.iteration, k.value, k.offered, k.refused) == (5, 0.12, 6, 1)
    assert k.exports_kept(25, stopped_by_monitor=False)
    assert not k.exports_kept(5, stopped_by_monitor=False)  # the kept one is the final one
    assert Keeper.from_state(k.state_dict()) == k


def test_last_keeps_the_newest_unflagged_and_exports_it_only_on_a_monitor_stop():
    k = _keeper("last")
    for it, v in ((0, 0.2), (5, 0.1)):
        assert k.offer(it, {KEY: v})
    assert not k.offer(10, {KEY: 0.3}, flagged=True)
    assert k.iteration == 5
    assert not k.exports_kept(10, stopped_by_monitor=False)
    assert k.exports_kept(10, stopped_by_monitor=True)


def test_keeper_holds_weights_only_when_the_export_may_differ():
    base = {"eval_every": 5}
    assert not Keeper.for_config(PPOConfig.from_dict(base)).holds_weights  # select last, no hack_stop
    assert Keeper.for_config(PPOConfig.from_dict({**base, "select": "best"})).holds_weights
    assert Keeper.for_config(PPOConfig.from_dict({**base, "hack_stop": True})).holds_weights
    assert not Keeper.for_config(PPOConfig.from_dict({"eval_every": 0, "hack_stop": True})).holds_weights
    assert Keeper.for_config(PPOConfig.from_dict({**base, "select_metric": "ndcg@10"})).metric == "val/ndcg@10"


def test_select_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="select.*eval_every"):
        PPOConfig.from_dict({"select": "best", "eval_every": 0})
    with pytest.raises(ConfigError, match="select_metric"):
        PPOConfig.from_dict({"select_metric": "hr@10"})


# -- on real actors -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    from rlhf_ray.rayutil import init_ray

    ray = init_ray(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


def _scripted(script: dict, weights: dict):
    """A PPOOrchestrator class whose validations carry ``script[iteration]`` as the selection
    figure (the real validation still runs) and record the policy's weights at each one in
    ``weights[iteration]``."""
    from actors.orchestrator import PPOOrchestrator

    class Scripted(PPOOrchestrator):
        def validate(self, iteration):
            v = super().validate(iteration)
            v[KEY] = script[iteration]
            weights[iteration] = self.policy.call("state_dict")[0]
            return v

    return Scripted


def _exported(path) -> dict:
    from rlhf_ray.checkpoint import load_checkpoint

    return load_checkpoint(path).model.state_dict()


def _same(a: dict, b: dict) -> bool:
    keys = [k for k in b if k in a]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.mark.slow  # two PPO runs (a minute); the default suite keeps the monitor-stop export below
def test_select_best_exports_the_kept_policy_through_a_resume(ray_local, tiny_sft, synth_data, tmp_path):
    cfg = ppo_config(iterations=3, eval_every=1, save_every=1, keep_states=1, select="best")
    script = {0: 0.10, 1: 0.50, 2: 0.20, 3: 0.30}  # iteration 1 is the best
    weights: dict = {}
    out = tmp_path / "ppo"
    cls = _scripted(script, weights)
    part = cls(cfg, str(tiny_sft), "rule", str(synth_data), str(out), log=lambda s: None).run(stop_after=2)
    assert "checkpoint" not in part
    state = tmp_path / "ppo.state"
    assert (state / "iter_000002" / "kept" / "weights.pt").is_file()  # the kept policy rides in the state
    assert not (state / "iter_000001").exists()  # keep_states=1: only the newest state is left
    logs: list[str] = []
    final = cls(cfg, str(tiny_sft), "rule", str(synth_data), str(out), log=logs.append).run(resume=True)
    assert final["iterations"] == 3 and final["select/iteration"] == 1
    assert final[KEY] == pytest.approx(0.50)  # the validation reported is the exported policy's
    got = _exported(final["checkpoint"])
    assert _same(got, weights[1]) and not _same(got, weights[3])
    assert any("validated after 1 iterations" in m for m in logs)


def test_hack_stop_exports_the_last_unflagged_policy_not_the_flagged_one(ray_local, tiny_sft, synth_data, tmp_path):
    cfg = ppo_config(iterations=4, eval_every=1, hack_stop=True)
    weights: dict = {}
    o = _scripted({i: 0.1 for i in range(5)}, weights)(
        cfg, str(tiny_sft), "rule", str(synth_data), str(tmp_path / "ppo"), log=lambda s: None)
    # the monitor's verdict is scripted (its rules are tested in test_ppo_experience): a flag at iteration 2
    o.monitor.observe_validation = lambda it, v, users=None: ({"reward_gain": 1.0, "metric": KEY, "drop": 0.5,
                                                               "baseline": 0.1, "now": 0.05} if it == 2 else None)
    final = o.run()
    assert final["stopped"].startswith("reward-hacking monitor at iteration 2") and final["iterations"] == 2
    assert final["select/iteration"] == 1
    got = _exported(final["checkpoint"])
    assert _same(got, weights[1]) and not _same(got, weights[2])
    assert math.isfinite(final["val/ndcg@10"])
