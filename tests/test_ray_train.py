"""The same SFT stage on a Ray Train worker group: 2 CPU workers, DeepSpeed ZeRO-2 over gloo."""
import json

from rlhf_ray.checkpoint import load_checkpoint, verify_checkpoint
from tests.conftest import tiny_sft_config


def test_sft_on_two_ray_train_workers_with_zero2(synth_data, tmp_path):
    import ray

    from rlhf_ray.rayutil import init_ray
    from rlhf_ray.stages.launch import launch

    cfg = tiny_sft_config(num_workers=2, zero_stage=2, max_steps=3, cpus_per_worker=0.5, batch_size=8)
    out = tmp_path / "sft-ray"
    init_ray(num_cpus=2, log_to_driver=False)
    try:
        metrics = launch("sft", cfg, str(synth_data), str(out))
    finally:
        ray.shutdown()
    manifest = verify_checkpoint(out)
    assert manifest["stage"] == "sft"
    assert manifest["config"]["train"]["zero_stage"] == 2
    assert metrics["train/steps"] == 3
    assert 0.0 <= metrics["val/ndcg@10"] <= 1.0
    ck = load_checkpoint(out)
    assert ck.vocab.n_items == json.loads((synth_data / "stats.json").read_text())["prepared"]["items"]
