"""LPO on a Ray Train worker group with DeepSpeed ZeRO-2 and a frozen reference (slow: ~1 min)."""
from __future__ import annotations

import pytest
import torch

from rlhf_ray.checkpoint import load_checkpoint, verify_checkpoint
from rlhf_ray.config import LPOConfig

pytestmark = pytest.mark.slow


def test_sdpo_on_two_ray_train_workers_with_zero2(tiny_sft, synth_data, tmp_path):
    from rlhf_ray.stages.launch import launch

    cfg = LPOConfig.from_dict({
        "loss": "sdpo", "n_negatives": 4, "max_history": 20,
        "train": {"epochs": 1, "max_steps": 3, "batch_size": 16, "num_workers": 2, "zero_stage": 2,
                  "cpus_per_worker": 0.5, "progress": False, "tensorboard": False},
    })
    out = tmp_path / "lpo-ray"
    metrics = launch("lpo", cfg, str(synth_data), str(out), init=str(tiny_sft))
    assert metrics["train/steps"] == 3 and "val/tail_ndcg@10" in metrics
    manifest = verify_checkpoint(out)
    assert manifest["stage"] == "lpo" and manifest["config"]["loss"] == "sdpo"
    new, old = load_checkpoint(out), load_checkpoint(tiny_sft)
    assert any(not torch.equal(a, b) for a, b in zip(new.model.state_dict().values(), old.model.state_dict().values()))
