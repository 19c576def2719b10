"""A model is trained, scored and served on one prompt: a stage that continues a checkpoint
trained on the page prompt must keep its history length (rlhf_ray.stages.common.check_history)."""
from __future__ import annotations

import json

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config import ConfigError, LPOConfig, PretrainConfig, RewardConfig, SFTConfig
from rlhf_ray.stages import lpo
from rlhf_ray.stages.common import check_history

TRAIN = {"epochs": 1, "max_steps": 1, "batch_size": 16, "progress": False, "tensorboard": False, "eval_users": 10}


def test_check_history_refuses_another_length_of_a_page_trained_checkpoint():
    sft_manifest = {"stage": "sft", "prompt": {"max_history": 20, "page_size": 10, "exclude_seen": True}}
    check_history(sft_manifest, LPOConfig.from_dict({"max_history": 20}), "runs/sft")  # the same: fine
    with pytest.raises(ConfigError, match=r"max_history: 50, but checkpoint runs/sft was trained on prompts of 20"):
        check_history(sft_manifest, LPOConfig(), "runs/sft")
    with pytest.raises(ConfigError, match="max_history"):
        check_history(sft_manifest, RewardConfig.from_dict({"max_history": 30}), "runs/sft")
    # pre-training has no page prompt: SFT from it chooses its own length
    check_history({"stage": "pretrain", "config": {"max_history": 20}}, SFTConfig(), "runs/pretrain")
    check_history(None, SFTConfig(), "fresh")
    check_history(sft_manifest, PretrainConfig(), "runs/sft")  # not a page-prompt stage
    # a checkpoint from before manifests recorded "prompt": its stage config's length counts
    legacy = {"stage": "reward", "config": {"max_history": 20}}
    with pytest.raises(ConfigError, match="trained on prompts of 20"):
        check_history(legacy, LPOConfig(), "runs/reward")


def test_prompt_of_reads_a_page_prompt_never_the_rating_prompt():
    from rlhf_ray.checkpoint import generation_for, prompt_of

    assert prompt_of({"stage": "sft", "prompt": {"max_history": 20, "page_size": 10}})["max_history"] == 20
    assert prompt_of({"stage": "lpo", "config": {"max_history": 30}})["max_history"] == 30  # legacy manifest
    # pre-training's max_history is the rating prompt's: a page prompt of it is the default length
    assert prompt_of({"stage": "pretrain", "config": {"max_history": 20}})["max_history"] == 50
    assert generation_for({"stage": "pretrain", "config": {"max_history": 20}}, page_size=20).max_history == 50


def test_lpo_from_a_20_item_sft_with_50_items_fails_before_training(tiny_sft, synth_data, tmp_path):
    out = tmp_path / "lpo"
    with pytest.raises(ConfigError, match="max_history: 50.*20 history items"):
        lpo.run(LPOConfig.from_dict({"n_negatives": 4, "train": TRAIN}), str(synth_data), str(out), init=str(tiny_sft))
    assert not out.exists() and not list(tmp_path.glob("lpo*"))  # nothing written
    metrics = lpo.run(LPOConfig.from_dict({"max_history": 20, "n_negatives": 4, "train": TRAIN}), str(synth_data),
                      str(out), init=str(tiny_sft))
    assert json.loads((out / "manifest.json").read_text())["prompt"]["max_history"] == 20 and "checkpoint" in metrics


def test_cli_names_the_field_and_both_lengths(tiny_sft, synth_data, tmp_path, capsys):
    rc = main(["lpo", "--sft", str(tiny_sft), "--data", str(synth_data), "--out", str(tmp_path / "lpo"),
               "--max-history", "30", "--train.max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "max_history: 30" in err and "20 history items" in err, err


def test_ppo_checks_the_policy_and_reward_before_any_actor_starts(tiny_sft, synth_data, tmp_path, capsys):
    out = tmp_path / "ppo"
    rc = main(["ppo", "--sft", str(tiny_sft), "--reward", "rule", "--data", str(synth_data), "--out", str(out),
               "--max-history", "50", "--iterations", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "max_history: 50" in err and "20 history items" in err, err
    assert not out.exists()


def test_launch_checks_on_the_driver_before_a_worker_group(tiny_sft, synth_data, tmp_path, monkeypatch):
    """With train.num_workers > 0 the stage runs on Ray Train workers, where the error would come
    back wrapped (and be retried max_failures times): launch refuses on the driver first."""
    import rlhf_ray.rayutil
    from rlhf_ray.stages.launch import launch

    def no_cluster(*a, **k):
        raise AssertionError("a Ray cluster was started for a run that should have been refused")

    monkeypatch.setattr(rlhf_ray.rayutil, "init_ray", no_cluster)
    cfg = LPOConfig.from_dict({"n_negatives": 4, "train": {**TRAIN, "num_workers": 2}})
    with pytest.raises(ConfigError, match="max_history: 50.*20 history items"):
        launch("lpo", cfg, str(synth_data), str(tmp_path / "lpo"), init=str(tiny_sft))
    assert not (tmp_path / "lpo").exists()


def test_launch_checks_a_rewards_policy_checkpoint_and_a_truncated_manifest(tiny_sft, synth_data, tmp_path,
                                                                             monkeypatch):
    """The reward stage's policy_checkpoint is checked on the driver too; a manifest that is not
    JSON is left to the stage's own load (which names the broken checkpoint), never a raw
    JSONDecodeError from the history check."""
    import shutil

    import rlhf_ray.rayutil
    from rlhf_ray.errors import UserError
    from rlhf_ray.stages.launch import launch

    def no_cluster(*a, **k):
        raise AssertionError("a Ray cluster was started for a run that should have been refused")

    monkeypatch.setattr(rlhf_ray.rayutil, "init_ray", no_cluster)
    cfg = RewardConfig.from_dict({"max_history": 50, "policy_checkpoint": str(tiny_sft),
                                  "train": {**TRAIN, "num_workers": 2}})
    with pytest.raises(ConfigError, match=f"checkpoint {tiny_sft} was trained on prompts of 20"):
        launch("reward", cfg, str(synth_data), str(tmp_path / "rm"), init=None)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sft, broken)
    (broken / "manifest.json").write_text('{"stage": "sft", "prom')
    cfg = LPOConfig.from_dict({"max_history": 20, "n_negatives": 4, "train": TRAIN})
    with pytest.raises(UserError, match="broken"):
        launch("lpo", cfg, str(synth_data), str(tmp_path / "lpo"), init=str(broken))
    for text in (b'{"stage": "\xff\xfe"}', b'["sft"]'):  # not UTF-8; JSON but not an object: the same
        (broken / "manifest.json").write_bytes(text)
        with pytest.raises(UserError, match="broken"):
            launch("lpo", cfg, str(synth_data), str(tmp_path / "lpo"), init=str(broken))
    assert not (tmp_path / "lpo").exists()
