"""Reusing a checkpoint recorded before a config field existed: the field counts as its legacy value."""
import dataclasses

from rlhf_ray.config import LPOConfig, PPOConfig, RewardConfig, SFTConfig


def _without(d: dict, *paths: str) -> dict:
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    for p in paths:
        head, _, rest = p.partition(".")
        if rest:
            d[head] = _without(d[head], rest)
        else:
            d.pop(head)
    return d


def test_fields_whose_default_keeps_the_old_behaviour_match_again():
    now = SFTConfig().to_dict()
    old = _without(now, "page_order", "page_window", "max_per_category", "sampled_softmax",
                   "sampled_softmax_sampler")
    assert old != now and SFTConfig.upgrade(old) == now
    assert LPOConfig.upgrade(_without(LPOConfig().to_dict(), "reweight")) == LPOConfig().to_dict()


def test_a_new_default_that_changes_behaviour_does_not_match():
    now = RewardConfig().to_dict()  # on-policy negatives on by default; before they did not exist
    up = RewardConfig.upgrade(_without(now, "policy_pages", "policy_temperature", "policy_checkpoint"))
    assert up["policy_pages"] == 0 != now["policy_pages"] and up != now
    assert up == RewardConfig(policy_pages=0).to_dict()  # ... but an explicit 0 today is that old run


def test_nested_fields_are_upgraded_and_unknown_ones_stay_missing():
    now = PPOConfig().to_dict()
    assert PPOConfig.upgrade(_without(now, "reward.diversity_weight")) == now
    assert PPOConfig.upgrade(_without(now, "policy.ptx_coef")) == now  # PPO-ptx off before it existed
    # its page term too: a run recorded before the term existed is a run with it off
    assert PPOConfig.upgrade(_without(now, "policy.ptx_page_coef", "policy.ptx_page_slots")) == now
    # a field with no legacy value: the recorded run is not known to match
    no_legacy = next(f.name for f in dataclasses.fields(PPOConfig) if "legacy" not in f.metadata)
    assert no_legacy not in PPOConfig.upgrade(_without(now, no_legacy))


def test_cosmetic_fields_do_not_decide_whether_a_stage_is_done(monkeypatch):
    """Progress bars and TensorBoard change what a run shows, not what it trains: a finished
    stage rerun with them switched off is still finished; a change that trains differently is not.
    (The checkpoint's files are not what this tests: its verified manifest is given.)"""
    import rlhf_ray.checkpoint
    from rlhf_ray.pipeline import stage_done

    quiet = {"train": {"progress": False, "tensorboard": False}}
    assert SFTConfig.outcome(SFTConfig.from_dict(quiet).to_dict()) == SFTConfig.outcome(SFTConfig().to_dict())
    assert PPOConfig.outcome(PPOConfig(tensorboard=False).to_dict()) == PPOConfig.outcome(PPOConfig().to_dict())
    assert "progress" not in SFTConfig.outcome(SFTConfig().to_dict())["train"]
    assert "lr" in SFTConfig.outcome(SFTConfig().to_dict())["train"]

    manifest = {"config": SFTConfig.from_dict(quiet).to_dict(), "data_fingerprint": "fp"}
    monkeypatch.setattr(rlhf_ray.checkpoint, "verify_checkpoint", lambda path: manifest)
    ckpt = "runs/sft"
    assert stage_done(ckpt, SFTConfig(), "fp", None, {})
    assert not stage_done(ckpt, SFTConfig.from_dict({"train": {"lr": 0.5}}), "fp", None, {})
    assert not stage_done(ckpt, SFTConfig(), "other data", None, {})
